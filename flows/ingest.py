"""Ingest flow: a source becomes a Parquet dataset (a cache hit when nothing changed)."""

from prefect import flow

from cnn.config import IngestConfig
from cnn.data.dataset import DatasetRef
from flows import names
from tasks.ingest import ingest_dataset


@flow(name="ingest", flow_run_name=names.ingest_run_name, log_prints=True)
def ingest(config: IngestConfig = IngestConfig()) -> DatasetRef:
    """Decode, resize and split the source's images into a dataset under MALARIA_DATA_DIR."""
    return ingest_dataset(config)
