"""Prefect tasks: thin wrappers that add retries, artifacts and logging to `tracking` and `cnn`.

A task body calls, logs and makes artifacts (about 20 lines); the work it calls lives below.
Imports `tracking`, `cnn` and prefect; never `flows` or `app`.
"""
