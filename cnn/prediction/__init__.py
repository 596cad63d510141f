"""Batch prediction of new images (a folder, a dataset, a Parquet file) into a table of
P(parasitized) and labels. Imports `cnn.evaluation`, `cnn.sources`, `cnn.data`, `cnn.io`.
"""
