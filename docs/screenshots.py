"""Screenshots of the two UIs of a running stack, for the README.

    malaria stack up        # and at least one completed retrain with two variants
    python docs/screenshots.py [--state-dir .stack] [--chromium /usr/bin/chromium]

Takes, with headless Chromium: the Prefect run list (named runs), the latest completed
`retrain` flow run's graph, the flow run that trained a variant (its named tasks with
their progress, report and confusion-matrix artifacts, its log), the `retrain` deployment's Run
form; MLflow's page of that retrain's parent run (its variants' runs listed as children) and
the comparison of those children. Writes docs/*.png.
"""

import argparse
import json
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import httpx

DOCS = Path(__file__).resolve().parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def screenshot(chromium: str, url: str, output: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={output}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"{output.name}: {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".stack"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time to render")
    args = parser.parse_args()
    state = json.loads((args.state_dir / "stack.json").read_text())
    prefect, mlflow = state["prefect_url"], state["mlflow_url"]
    api = f"{prefect}/api"

    deployment = httpx.get(f"{api}/deployments/name/retrain/retrain").json()
    flow_runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "END_TIME_DESC",
            "limit": 1,
        },
    ).json()
    if not flow_runs:
        raise SystemExit("no completed retrain flow run yet: start one from the UI first")
    retrain_run = flow_runs[0]
    progress = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"type": {"any_": ["progress"]}}, "sort": "CREATED_DESC", "limit": 1},
    ).json()
    experiment = httpx.get(
        f"{mlflow}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "malaria-cnn"},
    ).json()["experiment"]
    experiment_id = experiment["experiment_id"]

    def search_runs(filter_string: str) -> list[dict]:
        return httpx.post(
            f"{mlflow}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 50},
        ).json()["runs"]

    parent = next(  # the retrain's own run; its variants' runs may carry its flow run id too
        run
        for run in search_runs(f"tags.prefect_flow_run_id = '{retrain_run['id']}'")
        if not any(tag["key"] == "mlflow.parentRunId" for tag in run["data"].get("tags", []))
    )
    parent_id = parent["info"]["run_id"]
    child_ids = [
        run["info"]["run_id"] for run in search_runs(f"tags.mlflow.parentRunId = '{parent_id}'")
    ]
    compare = urllib.parse.urlencode(
        {"runs": json.dumps(child_ids), "experiments": json.dumps([experiment_id])}
    )
    shots = [
        (f"{prefect}/runs", "prefect-runs.png", 900),
        (f"{prefect}/runs/flow-run/{retrain_run['id']}", "prefect-flow-run.png", 1000),
        (f"{prefect}/deployments/deployment/{deployment['id']}/run", "prefect-run-form.png", 1000),
        (f"{mlflow}/#/experiments/{experiment_id}/runs/{parent_id}", "mlflow-parent.png", 1300),
        (f"{mlflow}/#/compare-runs?{compare}", "mlflow-compare.png", 2000),
    ]
    if progress:
        trained_in = progress[0]["flow_run_id"]
        shots.insert(2, (f"{prefect}/runs/flow-run/{trained_in}", "prefect-progress.png", 1000))
    for url, name, height in shots:
        screenshot(args.chromium, url, DOCS / name, f"1440,{height}", args.wait_ms)


if __name__ == "__main__":
    main()
