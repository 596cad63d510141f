"""The MLflow adapter: where runs go, a run's lifecycle, per-epoch logging, models logged and
loaded (and kept for the next task), the registry and its champion, evaluations and reports.

Imports `cnn` and mlflow; never prefect, `tasks`, `flows` or `app`.
"""
