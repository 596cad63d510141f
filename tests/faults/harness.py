"""Fault-injection helpers: the `malaria` command as a real process, and a switchable proxy
in front of a real MLflow server that can drop every connection, as a dead server does."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from app.stack_settings import QUIET_ENVIRONMENT
from tests.integration.servers import REPO

TINY_PIPELINE = [
    "--source", "synthetic", "--limit", "60", "--image-size", "24",
    "--variants", "simple", "--batch-size", "16", "--patience", "20",
]  # fmt: skip
"""Seconds-long runs: 60 synthetic cells of 24 px, the `simple` variant."""


def tiny_pipeline(epochs: int) -> list[str]:
    """`malaria` arguments of a tiny pipeline run of `epochs` epochs, ending in JSON."""
    return ["pipeline", *TINY_PIPELINE, "--epochs", str(epochs), "--json"]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict:
        """The `--json` line of a successful run."""
        assert self.returncode == 0, self.stderr[-3000:]
        return json.loads(self.stdout.strip().splitlines()[-1])


def malaria(arguments: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `malaria ARGUMENTS` in its own process group (so a kill takes its children)."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *arguments],
        cwd=REPO,
        env={**os.environ, **QUIET_ENVIRONMENT, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, started: float, timeout: float = 600) -> Finished:
    stdout, stderr = process.communicate(timeout=timeout)
    return Finished(process.returncode, stdout, stderr, time.monotonic() - started)


def run_malaria(arguments: list[str], env: dict[str, str], timeout: float = 600) -> Finished:
    started = time.monotonic()
    return finish(malaria(arguments, env), started, timeout)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> None:
    """Poll `condition` every 20 ms until it holds; fail if the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended before the fault point: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise TimeoutError("the fault point never came")
        time.sleep(0.02)


class DroppingProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream`. While `down`, it closes every
    connection without an answer: to a client, the server is gone. `on_request` sees each
    request's method, path and body first (and may set `down`)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.down = False
        self.dropped = 0
        self.on_request: Callable[[str, str, bytes], None] = lambda method, path, body: None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.on_request(self.command, self.path, body or b"")
                if proxy.down:
                    proxy.dropped += 1
                    self.close_connection = True
                    return
                headers = {
                    key: value
                    for key, value in self.headers.items()
                    if key.lower() not in ("host", "content-length", "connection")
                }
                answer = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers=headers,
                    timeout=120,
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in (
                        "content-length", "transfer-encoding", "connection", "content-encoding",
                    ):  # fmt: skip
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "DroppingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def checkpoint_epochs(data_dir: Path) -> list[int]:
    """Epoch numbers of the published checkpoints under the data directory."""
    return [
        int(path.name.split("-")[1])
        for path in (data_dir / "checkpoints").glob("*/*/epoch-*")
        if (path / "state.json").is_file()
    ]


def prefect_log_text(api_url: str) -> str:
    """Every log line the Prefect server holds, newest first."""
    lines, offset = [], 0
    while True:
        page = requests.post(
            f"{api_url}/logs/filter", json={"limit": 200, "offset": offset}, timeout=30
        ).json()
        lines += [entry["message"] for entry in page]
        if len(page) < 200:
            return "\n".join(lines)
        offset += 200
