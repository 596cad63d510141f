"""Prefect tasks: thin wrappers over `cnn` that add retries, artifacts and MLflow logging."""
