"""The CNN variants, their augmentation and test-time augmentation layers, ensembles.
Never imports `cnn.sources` or `cnn.ingest` (import-linter contract).
"""
