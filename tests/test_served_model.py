"""A model registered by an earlier version of the project still loads and scores the same:
`tests/data/model-saved-before-rooms` was saved as the pipeline logs a model (`cnn.serving` as
its pyfunc loader, the custom layers of `resnet` and test-time augmentation) before `cnn/` was
split into sub-packages."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
SAVED = DATA / "model-saved-before-rooms"


def test_a_model_saved_before_the_move_loads_and_scores_as_it_did():
    images = np.load(DATA / "model-saved-before-rooms.images.npy")
    expected = json.loads((DATA / "model-saved-before-rooms.expected.json").read_text())
    table = mlflow.pyfunc.load_model(str(SAVED)).predict(images)
    assert table["parasitized_probability"].tolist() == pytest.approx(
        expected["parasitized_probability"], abs=1e-6
    )
    assert table["predicted_label"].tolist() == expected["predicted_label"]
    assert table["predicted_name"].tolist() == expected["predicted_name"]
