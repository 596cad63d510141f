"""The malaria CNN library: sources, datasets, models, training, metrics.

Plain Python on numpy, pyarrow and Keras; never imports prefect or mlflow.
"""
