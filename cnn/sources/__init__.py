"""Where cell images come from: the record and payload contract, folder / zip / object-store
folder / TFDS / synthetic sources, and choosing one from its spec. Imports `cnn.io` and
the shared modules (`cnn.config`, `cnn.errors`, `cnn.labels`, `cnn.images`).
"""
