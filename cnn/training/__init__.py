"""Training one model: the loop and recipe, per-epoch checkpoints and resume, several
devices. Imports `cnn.models`, `cnn.data`, `cnn.evaluation`, `cnn.io`; never `cnn.sources`
or `cnn.ingest` (import-linter contract).
"""
