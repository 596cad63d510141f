"""Reading finished datasets: the manifest, the dataset and its splits, training batches.
Reading only: imports `cnn.io` and the shared modules, never `cnn.sources` or `cnn.ingest`.
"""
