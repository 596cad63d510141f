"""A model's scores on a dataset split: the one way every stage scores images, and the one
place that reads the model's output (P(uninfected), the TFDS label order) and turns it into
P(parasitized)."""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from PIL import Image

from cnn.config import PREDICT_BATCH
from cnn.data.batches import SplitBatches
from cnn.data.dataset import Dataset
from cnn.evaluation.metrics import (
    BinaryEvaluation,
    evaluate_predictions,
)
from cnn.images import resize_square


@dataclass(frozen=True)
class SplitScores:
    """A model's outputs on one dataset split."""

    labels: np.ndarray
    parasitized_probability: np.ndarray
    resized_from: int | None
    """The dataset's image size when the images had to be resized for the model."""


def model_image_size(model: keras.Model) -> int:
    """The side of the square images the model takes."""
    _, height, width, channels = model.input_shape
    if height != width or channels != 3:
        raise ValueError(f"model {model.name!r} takes {model.input_shape[1:]}, not square RGB")
    return int(height)


def fit_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 images resized to `image_size` (returned as they are when they fit already)."""
    if images.shape[1:3] == (image_size, image_size):
        return images
    return np.stack([resize_square(Image.fromarray(image), image_size) for image in images])


def parasitized_probability(model: keras.Model, batches: Iterable[np.ndarray]) -> np.ndarray:
    """P(parasitized) for every image of `batches` (uint8 arrays), in order: the one way
    every stage scores images, and the one place that reads the model's output, which is
    P(uninfected) (label 1 in the TFDS order of `cnn.labels`). A batch shorter than the first
    is padded to its size, so that the model's prediction function, traced for the first, is
    not traced again."""
    outputs, full_size = [], None
    for images in batches:
        count = len(images)
        full_size = full_size or count
        if count < full_size:
            padding = np.zeros((full_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, padding])
        uninfected = np.asarray(model.predict_on_batch(images), dtype=np.float32).reshape(-1)
        outputs.append(1.0 - uninfected[:count])
    return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)


def in_batches(images: np.ndarray, size: int = PREDICT_BATCH) -> Iterator[np.ndarray]:
    """`images` in consecutive slices of at most `size`."""
    for start in range(0, len(images), size):
        yield images[start : start + size]


def predict_split(model: keras.Model, dataset: Dataset, split: str = "test") -> SplitScores:
    """P(parasitized) for every image of a dataset split, in the split's order,
    with images resized when the model takes another size than the dataset holds."""
    batches = SplitBatches(dataset, split, PREDICT_BATCH)
    image_size = model_image_size(model)
    images = (fit_images(batches[index][0], image_size) for index in range(len(batches)))
    return SplitScores(
        labels=batches.labels,
        parasitized_probability=parasitized_probability(model, images),
        resized_from=None if dataset.image_shape[0] == image_size else dataset.image_shape[0],
    )


def evaluate_split(
    model: keras.Model, dataset: Dataset, threshold: float, split: str = "test"
) -> BinaryEvaluation:
    """The model's scores on a dataset split at `threshold`."""
    scores = predict_split(model, dataset, split)
    return evaluate_predictions(scores.labels, scores.parasitized_probability, threshold)


def split_images(dataset: Dataset, split: str, positions: Sequence[int]) -> np.ndarray:
    """The images at `positions` of a split, in the order `predict_split` scores them."""
    batches = SplitBatches(dataset, split, PREDICT_BATCH)
    wanted = np.asarray(positions, dtype=int)
    images = np.empty((len(wanted), *dataset.image_shape), dtype=np.uint8)
    for index in np.unique(wanted // PREDICT_BATCH):
        batch, _ = batches[int(index)]
        chosen = wanted // PREDICT_BATCH == index
        images[chosen] = batch[wanted[chosen] % PREDICT_BATCH]
    return images
