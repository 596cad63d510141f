import keras
import numpy as np
import pytest

from cnn.config import VARIANT_NAMES
from cnn.models.variants import (
    VARIANTS,
    CellStainNormalization,
    WeightsUnavailableError,
    build_model,
    build_transfer,
    count_parameters,
    unfreeze_top_layers,
)


def test_the_variant_names_checked_without_keras_are_the_variants_built():
    assert tuple(VARIANTS) == VARIANT_NAMES


def test_simple_has_the_lectures_56257_parameters():
    assert build_model("simple", (100, 100, 3)).count_params() == 56_257


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("side", [32, 100])
def test_every_variant_maps_images_to_one_probability(variant, side):
    model = build_model(variant, (side, side, 3), **VARIANTS[variant].offline_options)
    images = np.random.default_rng(0).integers(0, 256, size=(4, side, side, 3)).astype("float32")
    probabilities = np.asarray(model(images))
    assert probabilities.shape == (4, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert count_parameters(variant, (side, side, 3)) == model.count_params()


def test_models_scale_pixels_themselves():
    model = build_model("simple", (32, 32, 3))
    assert isinstance(model.get_layer("rescale"), keras.layers.Rescaling)


def test_alexnet_uses_its_11x11_stride_4_stem_on_large_inputs():
    assert build_model("alexnet", (227, 227, 3)).get_layer("conv1").kernel_size == (11, 11)
    assert build_model("alexnet", (100, 100, 3)).get_layer("conv1").strides == (2, 2)


def test_resnet_depth_is_a_parameter():
    shallow = build_model("resnet", (64, 64, 3), depth=18)
    deep = build_model("resnet", (64, 64, 3), depth=34)
    assert deep.count_params() > shallow.count_params()
    assert any(isinstance(layer, keras.layers.Add) for layer in shallow.layers)
    with pytest.raises(ValueError, match="depth"):
        build_model("resnet", (64, 64, 3), depth=19)


def test_transfer_freezes_the_backbone_and_trains_a_new_head():
    model = build_transfer((32, 32, 3), weights=None)
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == 2048 + 1  # the sigmoid head on ResNet50's 2048 pooled features
    assert unfreeze_top_layers(model, 10) == 10
    assert len(model.trainable_weights) == 2 + 10 * 2  # head + 10 convs' kernels and biases
    backbone = model.get_layer("resnet50")
    assert not any(layer.trainable for layer in backbone.layers if "_bn" in layer.name)


def test_transfer_loads_a_local_weights_file(tmp_path):
    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "resnet50_notop.weights.h5"
    backbone.save_weights(path)
    model = build_transfer((32, 32, 3), weights=str(path))
    loaded = model.get_layer("resnet50").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, backbone.get_weights(), strict=True))


def test_transfer_without_reachable_imagenet_weights_says_what_to_do(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_transfer((32, 32, 3), weights=str(tmp_path / "missing.h5"))


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'vgg99'"):
        build_model("vgg99", (100, 100, 3))


def test_per_image_standardization_removes_a_slides_tint_and_brightness(tmp_path):
    from cnn.models.variants import PerImageStandardization

    rng = np.random.default_rng(0)
    cell = rng.integers(40, 200, size=(1, 16, 16, 3)).astype("float32")
    tinted = np.clip(cell * np.array([1.2, 0.9, 1.1]) + 10, 0, 255)
    layer = PerImageStandardization()
    standardized = np.asarray(layer(np.concatenate([cell, tinted])))
    np.testing.assert_allclose(standardized.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(axis=(1, 2)), 1, atol=1e-3)
    np.testing.assert_allclose(standardized[0], standardized[1], atol=1e-4)
    model = build_model("resnet", (32, 32, 3), base_filters=8, stain_normalize=False)
    model.save(tmp_path / "model.keras")
    assert isinstance(
        keras.models.load_model(tmp_path / "model.keras").layers[1], PerImageStandardization
    )


def test_stain_normalization_standardizes_the_cell_and_divides_out_a_darker_stain(tmp_path):
    rng = np.random.default_rng(0)
    cells = np.zeros((3, 32, 32, 3), dtype="float32")
    cells[:, 4:28, 4:28] = rng.uniform(120, 230, (3, 24, 24, 3))  # a cell on a black border
    normalized = np.asarray(CellStainNormalization()(cells))
    inside = normalized[:, 4:28, 4:28].reshape(3, -1, 3)
    np.testing.assert_allclose(inside.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(inside.std(axis=1), 1.0, atol=1e-2)
    assert not normalized[:, :4].any()  # the border stays 0
    darker = np.asarray(CellStainNormalization()(cells * np.float32(0.6)))
    assert np.median(np.abs(darker - normalized)) < 0.02  # stain strength divides out
    model = build_model("resnet", (32, 32, 3))  # stain normalization is the default
    assert isinstance(model.layers[1], CellStainNormalization)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(cells, verbose=0), model.predict(cells, verbose=0))
