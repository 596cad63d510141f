"""Storage by path or URI (pyarrow.fs), the one atomic write, errors that name their file,
locks by name. Imports nothing else of `cnn` but `cnn.errors`.
"""
