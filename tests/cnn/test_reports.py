import base64
import io
import math
import re

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from cnn.evaluation.metrics import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    BinaryEvaluation,
    evaluate_predictions,
)
from cnn.images import resize_square
from cnn.labels import PARASITIZED, UNINFECTED
from cnn.models.variants import build_model
from cnn.reports.figures import (
    MOSAIC_GAP,
    confusion_heatmap,
    learning_curves,
    misclassified_gallery,
    mosaic_origin,
    roc_curve_figure,
    unit_range,
    worst_mistakes,
)
from cnn.reports.inspection import (
    FEATURE_MAP_GAP,
    GRAD_CAM_METHODS,
    GRAD_CAM_SMOOTHING_PIXELS,
    feature_maps,
    filter_grid,
    first_conv_activations,
    first_conv_layer,
    grad_cam,
    grad_cam_figure,
    grad_cam_target,
)
from cnn.reports.report import PNG_SIGNATURE, array_png, confusion_table, figure_png, html_report
from cnn.sources.synthetic import draw_cell

SIDE = 32


def _cells(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic cells at SIDE×SIDE and their labels, alternating parasitized / uninfected."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = [
        resize_square(Image.fromarray(draw_cell(rng, parasitized=label == PARASITIZED)), SIDE)
        for label in labels
    ]
    return np.stack(images), labels


@pytest.fixture(scope="module")
def simple_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("simple", (SIDE, SIDE, 3))


@pytest.fixture(scope="module")
def transfer_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("transfer", (SIDE, SIDE, 3), weights=None)


def _image_axes(figure) -> list:
    return [ax for ax in figure.axes if ax.get_visible() and ax.images]


# --- Evaluation pictures ------------------------------------------------------------------------


def test_confusion_heatmap_annotates_the_lectures_counts_in_its_layout():
    figure = confusion_heatmap(BinaryEvaluation(191, 71, 46, 192))
    ax = figure.axes[0]
    annotations = {tuple(text.get_position()): text.get_text() for text in ax.texts}
    assert annotations == {
        (0, 0): "191\n73%",
        (1, 0): "71\n27%",
        (0, 1): "46\n19%",
        (1, 1): "192\n81%",
    }
    assert [label.get_text() for label in ax.get_xticklabels()] == list(CONFUSION_COLUMNS)
    assert [label.get_text() for label in ax.get_yticklabels()] == list(CONFUSION_ROWS)
    np.testing.assert_array_equal(ax.images[0].get_array(), [[191, 71], [46, 192]])


def test_roc_treats_parasitized_as_positive_and_reports_the_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    parasitized_probability = 1 - np.clip(0.35 * labels + rng.uniform(0, 0.65, 200), 0, 1)
    expected = roc_auc_score(labels == PARASITIZED, parasitized_probability)
    assert 0.6 < expected < 0.99
    ax = roc_curve_figure(labels, parasitized_probability).axes[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["chance", f"AUC = {expected:.3f}"]
    curve = ax.lines[1]
    assert (curve.get_xdata()[0], curve.get_ydata()[0]) == (0, 0)
    assert (curve.get_xdata()[-1], curve.get_ydata()[-1]) == (1, 1)


def test_roc_of_a_perfect_model_has_auc_one():
    labels = np.array([PARASITIZED, UNINFECTED] * 5)
    ax = roc_curve_figure(labels, 0.9 - labels * 0.8).axes[0]
    assert "AUC = 1.000" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_roc_with_one_class_says_so_instead_of_crashing():
    figure = roc_curve_figure(np.full(5, UNINFECTED), np.full(5, 0.1))
    assert figure.axes[0].get_title() == "ROC undefined: only uninfected cells"
    assert figure_png(figure).startswith(PNG_SIGNATURE)


def test_learning_curves_plot_loss_and_accuracy_by_epoch_from_one():
    history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.45, 0.5], "accuracy": [0.5, 0.7, 0.8]}
    loss_ax, accuracy_ax = learning_curves(history).axes
    assert loss_ax.get_title() == "loss" and accuracy_ax.get_title() == "accuracy"
    train, validation, best = loss_ax.lines
    assert (train.get_label(), validation.get_label()) == ("train", "validation")
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(validation.get_ydata(), history["val_loss"])
    assert best.get_label() == "best epoch 2"
    assert [line.get_label() for line in accuracy_ax.lines] == ["train"]  # no val_accuracy
    with pytest.raises(ValueError, match="neither loss nor accuracy"):
        learning_curves({"auc": [0.5]})


def test_worst_mistakes_are_the_wrong_ones_most_confident_first():
    labels = np.array([0, 0, 1, 1, 0, 1, 1])
    parasitized_probability = np.array([0.8, 0.1, 0.7, 0.2, 0.4, 0.95, 0.5])
    # wrong: 1 (P(wrong class) 0.9), 2 (0.7), 4 (0.6), 5 (0.95); 6 sits on the threshold: right
    np.testing.assert_array_equal(worst_mistakes(labels, parasitized_probability), [5, 1, 2, 4])
    np.testing.assert_array_equal(worst_mistakes(labels, parasitized_probability, limit=2), [5, 1])
    evaluation = evaluate_predictions(labels, parasitized_probability)
    assert evaluation.false_negative + evaluation.false_positive == 4


def test_misclassified_gallery_shows_those_cells_titled_with_truth_and_score():
    labels = np.array([0, 0, 1, 1, 0, 1])
    parasitized_probability = np.array([0.8, 0.1, 0.7, 0.2, 0.4, 0.95])
    images = np.stack([np.full((8, 8, 3), 40 * index, np.uint8) for index in range(6)])
    figure = misclassified_gallery(images, labels, parasitized_probability)
    shown = _image_axes(figure)
    assert [int(ax.images[0].get_array()[0, 0, 0]) for ax in shown] == [200, 40, 80, 160]
    assert shown[0].get_title() == "true: uninfected\nP(parasitized) = 0.95"
    assert shown[1].get_title() == "true: parasitized\nP(parasitized) = 0.10"


def test_misclassified_gallery_is_none_when_every_cell_is_right():
    labels = np.array([PARASITIZED, UNINFECTED])
    assert misclassified_gallery(np.zeros((2, 8, 8, 3), np.uint8), labels, [0.9, 0.1]) is None


# --- First convolutional layer ------------------------------------------------------------------


def test_first_conv_layer_is_found_inside_a_nested_backbone(simple_model, transfer_model):
    assert first_conv_layer(simple_model) is simple_model.get_layer("conv1")
    backbone = transfer_model.get_layer("resnet50")
    assert first_conv_layer(transfer_model) is backbone.get_layer("conv1_conv")


def test_first_conv_layer_names_a_model_without_one():
    inputs = keras.Input((4, 4, 3))
    dense_only = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    dense_only.name = "dense_only"
    with pytest.raises(ValueError, match="'dense_only'"):
        first_conv_layer(dense_only)


def _mosaic_tiles(figure, count: int, columns: int, shape: tuple[int, int], gap: int = MOSAIC_GAP):
    """The tiles of the one mosaic image a figure shows, and the mosaic itself."""
    (ax,) = figure.axes
    canvas = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    tiles = []
    for index in range(count):
        top, left = mosaic_origin(index, columns, shape, gap)
        tiles.append(canvas[top : top + shape[0], left : left + shape[1]])
    return tiles, canvas


def test_filter_grid_has_one_image_per_filter_and_input_channel(simple_model):
    figure = filter_grid(simple_model)
    tiles, canvas = _mosaic_tiles(figure, 32 * 3, 3, (3, 3))
    assert canvas.shape == (32 * 4 - 1, 3 * 4 - 1)  # one filter a row, 1-pixel gaps
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["R", "G", "B"]
    assert sorted(int(text.get_text()) for text in figure.axes[0].texts) == list(range(32))
    kernel = keras.ops.convert_to_numpy(simple_model.get_layer("conv1").kernel)
    filter_7_green = kernel[:, :, 1, 7]
    expected = (filter_7_green - filter_7_green.min()) / np.ptp(filter_7_green)
    np.testing.assert_allclose(tiles[7 * 3 + 1], expected, atol=1e-6)
    assert all(tile.min() == 0 and tile.max() == 1 for tile in tiles)
    assert np.isnan(canvas[3, :]).all()  # the gap between filters 0 and 1


def test_filter_grid_can_put_several_filters_side_by_side(simple_model):
    figure = filter_grid(simple_model, filters_per_row=4)
    tiles, canvas = _mosaic_tiles(figure, 32 * 3, 12, (3, 3))
    assert canvas.shape == (8 * 4 - 1, 12 * 4 - 1)  # 8 rows of 4 filters × 3 channels
    kernel = keras.ops.convert_to_numpy(simple_model.get_layer("conv1").kernel)
    filter_7_blue = kernel[:, :, 2, 7]  # row 1, fourth filter of the row, third channel
    expected = (filter_7_blue - filter_7_blue.min()) / np.ptp(filter_7_blue)
    np.testing.assert_allclose(tiles[12 + 3 * 3 + 2], expected, atol=1e-6)


def _relu_conv_same(image: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """relu(conv(image / 255)) with 'same' padding, by hand in numpy (cross-correlation)."""
    pad = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64) / 255, ((pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[:2], axis=(0, 1))
    return np.maximum(np.einsum("hwcyx,yxcf->hwf", windows, kernel) + bias, 0)


def test_feature_maps_of_simple_are_32_maps_of_relu_conv_of_the_scaled_cell(simple_model):
    cell = _cells(1)[0][0]
    figure = feature_maps(simple_model, cell)
    tiles, canvas = _mosaic_tiles(figure, 32, 4, (SIDE, SIDE), FEATURE_MAP_GAP)
    assert canvas.shape == (8 * (SIDE + 2) - 2, 4 * (SIDE + 2) - 2)  # the 8×4 grid, all used
    kernel, bias = simple_model.get_layer("conv1").get_weights()
    expected = _relu_conv_same(cell, kernel, bias)
    for index, tile in enumerate(tiles):  # each map in its own range
        np.testing.assert_allclose(tile, unit_range(expected[:, :, index]), atol=1e-3)


def test_feature_maps_show_all_of_fewer_filters_four_to_a_row():
    lenet5 = build_model("lenet5", (SIDE, SIDE, 3))
    figure = feature_maps(lenet5, _cells(1)[0][0])
    side = lenet5.get_layer("conv1").output.shape[1]
    tiles, canvas = _mosaic_tiles(figure, 6, 4, (side, side), FEATURE_MAP_GAP)
    assert canvas.shape == (2 * (side + 2) - 2, 4 * (side + 2) - 2)
    assert np.isnan(tiles[-1]).sum() == 0 and np.isnan(canvas[-side:, -side:]).all()


def test_feature_maps_of_resnet_are_its_stride_2_stem_on_the_scaled_cell():
    scaled = {"per_image": False, "stain_normalize": False}  # pixels / 255 into the stem
    resnet = build_model("resnet", (SIDE, SIDE, 3), base_filters=32, **scaled)
    cell = _cells(1)[0][0]
    stem_kernel = resnet.get_layer("stem").kernel
    expected = keras.ops.conv(cell[None].astype("float32") / 255, stem_kernel, 2, "same")
    np.testing.assert_allclose(
        first_conv_activations(resnet, cell[None]), keras.ops.convert_to_numpy(expected), atol=1e-4
    )
    side = SIDE // 2
    _, canvas = _mosaic_tiles(feature_maps(resnet, cell), 32, 4, (side, side), FEATURE_MAP_GAP)
    assert canvas.shape == (8 * (side + 2) - 2, 4 * (side + 2) - 2)


def test_feature_maps_of_transfer_go_through_the_backbones_preprocessing(transfer_model):
    cells = _cells(2)[0]
    backbone = transfer_model.get_layer("resnet50")
    to_first_conv = keras.Model(backbone.input, backbone.get_layer("conv1_conv").output)
    preprocessed = keras.applications.resnet50.preprocess_input(cells.astype("float32"))
    expected = keras.ops.convert_to_numpy(to_first_conv(preprocessed))
    activations = first_conv_activations(transfer_model, cells)
    assert activations.shape == (2, SIDE // 2, SIDE // 2, 64)
    np.testing.assert_allclose(activations, expected, rtol=1e-4, atol=1e-3)
    side = SIDE // 2
    figure = feature_maps(transfer_model, cells[0])
    tiles, canvas = _mosaic_tiles(figure, 32, 4, (side, side), FEATURE_MAP_GAP)
    assert canvas.shape[0] == 8 * (side + 2) - 2  # the first 32 of ResNet50's 64
    np.testing.assert_allclose(tiles[31], unit_range(expected[0, :, :, 31]), atol=1e-2)


# --- Grad-CAM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["simple", "transfer"])
def test_grad_cam_gives_one_unit_range_heatmap_per_image_at_input_size(
    variant, simple_model, transfer_model
):
    model = simple_model if variant == "simple" else transfer_model
    heatmaps = grad_cam(model, _cells(3)[0])
    assert heatmaps.shape == (3, SIDE, SIDE)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.all(heatmaps.max(axis=(1, 2)) == pytest.approx(1.0))


@pytest.mark.parametrize(
    ("size", "target", "side"),
    [
        (64, "stem_relu", 32),  # the default model: 32×32, not its last stage's 2×2
        (32, "stem_relu", 16),
        (8, "stem_relu", 4),
    ],
)
def test_grad_cam_takes_an_activation_of_half_the_input_side_or_finer(size, target, side):
    path, head = grad_cam_target(build_model("resnet", (size, size, 3)))
    assert path[-1].name == target and path[-1].output.shape[1:3] == (side, side)
    assert head.input.shape[1:] == path[-1].output.shape[1:]


def test_grad_cam_falls_back_to_the_last_activation_when_none_is_that_fine():
    inputs = keras.Input((SIDE, SIDE, 3))
    coarse = keras.layers.Conv2D(4, 3, strides=4, activation="relu", name="coarse")(inputs)
    coarser = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="coarser")(coarse)
    outputs = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(coarser)
    )
    path, _ = grad_cam_target(keras.Model(inputs, outputs))
    assert path[-1].name == "coarser"


def _red_detector(weight: float) -> keras.Model:
    """A model whose output depends only on how red the image is: its conv has a 'red' and a
    'blue' channel, and the head reads only the red one (sign `weight`)."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    colours = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="colours")
    x = keras.layers.GlobalAveragePooling2D()(colours(x))
    head = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, head(x))
    colours.set_weights([np.array([[1, 0], [0, 0], [0, 1]], "float32").reshape(1, 1, 3, 2)])
    head.set_weights([np.array([[weight], [0]], "float32"), np.zeros(1, "float32")])
    return model


@pytest.mark.parametrize(("weight", "predicted"), [(8.0, UNINFECTED), (-8.0, PARASITIZED)])
def test_grad_cam_lights_up_the_region_the_predicted_class_depends_on(weight, predicted):
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    half = SIDE // 2
    image[:half, :half, 0] = 255  # red top-left: what the output reads
    image[half:, half:, 2] = 255  # blue bottom-right: ignored by the output
    model = _red_detector(weight)
    uninfected = float(keras.ops.convert_to_numpy(model(image[None].astype("float32")))[0, 0])
    assert (UNINFECTED if uninfected >= 0.5 else PARASITIZED) == predicted
    for method in GRAD_CAM_METHODS:
        heatmap = grad_cam(model, image[None], method=method, smoothing_pixels=0)[0]
        assert heatmap[:half, :half].min() > 0.99, method
        assert heatmap[half:, :].max() < 0.01 and heatmap[:, half:].max() < 0.01, method
    smoothed = grad_cam(model, image[None])[0]  # blurred across the edge, not beyond
    margin = math.ceil(4 * GRAD_CAM_SMOOTHING_PIXELS)  # a Gaussian's reach
    assert smoothed[: half - margin, : half - margin].min() > 0.99
    assert smoothed[half + margin :, :].max() < 0.01 and smoothed[:, half + margin :].max() < 0.01
    assert 0.01 < smoothed[half, half // 2] < 0.99


def test_hirescam_tells_apart_two_regions_of_one_channel_that_gradcam_merges():
    """Where a channel fires in two places but the output reads only one of them (through
    a spatial weighting), HiResCAM's position-by-position product lights that one alone."""
    image = np.zeros((SIDE, SIDE, 3), np.uint8)
    half = SIDE // 2
    image[:half, :half, 0] = image[half:, half:, 0] = 255  # red in two corners
    inputs = keras.Input((SIDE, SIDE, 3))
    red = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu", name="red")
    x = red(keras.layers.Rescaling(1 / 255)(inputs))
    read = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, read)
    red.set_weights([np.array([1, 0, 0], "float32").reshape(1, 1, 3, 1)])
    weights = np.zeros((SIDE, SIDE), "float32")
    weights[:half, :half] = 0.01  # the output reads the top-left corner only
    model.layers[-1].set_weights([weights.reshape(-1, 1), np.zeros(1, "float32")])
    hires = grad_cam(model, image[None], method="hirescam", smoothing_pixels=0)[0]
    classic = grad_cam(model, image[None], method="gradcam", smoothing_pixels=0)[0]
    assert hires[:half, :half].min() > 0.99 and hires[half:, half:].max() < 0.01
    assert classic[half:, half:].min() > 0.99  # its channel weight spreads to both corners


def test_grad_cam_names_an_unknown_method_and_the_known_ones(simple_model):
    with pytest.raises(ValueError, match=r"'gradcam\+\+'.*hirescam, gradcam"):
        grad_cam(simple_model, _cells(1)[0], method="gradcam++")


def test_grad_cam_names_a_backend_without_gradient_code(simple_model, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(NotImplementedError, match="torch"):
        grad_cam(simple_model, _cells(1)[0])


def test_grad_cam_figure_pairs_each_cell_with_its_overlay(simple_model):
    images, labels = _cells(3)
    figure = grad_cam_figure(simple_model, images, labels, np.array([0.9, 0.3, 0.5]))
    shown = _image_axes(figure)
    assert [len(ax.images) for ax in shown] == [1, 2] * 3
    np.testing.assert_array_equal(shown[2].images[0].get_array(), images[1])
    assert shown[2].get_title() == "true: uninfected"
    assert shown[3].get_title() == "pred: uninfected\nP(parasitized) = 0.30"
    assert shown[1].get_title() == "pred: parasitized\nP(parasitized) = 0.90"


# --- PNG and HTML -------------------------------------------------------------------------------


def test_pngs_decode_back_to_the_picture():
    pixels = np.random.default_rng(2).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(array_png(pixels)))), pixels)
    with pytest.raises(ValueError, match="uint8"):
        array_png(pixels.astype("float32"))
    figure = confusion_heatmap(BinaryEvaluation(3, 1, 0, 4))
    assert Image.open(io.BytesIO(figure_png(figure, dpi=50))).size == (210, 180)


def test_html_report_is_one_self_contained_escaped_page():
    pngs = [array_png(np.full((4, 4, 3), value, np.uint8)) for value in (0, 128, 255)]
    evaluation = BinaryEvaluation(191, 71, 46, 192)
    page = html_report(
        "<script>alert('x')</script> run",
        {"variant": "simple & co", "test accuracy": 0.76600001, "epochs": 12},
        [(f"picture {index}", png) for index, png in enumerate(pngs)],
        tables=[confusion_table(evaluation)],
    )
    sources = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(source) for source in sources] == pngs
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; run" in page
    assert "simple &amp; co" in page and ">0.766<" in page and ">12<" in page
    assert "<th>true:yes</th><td" in page and ">191<" in page
    assert not re.search(r"https?:", page)
    assert page.index("<table>") < page.index("<h2>picture 0</h2>") < page.index("picture 2")


def test_html_report_refuses_a_section_that_is_not_a_png():
    with pytest.raises(ValueError, match="'broken'"):
        html_report("run", {}, [("broken", b"GIF89a")])


GRAD_CAM_UNDER_JAX = """
import sys
import numpy as np
import keras
import cnn.models.variants  # registers the custom layers
from cnn.reports.inspection import grad_cam
model = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[3], grad_cam(model, np.load(sys.argv[2])))
print(keras.backend.backend())
"""


@pytest.mark.slow
def test_grad_cam_under_jax_draws_what_tensorflow_draws(tmp_path):
    """The JAX gradient path (`KERAS_BACKEND=jax`, as on GPU hosts without TensorFlow) on the
    same saved model and cells: the same heatmaps as TensorFlow's."""
    import os
    import subprocess
    import sys

    keras.utils.set_random_seed(0)
    model = build_model("resnet", (32, 32, 3), base_filters=4)
    model.save(tmp_path / "model.keras")
    cells = [draw_cell(np.random.default_rng(seed), parasitized=True) for seed in range(3)]
    images = np.stack([resize_square(Image.fromarray(cell), 32) for cell in cells])
    np.save(tmp_path / "cells.npy", images)
    files = [str(tmp_path / name) for name in ("model.keras", "cells.npy", "jax.npy")]
    ran = subprocess.run(
        [sys.executable, "-c", GRAD_CAM_UNDER_JAX, *files],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip().splitlines()[-1] == "jax"
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), grad_cam(model, images), atol=1e-3)
