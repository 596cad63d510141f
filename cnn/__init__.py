"""The malaria CNN library, in rooms: `sources` → `ingest` → `data` → `models` → `training`
→ `evaluation` → `prediction` and `reports`, with `io` (storage, atomic writes, locks) beneath
them and `config`, `settings`, `labels`, `images`, `errors` and `progress` shared by all;
`serving` is the registered models' pyfunc loader.

The bottom layer. Plain Python on numpy, pyarrow, pydantic and Keras: it imports no other
package of this project, and never prefect or mlflow, so it is testable and reusable alone.
Training, models, data and evaluation never reach sources or ingest (pyproject's import-linter
contracts).
"""
