"""Bad input sweep (issue #7): wrong, missing, empty and hostile input, everywhere it enters.

Every CLI option and flow parameter given a wrong type or an out-of-range value, and every
source kind pointed at missing, empty, wrong-layout and hostile input, must end in one of two
ways: a clear error that names the bad thing (`malaria` exits 2 for usage errors, 1 for
failures, with one `malaria: error: ...` line on stderr), or a file skipped and reported in
the dataset manifest's `skipped` list with its reason. Never a hang, never a traceback: every
call runs under a deadline.

Unreadable files are not among the cases: the tests run as root, and root reads a file whatever
its mode (chmod 000 changes nothing), so FIFOs, devices, dangling links and loops of links
stand in for them.
"""

import contextlib
import importlib
import json
import os
import shutil
import signal
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import main
from cnn.config import IngestConfig
from cnn.data.dataset import Dataset
from cnn.data.manifest import DatasetError
from cnn.ingest.build import build_dataset
from cnn.sources.files import FolderSource
from cnn.sources.records import MAX_ENCODED_BYTES, SourceError, Unreadable
from cnn.sources.specs import open_source
from tests.conftest import NIH_PATIENTS, write_nih_folder, write_nih_zip

DEADLINE_SECONDS = 60
GIGABYTE = 1024**3


class Hung(BaseException):
    """Raised by the deadline's alarm. A BaseException, so that `malaria`'s catch-all (which
    turns any Exception into exit 1) cannot hide a hang as an ordinary failure."""


@contextlib.contextmanager
def deadline(seconds: int = DEADLINE_SECONDS) -> Iterator[None]:
    """Fail the test instead of hanging: SIGALRM interrupts even a blocking open() of a FIFO."""

    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def malaria(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the `malaria` command in-process under the deadline: exit code, stdout, stderr."""
    with deadline():
        code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, expected_code: int, *named: str) -> str:
    """The CLI's contract for bad input: the exit code, one error line naming the bad thing."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("malaria: error: "), line
    assert code == expected_code, line
    for name in named:
        assert name in line
    assert out == ""
    return line


def reasons_by_id(dataset: Dataset) -> dict[str, str]:
    """The manifest's skipped files: source id → reason."""
    return {entry["source_id"]: entry["reason"] for entry in dataset.manifest.skipped}


# ---------------------------------------------------------------------------------------------
# Assets: a real cell PNG, and PNGs too large to decode, generated once per module.


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_blank_png(path: Path, side: int) -> Path:
    """A valid grayscale PNG of side × side black pixels. Its IDAT is compressed row by row
    as it is generated, so a 20000 × 20000 image takes ~1.7 MB on disk and no more in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(1)
    row = bytes(side + 1)  # the filter byte (0: none), then the row's pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@dataclass(frozen=True)
class Assets:
    valid: bytes
    """A real cell PNG."""
    huge: Path
    """20000 × 20000 pixels: past Pillow's own decompression-bomb limit."""
    large: Path
    """7500 × 7500 pixels: under Pillow's limit, over cnn.images.MAX_SOURCE_PIXELS."""
    outside: Path
    """A real cell PNG outside every source folder."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    base = tmp_path_factory.mktemp("assets")
    valid = next((write_nih_folder(base / "one", per_class=1) / "Parasitized").iterdir())
    outside = base / "outside.png"
    shutil.copy(valid, outside)
    return Assets(
        valid=valid.read_bytes(),
        huge=write_blank_png(base / "huge.png", 20_000),
        large=write_blank_png(base / "large.png", 7_500),
        outside=outside,
    )


def test_blank_pngs_are_valid_so_the_large_ones_are_refused_for_their_size(tmp_path):
    from cnn.images import decode_and_resize

    pixels = decode_and_resize(write_blank_png(tmp_path / "small.png", 64).read_bytes(), 16)
    assert pixels.shape == (16, 16, 3) and pixels.max() == 0


def sparse_file(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk space."""
    with open(path, "wb") as file:
        os.truncate(file.fileno(), size)


# ---------------------------------------------------------------------------------------------
# CLI options: wrong types and out-of-range values, refused before any flow starts.

_PREDICT = ["predict", "--input", ".", "--output", "p.parquet"]
"""`predict` with an input that exists; the option under test follows."""

OPTION_CASES = [
    # argv, exit code, what the error line must name
    # -- wrong types (argparse)
    (["ingest", "--source", "synthetic", "--image-size", "1.5"], 2, "--image-size"),
    (["ingest", "--source", "synthetic", "--limit", "ten"], 2, "--limit"),
    (["ingest", "--source", "synthetic", "--seed", "0x2a"], 2, "--seed"),
    (["pipeline", "--epochs", "1e3"], 2, "--epochs"),
    (["pipeline", "--batch-size", "many"], 2, "--batch-size"),
    (["pipeline", "--gpu-batch-size", "2.5"], 2, "--gpu-batch-size"),
    (["pipeline", "--learning-rate", "fast"], 2, "--learning-rate"),
    (["pipeline", "--patience", "1.5"], 2, "--patience"),
    (["pipeline", "--reduce-lr-patience", "x"], 2, "--reduce-lr-patience"),
    (["pipeline", "--min-margin", "some"], 2, "--min-margin"),
    (["pipeline", "--mixed-precision", "yes"], 2, "yes"),
    (["pipeline", "--no-such-option"], 2, "--no-such-option"),
    ([*_PREDICT, "--batch-size", "x"], 2, "--batch-size"),
    (["stack", "status", "--prefect-port", "http"], 2, "--prefect-port"),
    (["stack", "status", "--mlflow-port", "5e3"], 2, "--mlflow-port"),
    (["variants", "--image-size", "big"], 2, "--image-size"),
    (["lecture"], 2, "lecture"),
    ([], 2, "command"),
    (["train"], 2, "--dataset"),
    (["evaluate", "--dataset", "d"], 2, "--model"),
    (["predict", "--input", "."], 2, "--output"),
    # -- out of range (the configs' bounds)
    (["ingest", "--source", "synthetic", "--image-size", "15"], 2, "--image-size"),
    (["ingest", "--source", "synthetic", "--image-size", "513"], 2, "--image-size"),
    (["ingest", "--source", "synthetic", "--limit", "19"], 2, "--limit"),
    (["ingest", "--source", "synthetic", "--limit", "-5"], 2, "--limit"),
    (["ingest", "--source", "synthetic", "--seed", "-1"], 2, "--seed"),
    (["ingest", "--source", "synthetic", "--split", ""], 2, "--split"),
    (["ingest", "--source", ""], 2, "--source"),
    (["ingest", "--source", "zip:"], 2, "'zip:'"),
    (["ingest", "--source", "tfds:mnist"], 2, "'tfds:mnist'"),
    (["pipeline", "--epochs", "1001"], 2, "--epochs"),
    (["pipeline", "--epochs", "-3"], 2, "--epochs"),
    (["pipeline", "--batch-size", "0"], 2, "--batch-size"),
    (["pipeline", "--batch-size", "4097"], 2, "--batch-size"),
    (["pipeline", "--gpu-batch-size", "0"], 2, "--gpu-batch-size"),
    (["pipeline", "--gpu-batch-size", "8193"], 2, "--gpu-batch-size"),
    (["pipeline", "--learning-rate", "0"], 2, "--learning-rate"),
    (["pipeline", "--learning-rate", "-0.1"], 2, "--learning-rate"),
    (["pipeline", "--learning-rate", "1.5"], 2, "--learning-rate"),
    (["pipeline", "--learning-rate", "nan"], 2, "--learning-rate"),
    (["pipeline", "--learning-rate", "inf"], 2, "--learning-rate"),
    (["pipeline", "--patience", "-1"], 2, "--patience"),
    (["pipeline", "--reduce-lr-patience", "-1"], 2, "--reduce-lr-patience"),
    (["pipeline", "--augment", "sideways"], 2, "--augment"),
    (["pipeline", "--target-sensitivity", "1.5"], 2, "--target-sensitivity"),
    (["pipeline", "--schedule", "linear"], 2, "--schedule"),
    (["pipeline", "--ensemble", "3", "--variants", "simple,lenet5"], 2, "--ensemble"),
    (["pipeline", "--ensemble", "-1"], 2, "--ensemble"),
    (["pipeline", "--min-margin", "1.5"], 2, "--min-margin"),
    (["pipeline", "--min-margin", "nan"], 2, "--min-margin"),
    (["pipeline", "--experiment", ""], 2, "--experiment"),
    (["pipeline", "--registered-model", ""], 2, "--registered-model"),
    (["pipeline", "--variants", ","], 2, "--variants"),
    (["pipeline", "--variants", ""], 2, "--variants"),  # was: silently the default variants
    (["pipeline", "--transfer-weights", ""], 2, "--transfer-weights"),  # was: failed in training
    (["pipeline", "--transfer-weights", "/no/such.h5"], 2, "/no/such.h5"),
    (["train", "--dataset", "/no/such/dataset", "--epochs", "0"], 2, "--epochs"),
    (["ingest", "--source", "synthetic", "--limit", str(10**14)], 2, "limit"),  # was: a hang
    ([*_PREDICT, "--batch-size", "0"], 2, "--batch-size"),
    ([*_PREDICT, "--batch-size", "-3"], 2, "--batch-size"),
    ([*_PREDICT, "--batch-size", "4097"], 2, "--batch-size"),  # was: the flow's multi-line error
    (["stack", "status", "--prefect-port", "-1"], 2, "--prefect-port"),
    (["stack", "status", "--mlflow-port", "65536"], 2, "--mlflow-port"),
    (["variants", "--image-size", "513"], 2, "--image-size"),
]


@pytest.mark.parametrize(
    ("argv", "code", "named"), OPTION_CASES, ids=[" ".join(case[0]) for case in OPTION_CASES]
)
def test_bad_option_values_fail_with_one_line_naming_them(
    argv, code, named, capsys, data_dir, mlflow_uri
):
    assert_one_line_error(*malaria(argv, capsys), code, named)
    assert not data_dir.exists()  # refused before any flow started


# ---------------------------------------------------------------------------------------------
# CLI options that take paths, pointed at missing, empty, wrong-layout and hostile paths.


@pytest.fixture(scope="module")
def hostile_paths(tmp_path_factory) -> dict[str, str]:
    """Paths that are not what an option expects, by name."""
    base = tmp_path_factory.mktemp("paths")
    mini = write_nih_folder(base / "mini", per_class=2)
    valid_zip = write_nih_zip(base / "valid.zip", mini).read_bytes()
    paths = {
        "file": base / "notes.txt",
        "fifo": base / "x.png",
        "sparse": base / "huge.zip",
        "empty": base / "empty.zip",
        "truncated_zip": base / "truncated.zip",
        "corrupt_zip": base / "corrupt.zip",
        "loop": base / "loop",
        "dangling": base / "dangling",
        "empty_dir": base / "empty-dir",
        "flat": base / "flat",
    }
    paths["file"].write_text("not what was asked for\n")
    os.mkfifo(paths["fifo"])
    sparse_file(paths["sparse"], GIGABYTE)
    paths["empty"].touch()
    paths["truncated_zip"].write_bytes(valid_zip[: len(valid_zip) // 2])
    # The end record is intact (so it looks like a zip) but the central directory is not.
    paths["corrupt_zip"].write_bytes(valid_zip.replace(b"PK\x01\x02", b"PK\x01\x00", 1))
    paths["loop"].symlink_to(paths["loop"].name)
    paths["dangling"].symlink_to(base / "gone")
    paths["empty_dir"].mkdir()
    (paths["flat"] / "Uninfected").mkdir(parents=True)
    (paths["flat"] / "Parasitized").write_text("a file where a class folder belongs")
    return {name: str(path) for name, path in paths.items()}


PATH_CASES = [
    # argv ({name} is a hostile path), exit code, what the error line must name ({name} too)
    (["ingest", "--source", "folder:{file}"], 2, ["--source", "{file}", "not a directory"]),
    (["ingest", "--source", "folder:{fifo}"], 2, ["--source", "{fifo}", "not a directory"]),
    (["ingest", "--source", "folder:{loop}"], 2, ["--source", "{loop}", "cannot be resolved"]),
    (["ingest", "--source", "folder:{dangling}"], 2, ["--source", "{dangling}", "not exist"]),
    (["ingest", "--source", "folder:{empty_dir}"], 2, ["{empty_dir}", "Parasitized, Uninfected"]),
    (["ingest", "--source", "folder:{flat}"], 2, ["{flat}", "class folder(s) Parasitized "]),
    (["ingest", "--source", "zip:{fifo}"], 2, ["--source", "{fifo}", "not a zip archive"]),
    (["ingest", "--source", "zip:{sparse}"], 2, ["--source", "{sparse}", "not a zip archive"]),
    (["ingest", "--source", "zip:{empty}"], 2, ["--source", "{empty}", "not a zip archive"]),
    (["ingest", "--source", "zip:{truncated_zip}"], 2, ["{truncated_zip}", "not a zip archive"]),
    # was: accepted, then "BadZipFile: Bad magic number for central directory" inside the flow
    (["ingest", "--source", "zip:{corrupt_zip}"], 2, ["{corrupt_zip}", "corrupt zip archive"]),
    (["ingest", "--source", "zip:{loop}"], 2, ["--source", "{loop}", "cannot be resolved"]),
    (["ingest", "--source", "zip:{dangling}"], 2, ["--source", "{dangling}", "not exist"]),
    # was: "does not exist"
    (["train", "--dataset", "{file}"], 2, ["--dataset", "{file}", "not a directory"]),
    (["train", "--dataset", "{fifo}"], 2, ["--dataset", "{fifo}", "not a directory"]),
    (["train", "--dataset", "{loop}"], 2, ["--dataset", "{loop}"]),
    (["train", "--dataset", "{empty_dir}"], 2, ["--dataset", "{empty_dir}", "no _manifest.json"]),
    (["evaluate", "--model", "models:/m/1", "--dataset", "{dangling}"], 2, ["--dataset"]),
    (["predict", "--input", "{dangling}", "--output", "p.parquet"], 2, ["--input", "{dangling}"]),
    (["predict", "--input", "{loop}", "--output", "p.parquet"], 2, ["--input", "{loop}"]),
    # was: found only after the model had scored every image
    (["predict", "--input", "{empty_dir}", "--output", "{empty_dir}"], 2, ["--output"]),
    (["pipeline", "--transfer-weights", "{fifo}"], 2, ["--transfer-weights", "{fifo}"]),
    (["pipeline", "--transfer-weights", "{dangling}"], 2, ["--transfer-weights", "{dangling}"]),
    (["stack", "status", "--state-dir", "{file}"], 2, ["{file}/stack.json"]),
    (["stack", "down", "--state-dir", "{fifo}"], 2, ["{fifo}/stack.json"]),
]


@pytest.mark.parametrize(
    ("argv", "code", "named"), PATH_CASES, ids=[" ".join(case[0]) for case in PATH_CASES]
)
def test_bad_paths_fail_with_one_line_naming_them(
    argv, code, named, hostile_paths, capsys, data_dir, mlflow_uri
):
    argv = [part.format(**hostile_paths) for part in argv]
    named = [part.format(**hostile_paths) for part in named]
    assert_one_line_error(*malaria(argv, capsys), code, *named)
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALARIA_IO_RETRIES", "three"),
        ("MALARIA_IO_RETRIES", "99"),
        ("MALARIA_IO_RETRY_DELAY_SECONDS", "-1"),
        ("MALARIA_DATA_DIR", "nosuchfs://bucket/prefix"),
        ("MALARIA_DASK_ADDRESS", "scheduler"),
    ],
)
def test_a_bad_setting_is_named_before_any_work(variable, value, capsys, data_dir, monkeypatch):
    monkeypatch.setenv(variable, value)
    argv = ["ingest", "--source", "synthetic", "--limit", "20"]
    assert_one_line_error(*malaria(argv, capsys), 2, f"{variable}={value!r}")
    assert not data_dir.exists()


def test_a_failing_stage_still_reports_on_one_line(capsys, data_dir, monkeypatch):
    """A flow's error may span lines (Prefect lists each bad parameter on its own)."""
    import app.commands

    def failing_flow(*args, **kwargs):
        raise ValueError("Flow run received invalid parameters:\n - config.limit: too large")

    monkeypatch.setattr(app.commands, "run_flow", failing_flow)
    line = assert_one_line_error(*malaria(["ingest", "--source", "synthetic"], capsys), 1)
    assert line.endswith(
        "ValueError: Flow run received invalid parameters: - config.limit: too large"
    )


def test_variants_too_small_for_an_image_size_are_listed_as_unavailable(capsys):
    """16 px is a valid image size, but a pretrained backbone needs 32 (was: exit 1, no list)."""
    code, out, err = malaria(["variants", "--image-size", "16", "--json"], capsys)
    assert code == 0, err
    listed = {
        entry["name"]: entry for entry in json.loads(out.strip().splitlines()[-1])["variants"]
    }
    assert listed["transfer"]["parameters"] is None
    assert "32" in listed["transfer"]["unavailable"]
    assert listed["simple"]["parameters"] > 0
    code, out, _ = malaria(["variants", "--image-size", "16"], capsys)
    assert code == 0
    assert any(line.startswith("transfer") and "n/a" in line for line in out.splitlines())


# ---------------------------------------------------------------------------------------------
# Flow parameters, validated as Prefect validates them before a flow run starts.

FLOW_PARAMETER_CASES = [
    # flow, parameters, the parameter the error must name
    ("ingest", {"config": "synthetic"}, "config"),
    ("ingest", {"config": {"image_size": 15}}, "config.image_size"),
    ("ingest", {"config": {"image_size": "big"}}, "config.image_size"),
    ("ingest", {"config": {"limit": 19}}, "config.limit"),
    ("ingest", {"config": {"limit": 1.5}}, "config.limit"),
    ("ingest", {"config": {"split": "diagonal"}}, "config.split"),
    ("ingest", {"config": {"seed": -1}}, "config.seed"),
    ("ingest", {"config": {"source": "folder:"}}, "config.source"),
    ("ingest", {"config": {"source": 7}}, "config.source"),
    ("ingest", {"config": {"test_fraction": 0.5}}, "config.test_fraction"),
    ("ingest", {"config": {"validation_fraction": 0}}, "config.validation_fraction"),
    ("ingest", {"config": {"colour": "red"}}, "config.colour"),
    ("pipeline", {"variants": "simple"}, "variants"),
    ("pipeline", {"variants": []}, "variants"),
    ("pipeline", {"variants": ["simple", "vgg99"]}, "variants.1"),
    ("pipeline", {"data": {"image_size": 513}}, "data.image_size"),
    ("pipeline", {"training": {"epochs": 0}}, "training.epochs"),
    ("pipeline", {"training": {"epochs": "many"}}, "training.epochs"),
    ("pipeline", {"training": {"batch_size": 4097}}, "training.batch_size"),
    ("pipeline", {"training": {"learning_rate": float("nan")}}, "training.learning_rate"),
    ("pipeline", {"training": {"augment": "sideways"}}, "training.augment"),
    ("pipeline", {"training": {"target_sensitivity": 1.0}}, "training.target_sensitivity"),
    ("pipeline", {"training": {"schedule": "linear"}}, "training.schedule"),
    ("pipeline", {"training": {"weight_decay": -0.1}}, "training.weight_decay"),
    ("pipeline", {"work_pool": 3}, "work_pool"),
    ("train", {}, "dataset"),
    ("train", {"dataset": 5}, "dataset"),
    ("train", {"dataset": "d", "training": {"fine_tune_layers": -1}}, "training.fine_tune_layers"),
    (
        "train",
        {"dataset": "d", "training": {"in_memory_limit_mb": -1}},
        "training.in_memory_limit_mb",
    ),
    (
        "train",
        {"dataset": "d", "training": {"mixed_precision": "maybe"}},
        "training.mixed_precision",
    ),
    ("train", {"dataset": "d", "promotion": {"min_margin": 2}}, "promotion.min_margin"),
    ("retrain", {"promotion": {"metric": "loss"}}, "promotion.metric"),
    ("retrain", {"tracking": {"experiment": ""}}, "tracking.experiment"),
    ("retrain", {"tracking": {"registered_model": None}}, "tracking.registered_model"),
    ("retrain", {"training": {"patience": -1}}, "training.patience"),
    ("evaluate", {"model_uri": "", "dataset": "d"}, "model_uri"),
    ("predict", {"input": "i", "output": "o", "batch_size": 0}, "batch_size"),
    ("predict", {"input": "i", "output": "o", "batch_size": 4097}, "batch_size"),
]


def _flow(name: str):
    return getattr(importlib.import_module(f"flows.{name}"), name)


@pytest.mark.parametrize(
    ("flow_name", "parameters", "named"),
    FLOW_PARAMETER_CASES,
    ids=[f"{name}-{parameters}" for name, parameters, _ in FLOW_PARAMETER_CASES],
)
def test_bad_flow_parameters_are_refused_by_name(flow_name, parameters, named):
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError) as raised:
        _flow(flow_name).validate_parameters(parameters)
    assert f" {named}:" in str(raised.value)


def test_unknown_flow_parameters_are_named():
    from prefect.exceptions import SignatureMismatchError

    with pytest.raises(SignatureMismatchError, match="'epochs'"):
        _flow("pipeline").validate_parameters({"epochs": 3})


@pytest.mark.parametrize(
    ("flow_name", "parameters", "named"),
    [
        ("train", {"dataset": "d", "training": {"seed": 2**32}}, "training.seed"),
        ("ingest", {"config": {"seed": 2**32}}, "config.seed"),
    ],
    ids=["train", "ingest"],
)
def test_a_seed_keras_refuses_is_refused_before_the_run(flow_name, parameters, named):
    """Was: accepted, then keras.utils.set_random_seed refused it in training, after the ingest."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError) as raised:
        _flow(flow_name).validate_parameters(parameters)
    assert f" {named}:" in str(raised.value)


def test_the_largest_seed_is_accepted_by_the_split_and_keras():
    import keras

    from cnn.config import MAX_SEED, TrainConfig
    from cnn.ingest.splits import assign_splits

    labels = [0, 1] * 10
    splits = assign_splits(labels, labels, "random", 0.2, 0.1, IngestConfig(seed=MAX_SEED).seed)
    assert set(splits) == {"train", "validation", "test"}
    keras.utils.set_random_seed(TrainConfig(seed=MAX_SEED).seed)


# ---------------------------------------------------------------------------------------------
# Folder sources: hostile entries among good images are skipped and reported, one by one.

Maker = Callable[[Path, Assets], object]


def _link_to_a_fifo(path: Path, assets: Assets) -> None:
    os.mkfifo(path.with_name("fifo-target"))  # no image suffix: not listed itself
    path.symlink_to("fifo-target")


FOLDER_CASES: list[tuple[str, Maker, str]] = [
    # file name in Parasitized/, how it is made, the reason the manifest must give
    ("sparse_1gb.png", lambda p, a: sparse_file(p, GIGABYTE), "file too large (1,073,741,824"),
    ("blank_20000x20000.png", lambda p, a: shutil.copy(a.huge, p), "400000000 pixels"),
    ("blank_7500x7500.png", lambda p, a: shutil.copy(a.large, p), "image too large (7500×7500"),
    ("truncated.png", lambda p, a: p.write_bytes(a.valid[: len(a.valid) // 2]), "truncated"),
    ("text.png", lambda p, a: p.write_text("a text file, not a PNG\n"), "not an image"),
    ("empty.png", lambda p, a: p.touch(), "empty file"),
    ("x.png", lambda p, a: os.mkfifo(p), "not a regular file"),  # was: silently left out
    ("y.png", lambda p, a: p.mkdir(), "not a regular file"),  # was: silently left out
    ("fifo_link.png", _link_to_a_fifo, "not a regular file"),  # was: silently left out
    ("dangling.png", lambda p, a: p.symlink_to("gone.png"), "broken link"),  # was: left out
    ("loop.png", lambda p, a: p.symlink_to("loop.png"), "broken link"),  # was: a crash
    ("dev_zero.png", lambda p, a: p.symlink_to("/dev/zero"), "links outside the source"),
    ("up_and_out.png", lambda p, a: p.symlink_to(f"../../{a.outside.name}"), "links outside"),
]


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory, assets) -> Path:
    """Ten good cells per class, and every hostile entry among the parasitized ones."""
    base = tmp_path_factory.mktemp("hostile-folder")
    shutil.copy(assets.outside, base / assets.outside.name)
    root = write_nih_folder(base / "cells", per_class=10)
    for name, make, _ in FOLDER_CASES:
        make(root / "Parasitized" / name, assets)
    return root


@pytest.fixture(scope="module")
def hostile_folder_dataset(hostile_folder, tmp_path_factory) -> Dataset:
    config = IngestConfig(source=f"folder:{hostile_folder}", image_size=16, split="random")
    datasets = tmp_path_factory.mktemp("hostile-folder-datasets")
    with deadline():
        dataset, _ = build_dataset(open_source(config.source), config, datasets, workers=1)
    return dataset


def test_malaria_ingest_reports_the_skipped_entries(
    hostile_folder, capsys, data_dir, mlflow_uri, prefect_harness
):
    """The same folder through the command: exit 0, and every skip in its JSON."""
    argv = ["ingest", "--source", f"folder:{hostile_folder}", "--image-size", "16"]
    code, out, err = malaria([*argv, "--split", "random", "--json"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rows"] == 20
    assert {entry["source_id"] for entry in result["skipped"]} == {
        f"Parasitized/{name}" for name, _, _ in FOLDER_CASES
    }


@pytest.mark.parametrize(
    ("replace", "reason"),
    [
        (os.mkfifo, "not a regular file"),  # was: a hang, open() waiting for a writer
        (Path.mkdir, "not a regular file"),
        (Path.touch, "empty file"),
        (lambda path: None, "No such file"),
    ],
    ids=["fifo", "directory", "emptied", "removed"],
)
def test_a_file_replaced_after_listing_is_reported_when_read(tmp_path, replace, reason):
    from cnn.images import UnreadableImageError, decode_image

    root = write_nih_folder(tmp_path / "cells", per_class=2)
    source = FolderSource(root)
    record = source.list_records()[0]
    (root / record.source_id).unlink()
    replace(root / record.source_id)
    with deadline():
        ((_, payload),) = source.iter_payloads([record])
    if isinstance(payload, bytes):
        with pytest.raises(UnreadableImageError, match=reason):
            decode_image(payload)
    else:
        assert isinstance(payload, Unreadable) and reason in payload.reason


PREDICT_FOLDER_CASES = [case for case in FOLDER_CASES if case[0] != "y.png"]
"""The hostile entries that `predict` skips: a directory (y.png) it searches, as any folder."""


@pytest.fixture(scope="module")
def hostile_folder_predict_report(hostile_folder):
    """The hostile folder as `predict` reads it: the ids it would score, and its report."""
    from cnn.prediction.batch import InputReport, iter_input_batches

    report = InputReport()
    with deadline():
        batches = iter_input_batches(hostile_folder, 16, batch_size=8, report=report)
        scored = [source_id for ids, _ in batches for source_id in ids]
    return scored, report


@pytest.mark.parametrize(
    ("name", "reason"),
    [(name, reason) for name, _, reason in PREDICT_FOLDER_CASES],
    ids=[name for name, _, _ in PREDICT_FOLDER_CASES],
)
def test_predict_skips_and_reports_hostile_folder_entries(
    hostile_folder_predict_report, name, reason
):
    """Was: a 1 GB file read whole, links out of the folder followed (/dev/zero, a file
    outside), FIFOs and broken links left out with no word."""
    _, report = hostile_folder_predict_report
    skipped = {entry["source_id"]: entry["reason"] for entry in report.skipped}
    assert reason in skipped[f"Parasitized/{name}"]


def test_predict_scores_every_good_image_of_a_hostile_folder(hostile_folder_predict_report):
    scored, report = hostile_folder_predict_report
    assert len(scored) == report.scored == 20
    assert len(report.skipped) == len(PREDICT_FOLDER_CASES)


# ---------------------------------------------------------------------------------------------
# Zip sources: hostile members among good ones. (`../`, absolute and backslash member paths
# are in tests/cnn/test_zip_source.py.)

ZIP_MEMBER_PREFIX = "cell_images/Parasitized/"


def _member(name: str, file_type: int) -> zipfile.ZipInfo:
    """A member recorded with a Unix file type (as `zip --symlinks` records links)."""
    info = zipfile.ZipInfo(ZIP_MEMBER_PREFIX + name)
    info.create_system = 3  # Unix: the mode's file type is meaningful
    info.external_attr = (file_type | 0o644) << 16
    return info


def _zeros_member(archive: zipfile.ZipFile, name: str, size: int) -> None:
    """A deflated member of `size` zero bytes, written in pieces (a few hundred KB stored)."""
    info = zipfile.ZipInfo(ZIP_MEMBER_PREFIX + name)
    info.compress_type = zipfile.ZIP_DEFLATED
    piece = bytes(1024 * 1024)
    with archive.open(info, "w", force_zip64=True) as member:
        for start in range(0, size, len(piece)):
            member.write(piece[: min(len(piece), size - start)])


ZipWriter = Callable[[zipfile.ZipFile, str, Assets], object]

ZIP_CASES: list[tuple[str, ZipWriter, str]] = [
    # member name under cell_images/Parasitized/, how it is written, the reason reported
    ("blank_20000x20000.png", lambda z, n, a: z.write(a.huge, ZIP_MEMBER_PREFIX + n), "pixels"),
    ("blank_7500x7500.png", lambda z, n, a: z.write(a.large, ZIP_MEMBER_PREFIX + n), "too large"),
    ("over_limit.png", lambda z, n, a: _zeros_member(z, n, MAX_ENCODED_BYTES + 1), "too large"),
    (
        "truncated.png",
        lambda z, n, a: z.writestr(ZIP_MEMBER_PREFIX + n, a.valid[: len(a.valid) // 2]),
        "truncated",
    ),
    ("text.png", lambda z, n, a: z.writestr(ZIP_MEMBER_PREFIX + n, "plain text"), "not an image"),
    ("empty.png", lambda z, n, a: z.writestr(ZIP_MEMBER_PREFIX + n, b""), "empty file"),
    # was: "cannot identify image file": a link's content is its target's path
    (
        "link.png",
        lambda z, n, a: z.writestr(_member(n, stat.S_IFLNK), "../../../../etc/passwd"),
        "not a regular file",
    ),
    (
        "x.png",
        lambda z, n, a: z.writestr(_member(n, stat.S_IFIFO), b""),
        "not a regular file",
    ),
    # was: silently left out
    ("y.png", lambda z, n, a: z.mkdir(ZIP_MEMBER_PREFIX + n), "not a regular file"),
    (
        "bad_crc.png",
        lambda z, n, a: z.writestr(ZIP_MEMBER_PREFIX + n, a.valid[:-1] + b"!"),
        "Bad CRC-32",
    ),
]


@pytest.fixture(scope="module")
def hostile_zip_dataset(tmp_path_factory, assets) -> Dataset:
    base = tmp_path_factory.mktemp("hostile-zip")
    archive = write_nih_zip(base / "cells.zip", write_nih_folder(base / "cells", per_class=10))
    with zipfile.ZipFile(archive, "a") as handle:
        for name, write, _ in ZIP_CASES:
            write(handle, name, assets)
    _break_the_crc_of(archive, ZIP_MEMBER_PREFIX + "bad_crc.png", assets.valid[:-1] + b"!")
    config = IngestConfig(source=f"zip:{archive}", image_size=16, split="random")
    datasets = tmp_path_factory.mktemp("hostile-zip-datasets")
    with deadline():
        dataset, _ = build_dataset(open_source(config.source), config, datasets, workers=1)
    return dataset


def _break_the_crc_of(archive: Path, name: str, written: bytes) -> None:
    """Put the valid PNG's last byte back into a stored member, after its CRC was computed."""
    with zipfile.ZipFile(archive) as handle:
        info = handle.getinfo(name)
    assert info.compress_type == zipfile.ZIP_STORED
    data = bytearray(archive.read_bytes())
    start = data.index(written, info.header_offset)
    data[start + len(written) - 1] = ord("x")
    archive.write_bytes(bytes(data))


HOSTILE_CASES = {"folder": FOLDER_CASES, "zip": ZIP_CASES}
"""Each source kind's hostile entries: (name, how it is made, the reason it is skipped)."""


@pytest.mark.parametrize(
    ("kind", "name", "reason"),
    [(kind, name, reason) for kind, cases in HOSTILE_CASES.items() for name, _, reason in cases],
    ids=[f"{kind}-{name}" for kind, cases in HOSTILE_CASES.items() for name, _, _ in cases],
)
def test_hostile_entries_are_skipped_and_reported(request, kind, name, reason):
    dataset = request.getfixturevalue(f"hostile_{kind}_dataset")
    assert reason in reasons_by_id(dataset)[f"Parasitized/{name}"]


@pytest.mark.parametrize("kind", HOSTILE_CASES)
def test_hostile_entries_cost_no_good_image(request, kind):
    dataset = request.getfixturevalue(f"hostile_{kind}_dataset")
    assert dataset.rows == 20
    assert len(dataset.manifest.skipped) == len(HOSTILE_CASES[kind])


# ---------------------------------------------------------------------------------------------
# Sources with nothing usable in them: one error naming the source, before or while listing.


def _folder_of_only(kind: str) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        for class_folder in ("Parasitized", "Uninfected"):
            (tmp / class_folder).mkdir()
            if kind == "non-files":
                os.mkfifo(tmp / class_folder / "x.png")
                (tmp / class_folder / "y.png").mkdir()
            else:
                for index, patient in enumerate(NIH_PATIENTS):
                    (tmp / class_folder / f"{patient}_IMG_{index}.png").write_text("text")
        return f"folder:{tmp}"

    return make


def _zip_of(members: dict[str, bytes]) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        with zipfile.ZipFile(tmp / "cells.zip", "w") as handle:
            for name, data in members.items():
                handle.writestr(name, data)
        return f"zip:{tmp / 'cells.zip'}"

    return make


EMPTY_SOURCE_CASES = [
    # how the source is made, the error, what it must say
    (_folder_of_only("non-files"), SourceError, "Parasitized' holds no images"),
    (_folder_of_only("text"), DatasetError, "no image of source 'folder' could be decoded"),
    (_zip_of({}), SourceError, "has no Parasitized/ images"),
    (_zip_of({"../Parasitized/a.png": b"x", "/Uninfected/b.png": b"x"}), SourceError, "has no"),
    (_zip_of({"cell_images/Parasitized/a.txt": b"x"}), SourceError, "has no Parasitized/ images"),
]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    EMPTY_SOURCE_CASES,
    ids=["folder-of-non-files", "folder-of-text", "empty-zip", "unsafe-zip", "no-images-zip"],
)
def test_sources_with_nothing_usable_fail_by_name(tmp_path, make, error, message):
    spec = make(tmp_path)
    config = IngestConfig(source=spec, image_size=16)
    with deadline(), pytest.raises(error, match=message):
        build_dataset(open_source(spec), config, tmp_path / "datasets", workers=1)


def test_a_synthetic_limit_too_large_to_list_is_refused_at_once():
    """Was: a hang, listing 10**14 records."""
    with deadline(5), pytest.raises(SourceError, match="at most 1,000,000 cells"):
        open_source("synthetic", limit=10**14)


# ---------------------------------------------------------------------------------------------
# Too few images for a random split, and datasets whose manifest is not what it should be.


def test_too_few_images_for_a_random_split_are_named(tmp_path):
    """Was: scikit-learn's 'The test_size = 1 should be greater or equal to the number of
    classes', with nothing saying that there were too few images."""
    from cnn.ingest.splits import SplitError

    root = write_nih_folder(tmp_path / "cells", per_class=5)
    config = IngestConfig(source=f"folder:{root}", image_size=16, split="random")
    with deadline(), pytest.raises(SplitError, match=r"too few images .*: 10; .* at least 14"):
        build_dataset(open_source(config.source), config, tmp_path / "datasets", workers=1)


def test_malaria_ingest_names_too_few_images_on_one_line(
    tmp_path, capsys, data_dir, mlflow_uri, prefect_harness
):
    root = write_nih_folder(tmp_path / "cells", per_class=5)
    argv = ["ingest", "--source", f"folder:{root}", "--image-size", "16", "--split", "random"]
    assert_one_line_error(*malaria(argv, capsys), 2, "too few images", "14")


VALID_MANIFEST = {
    "format_version": 1,
    "name": "synthetic-16px-0123456789abcdef",
    "fingerprint": "0123456789abcdef",
    "source": {"kind": "synthetic"},
    "split_strategy": "random",
    "split_note": "",
    "image_shape": [16, 16, 3],
    "label_names": ["parasitized", "uninfected"],
    "rows": 0,
    "shards": [],
    "counts": {},
    "skipped": [],
}
"""The fields a reader relies on, well formed (with no shards: the cases break one thing)."""

MANIFEST_CASES = [
    # manifest.json's content, what the error must say (besides the manifest's path)
    (b"[]", "a JSON array, not an object"),  # was: AttributeError
    (b'{"format_version": 1}', "no 'name'"),  # was: KeyError
    (json.dumps({**VALID_MANIFEST, "shards": None}).encode(), "'shards' is null"),  # TypeError
    (
        json.dumps({k: v for k, v in VALID_MANIFEST.items() if k != "shards"}).encode(),
        "no 'shards'",  # was: KeyError
    ),
    (json.dumps({**VALID_MANIFEST, "rows": "many"}).encode(), "'rows' is \"many\""),
    (json.dumps({**VALID_MANIFEST, "image_shape": [16, 16]}).encode(), "'image_shape'"),
    (
        json.dumps({**VALID_MANIFEST, "shards": [{"file": "/etc/passwd", "rows": 1}]}).encode(),
        "shard 0",  # was: read from outside the dataset
    ),
    (json.dumps({**VALID_MANIFEST, "shards": ["part-0.parquet"]}).encode(), "shard 0"),
    (b"\xff\xfe{}", "is corrupt: 'utf-8' codec"),  # was: an error that named no file
]


@pytest.mark.parametrize(
    ("content", "message"),
    MANIFEST_CASES,
    ids=[
        "list",
        "only-format",
        "null-shards",
        "no-shards",
        "text-rows",
        "2d-shape",
        "absolute-shard",
        "shard-not-object",
        "not-utf8",
    ],
)
def test_a_malformed_manifest_is_named(tmp_path, content, message, capsys, data_dir, mlflow_uri):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_bytes(content)
    code, out, err = malaria(["train", "--dataset", str(tmp_path / "dataset")], capsys)
    manifest = str(tmp_path / "dataset" / "manifest.json")
    assert_one_line_error(code, out, err, 2, "--dataset", manifest, message)


def test_a_well_formed_manifest_passes_the_structure_check(tmp_path):
    from cnn.data.dataset import open_dataset

    (tmp_path / "manifest.json").write_text(json.dumps(VALID_MANIFEST))
    assert open_dataset(tmp_path).rows == 0
