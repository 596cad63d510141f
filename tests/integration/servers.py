"""Real servers for integration tests: started on 127.0.0.1 ports, stopped by the test."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx

from app.stack_settings import QUIET_ENVIRONMENT

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMPT_WORKERS = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
"""Workers look for scheduled runs every second (Prefect's 10 s would be waited out by tests)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def malaria_in(cwd: Path, *arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The installed `malaria` command run in `cwd`, as a user runs it, with `env` added."""
    return subprocess.run(
        [str(BIN / "malaria"), *arguments],
        cwd=cwd,
        env={**os.environ, **QUIET_ENVIRONMENT, **PROMPT_WORKERS, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def wait_for_final_state(api: str, flow_run_id: str, timeout_seconds: float) -> dict:
    """The flow run once it is in a final state, polled through the Prefect API."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if flow_run["state"] and flow_run["state"]["type"] in FINAL_STATES:
            return flow_run
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} not finished in {timeout_seconds} s")


def run_as_the_ui_does(api: str, deployment_id: str, parameters: dict, timeout: float) -> dict:
    """Create a flow run of the deployment through the API, as the UI's Run button does, and
    return it once it is in a final state."""
    created = httpx.post(
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": parameters},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return wait_for_final_state(api, created.json()["id"], timeout)


def wait_until_healthy(
    url: str, process: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def background(
    command: list[str], log: Path, env: dict[str, str], cwd: Path = REPO, stop_seconds: float = 20
):
    """Run `command` with output to `log`; terminate it (then kill) on exit."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **QUIET_ENVIRONMENT, **PROMPT_WORKERS, **env},
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def seaweed_s3(root: Path, ports: dict[str, int] | None = None):
    """A real S3-compatible server, the one the team stack starts (`app.team.ObjectStore`:
    SeaweedFS with one identity, no anonymous access), on free 127.0.0.1 ports (or `ports`, to
    start it again over the same `root`); yields what an S3 client needs and the ports.
    Stopped by its pid: SIGTERM, then SIGKILL (weed does not exit promptly on SIGTERM)."""
    from app.team import ObjectStore, Started, free_port_with_grpc

    names = ("master", "volume", "filer", "s3")
    store = ObjectStore(root, "127.0.0.1", ports or {name: free_port_with_grpc() for name in names})
    root.mkdir(parents=True, exist_ok=True)
    log = root / "weed.log"
    with background(store.command(), log, {}, cwd=root, stop_seconds=3) as process:
        store.wait_ready(60, Started("SeaweedFS", lambda: process.poll() is None, log))
        yield store.client_env, store.ports


@contextmanager
def mlflow_server(root: Path):
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",  # 4 by default: each imports MLflow, seconds of CPU the tests do not need
        "1",
    ]
    with background(command, root / "mlflow-server.log", {}) as process:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", process, root / "mlflow-server.log")
        yield f"http://127.0.0.1:{port}"


class WebhookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [body["event"] for body in self.received]

    def wait_for(self, wanted, timeout_seconds: float = 120.0) -> dict:
        """The first body posted for which `wanted(body)` is true, waiting for it."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for body in list(self.received):
                if wanted(body):
                    return body
            time.sleep(0.5)
        raise TimeoutError(f"no such post in {timeout_seconds} s; received {self.received}")
