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


S3_KEY = {"AWS_ACCESS_KEY_ID": "malaria-tests", "AWS_SECRET_ACCESS_KEY": "malaria-tests-secret"}
GRPC_OFFSET = 10000
"""SeaweedFS also opens each port + 10000 for gRPC."""


def free_port_with_grpc() -> int:
    """A free port whose gRPC twin (+10000) is free too."""
    while True:
        port = free_port()
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port


@contextmanager
def seaweed_s3(root: Path, ports: dict[str, int] | None = None):
    """A real S3-compatible server (SeaweedFS: master, volume, filer and S3 gateway in one
    `weed server`) on free 127.0.0.1 ports (or `ports`, to start it again over the same
    `root`), with one identity and no anonymous access; yields the environment an S3 client
    needs and the ports. Stopped by its pid: SIGTERM, then SIGKILL (weed does
    not exit promptly on SIGTERM)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    identity = {
        "name": "malaria",
        "credentials": [
            {"accessKey": S3_KEY["AWS_ACCESS_KEY_ID"], "secretKey": S3_KEY["AWS_SECRET_ACCESS_KEY"]}
        ],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = ports or {name: free_port_with_grpc() for name in ("master", "volume", "filer", "s3")}
    command = [
        str(BIN / "weed"), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", "-filer", f"-filer.port={ports['filer']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.config={root / 's3.json'}",
        "-volume.max=0", "-master.volumeSizeLimitMB=64",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on fixed ports: two servers clash
    ]  # fmt: skip
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    log = root / "weed.log"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", **S3_KEY}
    with background(command, log, {}, cwd=root, stop_seconds=3) as process:
        _wait_until_writable(env, process, log)
        yield env, ports


def _wait_until_writable(
    env: dict[str, str], process: subprocess.Popen, log: Path, timeout: float = 60
) -> None:
    """Until an object can be written: the S3 port answers before the volume server is up."""
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(
        endpoint_override=env["AWS_ENDPOINT_URL"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
        connect_timeout=2,
        request_timeout=5,
        allow_bucket_creation=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited early:\n{log.read_text()[-3000:]}")
        try:
            s3.create_dir("ready")
            with s3.open_output_stream("ready/probe") as probe:
                probe.write(b"ok")
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS not writable after {timeout} s:\n{log.read_text()[-3000:]}")


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
