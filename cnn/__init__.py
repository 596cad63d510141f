"""The malaria CNN library: sources, datasets, models, training, metrics, pictures.

The bottom layer. Plain Python on numpy, pyarrow, pydantic and Keras: it imports no other
package of this project, and never prefect or mlflow, so it is testable and reusable alone.
"""
