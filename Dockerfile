# The worker image: what a pod of the `gpu-kubernetes` work pool runs (docs/kubernetes.md).
# It installs the project from requirements.lock exactly as the README does; GPU=1 swaps
# TensorFlow's CPU build for the same version with its CUDA libraries:
#   docker build -t malaria-cnn:cpu .
#   docker build --build-arg GPU=1 -t malaria-cnn:gpu .
# Nothing is read from a host path: data and models live on object storage
# (MALARIA_DATA_DIR=s3://…), credentials come from a Kubernetes secret at run time.
FROM python:3.11-slim

ARG GPU=0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALARIA_PROJECT_DIR=/opt/malaria-cnn

WORKDIR /opt/malaria-cnn
COPY pyproject.toml requirements.lock README.md prefect.yaml ./
COPY app app
COPY cnn cnn
COPY flows flows
COPY tasks tasks
COPY tracking tracking

RUN extras="kubernetes" && if [ "$GPU" = "1" ]; then extras="kubernetes,gpu"; fi \
    && pip install -c requirements.lock -e ".[${extras}]" \
    && if [ "$GPU" = "1" ]; then \
        tensorflow_version="$(grep -i '^tensorflow[-_]cpu==' requirements.lock | cut -d= -f3)" \
        && pip uninstall -y tensorflow-cpu \
        && pip install -c requirements.lock "tensorflow[and-cuda]==${tensorflow_version}"; \
    fi

RUN useradd --create-home --uid 1000 malaria
USER malaria
