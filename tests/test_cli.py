"""The `malaria` command: JSON output, one-line errors naming the bad option, a real run."""

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from app.cli import main
from cnn.sources.synthetic import draw_cell


def test_variants_lists_each_variant_with_its_parameter_count(capsys):
    assert main(["variants", "--image-size", "100", "--json"]) == 0  # the lecture's size
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = {variant["name"]: variant["parameters"] for variant in result["variants"]}
    assert counts["simple"] == 56_257


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["pipeline", "--image-size", "8"], "--image-size"),
        (["pipeline", "--image-size", "600"], "--image-size"),
        (["pipeline", "--epochs", "0"], "--epochs"),
        (["pipeline", "--epochs", "many"], "--epochs"),
        (["pipeline", "--limit", "5"], "--limit"),
        (["pipeline", "--split", "diagonal"], "--split"),
        (["pipeline", "--variants", "simple,vgg99"], "vgg99"),
        (["pipeline", "--source", "ftp:/cells"], "ftp:/cells"),
        (["pipeline", "--source", "folder:/no/such/cells"], "/no/such/cells"),
        (["ingest"], "--source"),
        (["ingest", "--source", "synthetic", "--dask-address", "scheduler"], "--dask-address"),
        (["train", "--dataset", "/no/such/dataset"], "/no/such/dataset"),
        (["variants", "--image-size", "4"], "--image-size"),
        (["pipeline", "--promotion-metric", "loss"], "--promotion-metric"),
        (["pipeline", "--min-margin", "-1"], "--min-margin"),
        (["predict", "--input", "/no/such/cells", "--output", "p.parquet"], "/no/such/cells"),
        (["predict", "--input", ".", "--output", "p.parquet", "--group-by", "ward"], "--group-by"),
        (["predict", "--input", ".", "--output", "p.parquet", "--flag-parasitemia", "2"], "--flag"),
        (["evaluate", "--model", "models:/m/1", "--dataset", "/no/such/set"], "/no/such/set"),
        (["stack", "up", "--prefect-port", "70000"], "--prefect-port"),
        (["stack", "up", "--mlflow-port", "0"], "--mlflow-port"),
        (["stack", "up", "--mlflow-workers", "0"], "--mlflow-workers"),
        # was: SeaweedFS could not bind its gRPC port (70000), "not ready" after 120 s
        (["stack", "up", "--profile", "team", "--object-store-port", "60000"], "55535"),
        (["pipeline", "--source", "folder:nosuchfs://bucket/cells"], "nosuchfs://"),
        (["stack", "restart"], "restart"),
        (["stack", "status", "--state-dir", "/no/such/stack"], "/no/such/stack/stack.json"),
        (["stack", "down", "--state-dir", "/no/such/stack"], "malaria stack up"),
    ],
)
def test_bad_options_fail_with_one_line_naming_them(argv, named, capsys, data_dir):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("malaria: error:")
    assert named in lines[0]
    assert captured.out == ""
    assert not data_dir.exists()  # nothing started


HEAVY_MODULES = ("keras", "tensorflow", "mlflow", "prefect")
CHECK_OPTIONS = """
import sys
import app.cli as cli
import app.commands as commands
parser = cli._build_parser()
cli._check_settings()
commands._train_settings(parser.parse_args(["train", "--dataset", "d", "--variants", "simple"]))
commands._ingest_config(parser.parse_args(["ingest", "--source", "synthetic", "--limit", "40"]))
print(",".join(name for name in sys.argv[1:] if name in sys.modules))
"""


def test_checking_options_imports_no_framework_so_the_server_starts_first():
    """A flow command's temporary Prefect server starts once its options are checked: a check
    that imported Keras would hold it back by seconds."""
    completed = subprocess.run(
        [sys.executable, "-c", CHECK_OPTIONS, *HEAVY_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert completed.stdout.strip() == ""


def test_empty_class_folder_is_reported_before_any_image_is_read(tmp_path, prefect_harness):
    """Run as a user would (a process of its own), against the test harness's server."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "cells" / "Parasitized").mkdir(parents=True)
    (tmp_path / "cells" / "Uninfected").mkdir()
    completed = subprocess.run(
        [_malaria(), "ingest", "--source", f"folder:{tmp_path / 'cells'}"],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith("malaria: error:")
    assert "Parasitized' holds no images" in completed.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "data").exists()


def test_an_unchanged_ingest_is_answered_from_its_dataset_without_a_flow_run(
    prefect_harness, data_dir, capsys
):
    from prefect.client.orchestration import get_client

    def ingest() -> dict:
        assert main(["ingest", "--source", "synthetic", "--limit", "24", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def flow_runs() -> int:
        with get_client(sync_client=True) as client:
            return len(client.read_flow_runs())

    first = ingest()
    runs = flow_runs()
    second = ingest()
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert second["path"] == first["path"] and second["rows"] == first["rows"] == 24
    assert flow_runs() == runs


def _malaria() -> str:
    return shutil.which("malaria", path=os.path.dirname(sys.executable)) or "malaria"


@pytest.mark.slow
def test_pipeline_runs_end_to_end_as_a_new_user_would(tmp_path, monkeypatch, prefect_harness):
    """The README's first run, a process of its own: default stores under the working
    directory, no server started. Then its model scores, evaluates and refuses as the
    commands that follow would (in this process: each `malaria` process costs seconds)."""
    for key in list(os.environ):
        if key.startswith(("MLFLOW_", "PREFECT_API", "MALARIA_")):
            monkeypatch.delenv(key)
    completed = subprocess.run(
        [
            _malaria(),
            "pipeline",
            "--source",
            "synthetic",
            "--limit",
            "200",
            "--epochs",
            "2",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["dataset"]["path"].startswith(str(tmp_path / "data" / "datasets"))
    (run,) = result["runs"]
    assert 0.0 <= run["test_accuracy"] <= 1.0
    database = tmp_path / "mlflow" / "store" / "mlflow.db"
    with sqlite3.connect(database) as connection:
        (status,) = connection.execute(
            "select status from runs where run_uuid = ?", (run["run_id"],)
        ).fetchone()
        metric_names = {
            row[0]
            for row in connection.execute(
                "select key from metrics where run_uuid = ?", (run["run_id"],)
            )
        }
    assert status == "FINISHED"
    assert {"test_accuracy", "val_loss", "loss"} <= metric_names
    assert list((tmp_path / "mlflow" / "store" / "artifacts").rglob("MLmodel"))

    monkeypatch.chdir(tmp_path)

    def malaria(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    cells = tmp_path / "new-cells"
    cells.mkdir()
    rng = np.random.default_rng(1)
    for index in range(5):
        Image.fromarray(draw_cell(rng, parasitized=index % 2 == 0)).save(cells / f"{index}.png")
    try:
        code, out, err = malaria(
            "predict", "--input", str(cells), "--output", "out.parquet", "--json"
        )
        assert code == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["model_uri"] == "models:/malaria-cnn@champion"
        assert summary["rows"] == pq.read_table(tmp_path / "out.parquet").num_rows == 5
        assert summary["patients"] == "out.patients.parquet"  # beside the cells, same stem
        patients = pq.read_table(tmp_path / summary["patients"]).to_pandas()
        assert sorted(patients["group"]) == ["0", "1", "2", "3", "4"]  # no NIH prefix: stems
        assert patients["cells"].sum() == 5

        code, out, err = malaria(
            "evaluate",
            "--model",
            run["model_uri"],
            "--dataset",
            result["dataset"]["path"],
            "--json",
        )
        assert code == 0, err[-3000:]
        scores = json.loads(out.strip().splitlines()[-1])
        assert scores["accuracy"] == pytest.approx(run["test_accuracy"])

        code, _, err = malaria(
            "predict",
            "--model",
            "models:/malaria-cnn@nightly",
            "--input",
            str(cells),
            "--output",
            "never.parquet",
        )
        assert code == 2  # bad input, refused before any flow starts
        assert (
            "--model: registered model 'malaria-cnn': alias 'nightly' is not set"
            in err.strip().splitlines()[-1]
        )
        assert not (tmp_path / "never.parquet").exists()
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)


def test_stack_up_on_a_busy_port_names_it_and_starts_nothing(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        state_dir = tmp_path / "stack"
        argv = ["stack", "up", "--mlflow-port", str(port), "--state-dir", str(state_dir)]
        assert main([*argv, "--prefect-port", str(port + 1 if port < 65535 else port - 1)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"malaria: error: --mlflow-port: port {port} on 127.0.0.1 is already in use"
    assert not state_dir.exists()


def test_ingest_imports_the_splitters_while_the_server_starts(monkeypatch, data_dir):
    """scikit-learn's import (a second or more) was the split's first cost inside the ingest
    task, with every worker waiting for it; the command now spends it while its server starts.
    (The pipeline's flow imports scikit-learn as it is imported, also while the server starts.)"""
    import app.commands
    from cnn.ingest.splits import import_splitters

    handed_over = {}

    def run_flow(module: str, name: str, *args, debug=False, meanwhile=None):
        handed_over[name] = meanwhile
        raise RuntimeError("no flow runs in this test")

    monkeypatch.setattr(app.commands, "run_flow", run_flow)
    assert main(["ingest", "--source", "synthetic"]) == 1
    assert handed_over == {"ingest": import_splitters}
