import keras
import numpy as np
import pytest

from cnn.models import VARIANTS, build_model


def test_simple_has_the_lectures_56257_parameters():
    assert build_model("simple", (100, 100, 3)).count_params() == 56_257


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("side", [32, 100])
def test_every_variant_maps_images_to_one_probability(variant, side):
    model = build_model(variant, (side, side, 3))
    images = np.random.default_rng(0).integers(0, 256, size=(4, side, side, 3)).astype("uint8")
    probabilities = np.asarray(model(images.astype("float32")))
    assert probabilities.shape == (4, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_models_scale_pixels_themselves():
    model = build_model("simple", (32, 32, 3))
    assert isinstance(model.get_layer("rescale"), keras.layers.Rescaling)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'vgg99'"):
        build_model("vgg99", (100, 100, 3))
