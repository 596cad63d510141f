import numpy as np

from cnn.sources.synthetic import draw_cell


def _purple_share(image: np.ndarray) -> float:
    red, green, blue = (image[..., channel].astype(int) for channel in range(3))
    return float(np.mean((blue - green > 60) & (red < 150) & (red > 40)))


def test_cells_are_deterministic_uint8_rgb_of_varied_size():
    sizes = set()
    for seed in range(20):
        first = draw_cell(np.random.default_rng(seed), parasitized=True)
        again = draw_cell(np.random.default_rng(seed), parasitized=True)
        np.testing.assert_array_equal(first, again)
        assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
        assert first.shape[0] == first.shape[1] and 60 <= first.shape[0] <= 140
        sizes.add(first.shape[0])
    assert len(sizes) > 5


def test_parasitized_cells_carry_purple_blobs_that_uninfected_lack():
    rng = np.random.default_rng(1)
    parasitized = [_purple_share(draw_cell(rng, parasitized=True)) for _ in range(50)]
    uninfected = [_purple_share(draw_cell(rng, parasitized=False)) for _ in range(50)]
    assert np.median(parasitized) > 0.001
    assert np.median(uninfected) < np.median(parasitized) / 5


def test_background_is_dark_and_cell_is_pink():
    image = draw_cell(np.random.default_rng(2), parasitized=False)
    assert image[0, 0].mean() < 40
    centre = image[image.shape[0] // 2, image.shape[1] // 2].astype(int)
    assert centre[0] > centre[1]  # more red than green
