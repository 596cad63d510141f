"""Training batches streamed from a dataset's Parquet shards, so memory stays bounded.

Rows are read a Parquet row group (256 images) at a time and kept as uint8 until they form a
batch. Shuffling is two-level and seeded per epoch: the order of row groups, then the rows
within a window of a few row groups. Only that window is ever held in memory.

Batches are made by `INPUT_THREADS` threads of Keras' own enqueuer, ahead of the step that
uses them. Without them (Keras' default for a PyDataset: a `tf.data` generator with
autotuned prefetching), epochs after the first ran at half speed on a 2-core machine
(40 s instead of 21 s an epoch of 19,800 images at 64 px, every epoch after the first).
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass

import keras
import numpy as np
import pyarrow.parquet as pq

from cnn.data.dataset import Dataset, images_from_column

SHUFFLE_WINDOW = 4
"""Row groups whose rows are mixed together when shuffling."""
INPUT_THREADS = 2


@dataclass(frozen=True)
class _RowGroup:
    shard: pq.ParquetFile
    """Opened once: on object storage each opening costs requests (its footer)."""
    index: int
    rows: np.ndarray
    """Positions, within the row group, of the rows that belong to the split."""
    labels: np.ndarray


def split_row_groups(dataset: Dataset, split: str) -> list[_RowGroup]:
    """The row groups holding rows of `split`, read from the small columns only."""
    groups = []
    for shard in dataset.shards:
        parquet = shard.parquet()
        table = parquet.read(columns=["split", "label"])
        splits = table["split"].to_numpy(zero_copy_only=False)
        labels = table["label"].to_numpy()
        offset = 0
        for index in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(index).num_rows
            in_split = np.flatnonzero(splits[offset : offset + size] == split)
            if len(in_split):
                groups.append(_RowGroup(parquet, index, in_split, labels[offset + in_split]))
            offset += size
    return groups


class SplitBatches(keras.utils.PyDataset):
    """One split of a dataset as (uint8 images, float labels) batches for Keras."""

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**{"workers": INPUT_THREADS, **kwargs})
        self.image_shape = dataset.image_shape
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._groups = split_row_groups(dataset, split)
        self._count = sum(len(group.rows) for group in self._groups)
        if not self._count:
            raise ValueError(f"dataset {dataset.name!r} has no {split!r} rows")
        self._epoch = 0
        self._plan = self._make_plan()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()  # batches are made by several threads

    def __len__(self) -> int:
        return -(-self._count // self.batch_size)

    @property
    def labels(self) -> np.ndarray:
        """Every label of the split, in the order the batches yield them this epoch."""
        return np.array([self._groups[g].labels[p] for g, p in self._plan])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        plan = self._plan[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.empty((len(plan), *self.image_shape), dtype=np.uint8)
        labels = np.empty(len(plan), dtype=np.float32)
        for group_id in np.unique(plan[:, 0]):
            chosen = plan[:, 0] == group_id
            positions = plan[chosen, 1]
            images[chosen] = self._group_images(group_id)[positions]
            labels[chosen] = self._groups[group_id].labels[positions]
        return images, labels

    def on_epoch_end(self) -> None:
        self._epoch += 1
        if self.shuffle:
            self._plan = self._make_plan()

    def _make_plan(self) -> np.ndarray:
        """(row group, position) of every row, in this epoch's order."""
        order = np.arange(len(self._groups))
        rng = np.random.default_rng([self.seed, self._epoch])
        if self.shuffle:
            rng.shuffle(order)
        plan = []
        for start in range(0, len(order), SHUFFLE_WINDOW):
            window = np.array(
                [
                    (g, p)
                    for g in order[start : start + SHUFFLE_WINDOW]
                    for p in range(len(self._groups[g].rows))
                ]
            )
            plan.append(rng.permutation(window) if self.shuffle else window)
        return np.concatenate(plan)

    def _group_images(self, group_id: int) -> np.ndarray:
        """The split's images of one row group, from a small cache of recent row groups."""
        with self._cache_lock:
            if group_id in self._cache:
                self._cache.move_to_end(group_id)
                return self._cache[group_id]
            group = self._groups[group_id]
            column = group.shard.read_row_group(group.index, columns=["image"])["image"]
            images = images_from_column(column, self.image_shape)[group.rows]
            self._cache[group_id] = images
            if len(self._cache) > SHUFFLE_WINDOW + 1:
                self._cache.popitem(last=False)
            return images
