import io
import os

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cnn.config import IngestConfig
from cnn.data.dataset import load_split
from cnn.evaluation.parasitemia import PATIENT_COLUMNS, ErrorRates
from cnn.evaluation.scoring import fit_images, parasitized_probability, predict_split, split_images
from cnn.images import decode_and_resize
from cnn.ingest.build import build_dataset
from cnn.ingest.parallel import PARALLEL_THRESHOLD
from cnn.io.writes import OutputPathError
from cnn.labels import PARASITIZED
from cnn.prediction.batch import (
    InputReport,
    PatientOptions,
    PredictionInputError,
    iter_input_batches,
    predict_to_file,
    score_batches,
    write_predictions,
)
from cnn.prediction.patients import GroupingError
from cnn.sources.records import MAX_ENCODED_BYTES
from cnn.sources.specs import SyntheticSource
from cnn.sources.synthetic import draw_cell


def constant_model(size: int, value: float) -> keras.Model:
    """Outputs P(uninfected) = `value` for any image; records nothing."""
    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.zeros_like(x[:, :1, 0, 0]) + value)(inputs)
    return keras.Model(inputs, outputs)


def mean_red_model(size: int) -> keras.Model:
    """P(uninfected) = mean red value / 255: tells which pixels the model saw."""
    inputs = keras.Input((size, size, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x[..., :1], axis=(1, 2)) / 255)(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=24, limit=60)
    built, _ = build_dataset(SyntheticSource(count=60), config, tmp_path_factory.mktemp("ds"))
    return built


def test_a_folder_is_scored_in_batches_with_grayscale_and_odd_sizes_fixed(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(draw_cell(rng, parasitized=True)).resize((50, 40)).save(tmp_path / "in/a.png")
    Image.fromarray(draw_cell(rng, parasitized=False)).convert("L").save(tmp_path / "in/b.png")
    Image.fromarray(draw_cell(rng, parasitized=False)).save(tmp_path / "in/sub/c.jpg")
    (tmp_path / "in/notes.txt").write_text("not an image")
    (tmp_path / "in/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = InputReport()
    batches = list(iter_input_batches(tmp_path / "in", 32, batch_size=2, report=report))
    assert [ids for ids, _ in batches] == [["a.png", "b.png"], ["sub/c.jpg"]]
    assert all(
        images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8 for _, images in batches
    )
    assert (report.scored, report.resized, report.converted_to_rgb) == (3, 3, 1)
    assert [skip["source_id"] for skip in report.skipped] == ["broken.png"]
    assert any("converted to RGB" in note for note in report.notes())


def test_a_large_folder_is_decoded_over_workers_in_path_order_and_full_batches(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "many"
    folder.mkdir()
    count = PARALLEL_THRESHOLD + 44
    for index in range(count):
        pixels = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    (folder / "0007.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = InputReport()
    batches = list(iter_input_batches(folder, 16, batch_size=64, report=report))
    ids = [source_id for batch_ids, _ in batches for source_id in batch_ids]
    assert ids == [f"{index:04d}.png" for index in range(count) if index != 7]
    assert [len(batch_ids) for batch_ids, _ in batches] == [64] * 4 + [count - 1 - 4 * 64]
    pixels = np.concatenate([images for _, images in batches])
    expected = decode_and_resize((folder / "0100.png").read_bytes(), 16)
    np.testing.assert_array_equal(pixels[ids.index("0100.png")], expected)
    assert [skip["source_id"] for skip in report.skipped] == ["0007.png"]
    assert (report.scored, report.resized) == (count - 1, count - 1)


def test_a_folder_is_read_as_a_folder_source_reads_it(tmp_path):
    """Size-capped reads; non-files, broken links and links out of the folder reported."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(draw_cell(np.random.default_rng(0), parasitized=True)).save(folder / "a.png")
    Image.fromarray(draw_cell(np.random.default_rng(1), parasitized=True)).save(tmp_path / "o.png")
    (folder / "sub" / "inside.png").symlink_to("../a.png")
    (folder / "outside.png").symlink_to(tmp_path / "o.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to("missing.png")
    (folder / "linked_dir.png").symlink_to("sub")
    os.mkfifo(folder / "fifo.png")
    with open(folder / "huge.png", "wb") as huge:
        os.truncate(huge.fileno(), MAX_ENCODED_BYTES + 1)
    report = InputReport()
    batches = list(iter_input_batches(folder, 16, batch_size=8, report=report))
    assert [ids for ids, _ in batches] == [["a.png", "sub/inside.png"]]
    reasons = {skip["source_id"]: skip["reason"] for skip in report.skipped}
    assert reasons == {
        "fifo.png": "not a regular file",
        "gone.png": "broken link: No such file or directory",
        "huge.png": f"file too large ({MAX_ENCODED_BYTES + 1:,} bytes)",
        "linked_dir.png": "not a regular file",
        "outside.png": "links outside the source",
        "zero.png": "links outside the source",
    }


def test_scores_are_parasitized_probabilities_with_labels(tmp_path):
    batches = iter([(["x", "y"], np.zeros((2, 8, 8, 3), np.uint8))])
    table = score_batches(constant_model(8, 0.2), batches)
    assert table.column("source_id").to_pylist() == ["x", "y"]
    assert table.column("parasitized_probability").to_pylist() == pytest.approx([0.8, 0.8])
    assert table.column("predicted_label").to_pylist() == [PARASITIZED] * 2
    assert table.column("predicted_name").to_pylist() == ["parasitized"] * 2


def test_a_dataset_directory_and_its_shards_are_read_as_raw_pixels(dataset):
    report = InputReport()
    ids = [
        i for batch_ids, _ in iter_input_batches(dataset.path, 24, 16, report) for i in batch_ids
    ]
    assert len(ids) == dataset.rows == report.scored and report.resized == 0
    shard_ids = [
        i
        for batch_ids, _ in iter_input_batches(dataset.shard_paths[0], 12, 16, report)
        for i in batch_ids
    ]
    assert shard_ids == pq.read_table(dataset.shard_paths[0])["source_id"].to_pylist()


def test_parquet_of_encoded_images_is_decoded(tmp_path):
    def png(color: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (10, 10), (color, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    path = tmp_path / "cells.parquet"
    pq.write_table(pa.table({"image": [png(255), png(0), b"junk"]}), path)
    report = InputReport()
    table = score_batches(mean_red_model(10), iter_input_batches(path, 10, 8, report))
    assert table.column("source_id").to_pylist() == ["row-0", "row-1"]
    assert table.column("parasitized_probability").to_pylist() == pytest.approx([0.0, 1.0])
    assert report.skipped == [{"source_id": "row-2", "reason": report.skipped[0]["reason"]}]


def bad_input(root, kind: str):
    if kind == "missing":
        return root / "missing"
    if kind == "empty":
        (root / "empty").mkdir()
        return root / "empty"
    if kind == "not parquet":
        (root / "x.parquet").write_text("nope")
        return root / "x.parquet"
    pq.write_table(pa.table({"pixels": [b""]}), root / "y.parquet")
    return root / "y.parquet"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no readable image"),
        ("not parquet", "not a Parquet"),
        ("no image column", "no 'image' column"),
    ],
)
def test_bad_inputs_are_named(tmp_path, kind, message):
    path = bad_input(tmp_path, kind)
    with pytest.raises(PredictionInputError, match=message) as error:
        list(iter_input_batches(path, 16, 8, InputReport()))
    assert path.name in str(error.value)


def test_predictions_are_written_atomically(tmp_path):
    table = score_batches(constant_model(8, 0.9), iter([(["a"], np.zeros((1, 8, 8, 3), np.uint8))]))
    path = write_predictions(table, tmp_path / "out" / "p.parquet", {"model_uri": "models:/m/1"})
    assert pq.read_table(path).num_rows == 1
    assert pq.read_schema(path).metadata[b"model_uri"] == b"models:/m/1"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.parquet"]
    with pytest.raises(OutputPathError, match="is a directory"):
        write_predictions(table, tmp_path / "out", {})


def test_split_scores_follow_the_split_order_and_resize_for_the_model(dataset):
    images, labels = load_split(dataset, "test")
    scores = predict_split(mean_red_model(12), dataset, "test")
    assert scores.resized_from == 24
    assert np.array_equal(scores.labels, labels)
    expected = fit_images(images, 12)[..., 0].mean(axis=(1, 2)) / 255
    assert scores.parasitized_probability == pytest.approx(1 - expected, abs=1e-5)
    picked = split_images(dataset, "test", [3, 0])
    assert np.array_equal(picked, images[[3, 0]])


def test_a_short_last_batch_is_padded_so_the_model_is_traced_once_and_scored_as_itself():
    traced_shapes = []

    def mean_red(x):
        traced_shapes.append(tuple(x.shape))  # runs when the prediction function is traced
        return keras.ops.mean(x[..., :1], axis=(1, 2)) / 255

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Lambda(mean_red)(inputs))
    traced_shapes.clear()  # building the model traced it symbolically
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)

    scores = parasitized_probability(model, [images[:4], images[4:8], images[8:]])

    assert scores == pytest.approx(1 - images[..., 0].mean(axis=(1, 2)) / 255, abs=1e-5)
    assert {shape[0] for shape in traced_shapes} == {4}


def nih_folder(root, patients: dict[str, int]):
    """A folder in the NIH layout: `count` cells of each patient, all drawn parasitized."""
    rng = np.random.default_rng(3)
    for folder in ("Parasitized", "Uninfected"):
        (root / folder).mkdir(parents=True)
    for patient, count in patients.items():
        for index in range(count):
            name = f"{patient}_IMG_{index}_cell_{index}.png"
            Image.fromarray(draw_cell(rng, parasitized=True)).save(root / "Parasitized" / name)
    return root


@pytest.mark.parametrize(
    ("grouping", "groups"),
    [("prefix", {"C1P1thinF": 3, "C2P2thinF": 2}), ("folder", {"Parasitized": 5})],
)
def test_the_patient_table_lies_beside_the_cells_with_its_columns_and_types(
    tmp_path, grouping, groups
):
    cells = nih_folder(tmp_path / "cells", {"C1P1thinF": 3, "C2P2thinF": 2})
    output = tmp_path / "out" / "scored.parquet"
    output.parent.mkdir()
    options = PatientOptions(grouping, ErrorRates(0.9, 0.95), flag_above=0.5)
    summary, table, _ = predict_to_file(
        constant_model(24, 0.2), 0.5, "m", str(cells), str(output), 4, options
    )  # P(parasitized) 0.8: every cell called parasitized
    assert summary.patients == str(tmp_path / "out" / "scored.patients.parquet")
    written = pq.read_table(summary.patients)
    assert written.schema.names == list(PATIENT_COLUMNS)
    assert written.schema.field("cells").type == pa.int64()
    assert written.schema.field("parasitemia").type == pa.float64()
    assert written.schema.field("flagged").type == pa.bool_()
    counted = zip(written["group"].to_pylist(), written["cells"].to_pylist(), strict=True)
    assert dict(counted) == groups
    assert written["predicted_parasitized"].to_pylist() == list(groups.values())
    assert written["parasitemia"].to_pylist() == pytest.approx([1.0] * len(groups))
    assert summary.flagged_groups == sorted(groups) and summary.groups == len(groups)
    assert table.equals(written.to_pandas())


def test_a_dataset_is_grouped_by_a_column_and_a_missing_column_is_named(dataset, tmp_path):
    def by(grouping: str):
        model, output = constant_model(24, 0.9), str(tmp_path / "scored.parquet")
        options = PatientOptions(grouping)
        return predict_to_file(model, 0.5, "m", str(dataset.path), output, 16, options)[1]

    table = by("column:label_name")
    assert sorted(table["group"]) == ["parasitized", "uninfected"]
    assert table["cells"].sum() == dataset.rows and not table["flagged"].any()
    with pytest.raises(GroupingError, match="no column 'ward'"):
        by("column:ward")
