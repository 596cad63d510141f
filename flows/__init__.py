"""Prefect flows: which tasks run, in what order. The console script lives in `flows.cli`."""
