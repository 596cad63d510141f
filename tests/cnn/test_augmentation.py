import keras
import numpy as np
import pytest

from cnn.augmentation import augmentation_preview, build_augmenter, with_augmentation
from cnn.config import AugmentationPolicy
from cnn.models import build_model


def _cell(side: int = 32) -> np.ndarray:
    image = np.zeros((side, side, 3), dtype=np.uint8)
    image[side // 4 : side // 2, side // 4 : 3 * side // 4] = (200, 120, 160)
    return image


LECTURE = AugmentationPolicy(enabled=True)


def test_the_default_policy_is_the_lectures_and_off():
    assert build_augmenter(AugmentationPolicy()) is None
    names = [type(layer).__name__ for layer in build_augmenter(LECTURE).layers]
    assert names == [
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomShear",
        "RandomFlip",
    ]
    assert build_augmenter(LECTURE).layers[0].fill_mode == "nearest"


def test_switched_off_policy_changes_nothing():
    assert build_augmenter(AugmentationPolicy(enabled=False)) is None
    model = build_model("simple", (32, 32, 3))
    assert with_augmentation(model, None) is model


def test_policy_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        AugmentationPolicy(rotation_degrees=400)


def test_augmented_training_model_shares_weights_and_the_saved_model_has_no_random_layers(
    tmp_path,
):
    model = build_model("simple", (32, 32, 3))
    trainer = with_augmentation(model, build_augmenter(LECTURE, seed=1))
    assert {id(weight) for weight in model.weights} <= {id(weight) for weight in trainer.weights}
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert not any(type(layer).__name__.startswith("Random") for layer in reloaded.layers)


def test_preview_shows_the_original_then_ten_different_copies():
    image = _cell()
    grid = augmentation_preview(image, LECTURE, copies=10, seed=3)
    assert grid.shape == (64, 6 * 32, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:32, :32], image)
    tiles = [
        grid[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
        for row in (0, 1)
        for col in range(6)
    ]
    assert sum(not np.array_equal(tile, image) for tile in tiles[1:11]) >= 8
