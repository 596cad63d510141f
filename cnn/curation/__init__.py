"""Label curation: out-of-fold scores over patient-grouped folds, the likely label errors that
cleanlab finds in them, and a dataset without those cells. Imports `cnn.data`, `cnn.io`,
`cnn.training`, `cnn.evaluation`; never `cnn.sources` or `cnn.ingest`.
"""
