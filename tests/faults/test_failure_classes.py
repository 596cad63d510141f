"""The classes of failure a hostile-but-realistic user still met (issue #25), each through the
real `malaria` command: an output path that is not a file, a tracking server that does not
answer, pixels Pillow's conversion clips, an encrypted zip, a Parquet column of the wrong type,
a manifest whose counts are not its shards', a variant named twice, a SQLite store in a folder
that does not exist. Each case failed before its fix: overwrote, hung, scored wrong pixels,
or ended with an internal error or a traceback.
"""

import json
import os
import shutil
import socket
import stat
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cnn.data.dataset import open_dataset
from tests.conftest import write_nih_folder, write_nih_zip
from tests.faults.harness import run_malaria, tiny_pipeline
from tests.faults.test_bad_input import assert_one_line_error, deadline, malaria

pytestmark = pytest.mark.slow

SERVER_DEADLINE_SECONDS = 30
"""What a command may take to say that its tracking server does not answer."""
PATIENT = "C33P1thinF"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness) -> dict:
    """A tiny pipeline run as a real process: its dataset, its champion, and the environment
    (the session's Prefect server, a data folder and MLflow store of its own) that finds them."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("trained")
    env = {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MALARIA_DATA_DIR": str(root / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    result = run_malaria(tiny_pipeline(epochs=1), env).result
    return {"env": env, "dataset": result["dataset"]["path"], "root": root}


@pytest.fixture
def trained_env(trained, monkeypatch) -> dict:
    """The trained run's environment, in this process too (for in-process commands)."""
    for name, value in trained["env"].items():
        monkeypatch.setenv(name, value)
    return trained["env"]


def one_line_error(finished, exit_code: int, *named: str) -> str:
    """A command run as a process: its last line the error, naming `named`, no traceback."""
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    last = finished.stderr.strip().splitlines()[-1]
    assert last.startswith("malaria: error: "), finished.stderr[-3000:]
    assert finished.returncode == exit_code, last
    for name in named:
        assert name in last
    return last


def cells_folder(root: Path, images: dict[str, Image.Image]) -> Path:
    root.mkdir(parents=True)
    for name, image in images.items():
        image.save(root / name)
    return root


# -- 1. An output path that exists and is not a file is refused, never replaced --------------


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_predict_refuses_a_device_node_as_output_and_leaves_it(trained_env, tmp_path, capsys):
    """Was: exit 0, and the node replaced by a Parquet file (as root, /dev/null would be)."""
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    cells = cells_folder(tmp_path / "cells", {"a.png": Image.new("RGB", (24, 24), "purple")})
    argv = ["predict", "--input", str(cells), "--output", str(node)]
    assert_one_line_error(*malaria(argv, capsys), 2, "--output", str(node), "character device")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


# -- 2. A tracking server that does not answer fails the command within a deadline -----------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_name_an_unanswering_tracking_server_in_time(
    trained, command, tmp_path, capsys, monkeypatch
):
    """Was: 240 s of silence in MLflow's retries while `--model` was checked."""
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MALARIA_DATA_DIR", trained["env"]["MALARIA_DATA_DIR"])
    cells = cells_folder(tmp_path / "cells", {"a.png": Image.new("RGB", (24, 24), "purple")})
    argv = {
        "predict": ["predict", "--input", str(cells), "--output", str(tmp_path / "p.parquet")],
        "evaluate": ["evaluate", "--model", "models:/malaria-cnn/1"],
    }[command]
    if command == "evaluate":
        argv += ["--dataset", trained["dataset"]]
    with deadline(SERVER_DEADLINE_SECONDS):
        code, out, err = malaria(argv, capsys)
    line = assert_one_line_error(code, out, err, 1, uri, "unreachable")
    assert "MLflow tracking server" in line


def test_stack_alerts_names_a_prefect_server_that_does_not_answer(capsys, monkeypatch):
    """Was: "ConnectError: [Errno 111] Connection refused", naming no server."""
    url = f"http://127.0.0.1:{closed_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    with deadline(SERVER_DEADLINE_SECONDS):
        code, out, err = malaria(["stack", "alerts"], capsys)
    assert_one_line_error(code, out, err, 2, url, "does not answer")


# -- 3. Pixels: 16-bit grayscale keeps its values; pixels with no 8-bit scale are skipped -----

GRAY_16 = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
"""16-bit grayscale from 0 to 65535: every 8-bit value once, so clipping shows at once."""


def test_a_16_bit_grayscale_png_is_ingested_with_its_own_pixels(
    tmp_path, capsys, data_dir, mlflow_uri, prefect_harness
):
    """Was: Pillow's convert("RGB") clipped I;16 at 255, so 99% of these pixels became white."""
    root = write_nih_folder(tmp_path / "cells", per_class=10)
    gray = f"Parasitized/{PATIENT}_IMG_20150619_114756a_cell_99.png"
    Image.fromarray(GRAY_16).save(root / gray)
    assert Image.open(root / gray).mode == "I;16"
    floats = f"Uninfected/{PATIENT}_IMG_20150619_114756a_cell_98.tiff"
    Image.fromarray(GRAY_16.astype(np.float32) / 65535).save(root / floats)
    code, out, err = malaria(
        ["ingest", "--source", f"folder:{root}", "--image-size", "16", "--json"], capsys
    )
    assert code == 0, err
    dataset = open_dataset(json.loads(out.strip().splitlines()[-1])["path"])
    rows = pq.read_table(dataset.shard_paths, columns=["image", "source_id"]).to_pylist()
    (pixels,) = [row["image"] for row in rows if row["source_id"] == gray]
    expected = np.repeat((GRAY_16 >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(np.frombuffer(pixels, np.uint8).reshape(16, 16, 3), expected)
    skipped = {entry["source_id"]: entry["reason"] for entry in dataset.manifest.skipped}
    assert "32-bit floating-point pixels have no known 8-bit scale" in skipped[floats]


def test_predict_scores_a_16_bit_grayscale_png_as_its_8_bit_twin(trained, tmp_path):
    """Scored through the real command: the same cell saved with 16 and with 8 bits."""
    gray_16 = np.kron(GRAY_16, np.ones((2, 2), np.uint16))[:24, :24]
    cells = cells_folder(
        tmp_path / "cells",
        {
            "sixteen.png": Image.fromarray(gray_16),
            "eight.png": Image.fromarray((gray_16 >> 8).astype(np.uint8)),
        },
    )
    output = tmp_path / "scores.parquet"
    arguments = ["predict", "--input", str(cells), "--output", str(output), "--json"]
    finished = run_malaria(arguments, trained["env"])
    assert finished.result["converted_to_rgb"] == 2
    scores = pq.read_table(output).to_pydict()
    probability = dict(zip(scores["source_id"], scores["parasitized_probability"], strict=True))
    assert probability["sixteen.png"] == pytest.approx(probability["eight.png"], abs=1e-6)


# -- 4. Messages that name the thing: an encrypted zip, a Parquet column of the wrong type ----


def encrypt_flags(archive: Path) -> None:
    """Mark every member encrypted, as `zip -e` does (flag bit 0 in the local and central
    headers): what zipfile and every reader see of an encrypted archive."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as opened:
        infos = opened.infolist()
    for info in infos:
        data[info.header_offset + 6] |= 0x1
    central = data.rfind(b"PK\x05\x06")
    offset = int.from_bytes(data[central + 16 : central + 20], "little")
    for _ in infos:
        data[offset + 8] |= 0x1
        # the lengths of its name, extra field and comment
        lengths = (data[offset + at : offset + at + 2] for at in (28, 30, 32))
        offset += 46 + sum(int.from_bytes(length, "little") for length in lengths)
    archive.write_bytes(bytes(data))


def test_an_encrypted_zip_is_named_as_one(tmp_path, capsys, data_dir, mlflow_uri):
    """Was: "no image of source 'zip' could be decoded", exit 1, with Prefect's traceback."""
    archive = write_nih_zip(tmp_path / "cells.zip", write_nih_folder(tmp_path / "c", 4))
    encrypt_flags(archive)
    with zipfile.ZipFile(archive) as opened:
        assert all(info.flag_bits & 0x1 for info in opened.infolist())
    argv = ["ingest", "--source", f"zip:{archive}"]
    assert_one_line_error(*malaria(argv, capsys), 2, str(archive), "encrypted", "password")


@pytest.mark.parametrize(
    ("column", "values", "kind"),
    [("image", ["not", "bytes"], "string"), ("image", [1, 2], "int64")],
    ids=["strings", "integers"],
)
def test_a_parquet_image_column_of_another_type_is_named_on_one_line(
    trained, tmp_path, column, values, kind
):
    """Was: an internal TypeError or AttributeError naming no column, after a traceback."""
    table = pa.table({column: values, "source_id": ["a", "b"]})
    pq.write_table(table, tmp_path / "cells.parquet")
    arguments = ["predict", "--input", str(tmp_path / "cells.parquet")]
    finished = run_malaria([*arguments, "--output", str(tmp_path / "p.parquet")], trained["env"])
    one_line_error(finished, 2, "cells.parquet", f"column 'image' holds {kind}", "image bytes")
    assert not (tmp_path / "p.parquet").exists()

    debugged = run_malaria(
        [*arguments, "--output", str(tmp_path / "p.parquet"), "--debug"], trained["env"]
    )
    assert debugged.returncode == 2 and "Traceback" in debugged.stderr


# -- 5. Metadata checked: manifest counts, variants named twice, a store folder that is not --


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda manifest: {**manifest, "rows": 3000}, "states 3000 rows; its shards hold 60"),
        (
            lambda manifest: {
                **manifest,
                "counts": {
                    **manifest["counts"],
                    "test": {
                        "parasitized": manifest["counts"]["test"]["parasitized"] + 1,
                        "uninfected": manifest["counts"]["test"]["uninfected"] - 1,
                    },
                },
            },
            "parasitized test images; its shards hold",
        ),
        (lambda manifest: {**manifest, "image_shape": [12, 12, 3]}, "holds images of"),
    ],
    ids=["rows", "class-counts", "image-shape"],
)
def test_a_manifest_whose_counts_its_shards_do_not_hold_is_refused(
    trained_env, trained, tmp_path, tamper, message, capsys
):
    """Was: accepted, and the report said "(3000 images)"."""
    copy = Path(shutil.copytree(trained["dataset"], tmp_path / Path(trained["dataset"]).name))
    manifest_file = copy / "_manifest.json"
    manifest_file.write_text(json.dumps(tamper(json.loads(manifest_file.read_text()))))
    argv = ["train", "--dataset", str(copy), "--variants", "simple", "--epochs", "1"]
    assert_one_line_error(*malaria(argv, capsys), 2, "--dataset", str(manifest_file), message)


def test_a_variant_named_twice_is_refused_by_the_command_and_the_flow(capsys, data_dir):
    """Was: the same variant trained and registered twice without a word."""
    argv = ["train", "--dataset", "d", "--variants", "resnet,simple,resnet"]
    assert_one_line_error(*malaria(argv, capsys), 2, "--variants", "'resnet' named more than once")

    from prefect.exceptions import ParameterTypeError

    from flows.train import train

    with pytest.raises(ParameterTypeError, match="named more than once"):
        train.validate_parameters({"dataset": "d", "variants": ["simple", "simple"]})


def test_a_sqlite_store_in_a_folder_that_does_not_exist_is_refused(
    tmp_path, capsys, data_dir, monkeypatch
):
    """Was: the folder made and an empty store started there, version 1 registered in it."""
    missing = tmp_path / "nonexistent" / "dir"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing / 'm.db'}")
    argv = ["ingest", "--source", "synthetic", "--limit", "40"]
    assert_one_line_error(*malaria(argv, capsys), 2, "MLFLOW_TRACKING_URI", f"{missing}")
    assert not missing.parent.exists()
    assert not data_dir.exists()
