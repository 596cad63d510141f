"""The application: the `malaria` command (`app.cli`) and the local service stack
(`app.stack`: Prefect and MLflow servers and a worker). The top layer: it may import every
layer below (`flows`, `tasks`, `tracking`, `cnn`); none of them imports it.
"""
