"""Building datasets from a source: the fingerprint and commit, splits by patient, shards
written over worker processes (or any engine). Imports `cnn.sources`, `cnn.data`, `cnn.io`.
"""
