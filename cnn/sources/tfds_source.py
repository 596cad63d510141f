"""`tfds.load("malaria")`: the TensorFlow Datasets copy of the NIH images (needs internet)."""

import socket
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from cnn.sources.records import CellRecord, CellSource, Payload, SourceUnavailableError

TFDS_DOWNLOAD_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"


class TfdsSource(CellSource):
    """`tfds.load("malaria")`: one `train` split of 27,558 PNGs, no file names, so no patients."""

    kind = "tfds"
    has_patient_groups = False
    random_access = False

    def __init__(self, data_dir: str | None = None, download_url: str = TFDS_DOWNLOAD_URL) -> None:
        self.data_dir = data_dir
        self.download_url = download_url

    def _builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder("malaria", data_dir=self.data_dir)

    def _prepared_builder(self):
        builder = self._builder()
        if not builder.is_prepared():
            _require_reachable(self.download_url)
            builder.download_and_prepare()
        return builder

    def _encoded_examples(self) -> Iterator[tuple[int, bytes, int]]:
        import tensorflow_datasets as tfds

        dataset = self._prepared_builder().as_dataset(
            split="train", decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
        )
        for index, example in enumerate(dataset.as_numpy_iterator()):
            yield index, example["image"], int(example["label"])

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": "malaria", "version": str(self._builder().version)}

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"tfds_malaria_{index:06d}",
                label=label,
                group=f"tfds_malaria_{index:06d}",
            )
            for index, _, label in self._encoded_examples()
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        wanted = {record.source_id: record for record in records}
        for index, encoded, _ in self._encoded_examples():
            record = wanted.pop(f"tfds_malaria_{index:06d}", None)
            if record is not None:
                yield record, encoded
            if not wanted:
                return


def _require_reachable(url: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast when the download host cannot be reached (TFDS itself retries for minutes)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds):
            return
    except OSError as exc:
        raise SourceUnavailableError(
            f"source 'tfds' cannot download the malaria dataset: {host} is unreachable ({exc}). "
            "Offline? Use the source folder:PATH with the NIH cell_images folder "
            "(PATH/Parasitized, PATH/Uninfected), or the source synthetic."
        ) from exc
