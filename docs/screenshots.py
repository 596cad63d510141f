"""Screenshots of the two UIs of a running stack, for the README.

    malaria stack up        # and at least one completed retrain with two variants
    python docs/screenshots.py [--state-dir .stack] [--chromium /usr/bin/chromium]

Takes, with headless Chromium: the `retrain` deployment's Run form, the graph of the latest
completed `retrain` flow run, and MLflow's comparison of the two latest runs of experiment
`malaria-cnn`. Writes docs/prefect-run-form.png, docs/prefect-flow-run.png and
docs/mlflow-compare.png.
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
    experiment = httpx.get(
        f"{mlflow}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "malaria-cnn"},
    ).json()["experiment"]
    runs = httpx.post(
        f"{mlflow}/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [experiment["experiment_id"]],
            "max_results": 2,
            "order_by": ["attributes.start_time DESC"],
        },
    ).json()["runs"]
    run_ids = json.dumps([run["info"]["run_id"] for run in runs])
    compare = urllib.parse.urlencode(
        {"runs": run_ids, "experiments": json.dumps([experiment["experiment_id"]])}
    )
    shots = [
        (f"{prefect}/deployments/deployment/{deployment['id']}/run", "prefect-run-form.png", 1000),
        (f"{prefect}/runs/flow-run/{flow_runs[0]['id']}", "prefect-flow-run.png", 1000),
        (f"{mlflow}/#/compare-runs?{compare}", "mlflow-compare.png", 2000),
    ]
    for url, name, height in shots:
        screenshot(args.chromium, url, DOCS / name, f"1440,{height}", args.wait_ms)


if __name__ == "__main__":
    main()
