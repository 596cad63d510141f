"""Prefect flows: which tasks run, in what order, on which work pool; the deployments' entry
points. Imports `tasks`, `tracking` and `cnn`; never `app` (the `malaria` command)."""
