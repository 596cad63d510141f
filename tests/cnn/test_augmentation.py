import keras
import numpy as np
import pytest

from cnn.config import AUGMENTATIONS, AugmentationPolicy, TrainConfig
from cnn.evaluation.calibration import with_temperature
from cnn.models.augmentation import (
    DIHEDRAL_VIEWS,
    RandomHED,
    augmentation_preview,
    build_augmenter,
    dihedral_views,
    inner_network,
    model_temperature,
    named_augmenter,
    serving_model,
    with_augmentation,
    with_test_time_augmentation,
)
from cnn.models.variants import build_model


def _cell(side: int = 32) -> np.ndarray:
    image = np.zeros((side, side, 3), dtype=np.uint8)
    image[side // 4 : side // 2, side // 4 : 3 * side // 4] = (200, 120, 160)
    return image


def _cells(count: int = 16, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3)).astype("float32")


def _the_8_views(image: np.ndarray) -> list[np.ndarray]:
    """numpy's own dihedral group of a square image, as the reference."""
    return [np.rot90(base, turns) for base in (image, image[:, ::-1]) for turns in range(4)]


def test_the_lecture_policy_keeps_its_values_and_order():
    lecture = AUGMENTATIONS["lecture"]
    assert (lecture.rotation_degrees, lecture.zoom, lecture.shear) == (30.0, 0.15, 0.15)
    assert (lecture.width_shift, lecture.height_shift, lecture.fill_mode) == (0.2, 0.2, "nearest")
    names = [type(layer).__name__ for layer in named_augmenter("lecture").layers]
    assert names == [
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomShear",
        "RandomFlip",
    ]


def test_none_is_no_augmentation_and_every_other_policy_has_layers():
    assert named_augmenter("none") is None
    model = build_model("simple", (32, 32, 3))
    assert with_augmentation(model, None) is model
    for name in set(AUGMENTATIONS) - {"none"}:
        assert named_augmenter(name) is not None, name


def test_an_unknown_policy_name_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="sideways")


def test_policy_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        AugmentationPolicy(rotation_degrees=400)


@pytest.mark.parametrize("name", [name for name in AUGMENTATIONS if name != "none"])
def test_each_policy_changes_images_in_training_only(name):
    images = _cells()
    augmenter = named_augmenter(name, seed=3)
    trained = np.asarray(augmenter(images, training=True))
    assert trained.shape == images.shape
    assert not np.allclose(trained, images)
    assert trained.min() >= 0.0 and trained.max() <= 255.0
    np.testing.assert_array_equal(np.asarray(augmenter(images, training=False)), images)


@pytest.mark.parametrize("name", [name for name in AUGMENTATIONS if name != "none"])
def test_each_policy_is_never_in_the_saved_model(name, tmp_path):
    model = build_model("simple", (32, 32, 3))
    trainer = with_augmentation(model, named_augmenter(name, seed=1))
    assert {id(weight) for weight in model.weights} <= {id(weight) for weight in trainer.weights}
    served = with_test_time_augmentation(model)
    path = tmp_path / "model.keras"
    served.save(path)
    reloaded = keras.models.load_model(path)
    inner = inner_network(reloaded)
    layer_types = {type(layer).__name__ for layer in [*reloaded.layers, *inner.layers]}
    assert not any(name.startswith("Random") for name in layer_types), layer_types


def test_dihedral_augmentation_gives_only_the_8_views_and_all_of_them():
    image = _cell().astype("float32")
    image[2, 5] = (255, 0, 0)  # break every symmetry of the cell
    augmenter = named_augmenter("dihedral", seed=0)
    seen = np.asarray(augmenter(np.repeat(image[None], 200, axis=0), training=True))
    views = _the_8_views(image)
    matches = [next(k for k, view in enumerate(views) if np.array_equal(s, view)) for s in seen]
    assert set(matches) == set(range(DIHEDRAL_VIEWS))


def test_colour_jitter_gives_each_image_its_own_tint_and_keeps_pixels_in_range():
    image = _cell().astype("float32")
    colour_only = AUGMENTATIONS["dihedral+stain"].model_copy(update={"dihedral": False})
    augmenter = build_augmenter(colour_only, seed=0)
    augmented = np.asarray(augmenter(np.repeat(image[None], 8, axis=0), training=True))
    assert augmented.min() >= 0.0 and augmented.max() <= 255.0
    tints = {tuple(np.round(cell[8:16, 8:24].mean(axis=(0, 1)))) for cell in augmented}
    assert len(tints) == 8


def test_dihedral_views_are_numpys_8_views():
    images = _cells(count=3)
    views = np.asarray(dihedral_views(images)).reshape(DIHEDRAL_VIEWS, 3, 32, 32, 3)
    for index, image in enumerate(images):
        expected = {view.tobytes() for view in _the_8_views(image)}
        assert {view[index].tobytes() for view in views} == expected


def test_test_time_augmentation_is_the_mean_of_the_8_views_and_survives_saving(tmp_path):
    model = build_model("simple", (32, 32, 3))
    images = _cells(count=5).astype("uint8")
    per_view = [
        np.asarray(
            model.predict(np.stack([views[k] for views in map(_the_8_views, images)]), verbose=0)
        )
        for k in range(DIHEDRAL_VIEWS)
    ]
    served = with_test_time_augmentation(model)
    expected = np.mean(per_view, axis=0)
    np.testing.assert_allclose(served.predict(images, verbose=0), expected, atol=1e-6)
    path = tmp_path / "served.keras"
    served.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    assert inner_network(reloaded).count_params() == model.count_params()


def test_preview_shows_the_original_then_ten_different_copies():
    image = _cell()
    grid = augmentation_preview(image, AUGMENTATIONS["lecture"], copies=10, seed=3)
    assert grid.shape == (64, 6 * 32, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:32, :32], image)
    tiles = [
        grid[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
        for row in (0, 1)
        for col in range(6)
    ]
    assert sum(not np.array_equal(tile, image) for tile in tiles[1:11]) >= 8


def test_a_policy_of_defaults_builds_nothing():
    assert build_augmenter(AugmentationPolicy()) is None


def test_a_calibrated_model_tempers_its_output_and_keeps_it_through_saving(tmp_path):
    model = build_model("simple", (32, 32, 3))
    images = _cells(count=6).astype("uint8")
    raw = np.asarray(with_test_time_augmentation(model).predict(images, verbose=0))
    served = serving_model(model, test_time_augmentation=True, temperature=2.5)
    expected = with_temperature(raw, 2.5)
    np.testing.assert_allclose(served.predict(images, verbose=0), expected, atol=1e-5)
    path = tmp_path / "calibrated.keras"
    served.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-5)
    assert model_temperature(reloaded) == 2.5
    assert inner_network(reloaded).count_params() == model.count_params()
    assert model_temperature(with_test_time_augmentation(model)) == 1.0
    assert serving_model(model, test_time_augmentation=False) is model


def test_hed_jitter_changes_each_cells_stain_and_nothing_at_zero_spread():
    image = _cell().astype("float32")
    batch = np.repeat(image[None], 8, axis=0)
    jittered = np.asarray(RandomHED(0.1, seed=0)(batch, training=True))
    assert jittered.min() >= 0.0 and jittered.max() <= 255.0
    tints = {tuple(np.round(cell[8:16, 8:24].mean(axis=(0, 1)))) for cell in jittered}
    assert len(tints) == 8
    unchanged = np.asarray(RandomHED(1e-9, seed=0)(batch, training=True))
    np.testing.assert_allclose(unchanged, batch, atol=0.01)  # the stain round trip is exact
    np.testing.assert_array_equal(np.asarray(RandomHED(0.1)(batch, training=False)), batch)
