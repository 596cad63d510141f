"""Which Prefect server a command's flows report to, and the temporary one when none answers.

In this order: `PREFECT_API_URL` in the environment, which must answer; the local stack's
server when `malaria stack up` recorded one in the working directory and it answers (the
stack's MLflow server and data directory come with it, unless the environment names others);
a `PREFECT_API_URL` of Prefect's active profile, which must answer; else a temporary server on
a free port of 127.0.0.1, with Prefect's own database (`~/.prefect`), stopped when the command
ends. It runs in a process of its own that exits as soon as the command's process is gone, so
a `malaria` killed with SIGKILL leaves no server behind.

The temporary server takes seconds to start (it imports Prefect's whole server), so it starts
before the command imports Prefect and its flows, and comes up meanwhile.

A command's flow runs send a heartbeat at least every `HEARTBEAT_SECONDS` to a server that may
watch them (the lost-run alert of `app.alerts` marks a run Crashed after three missed), and
none to a temporary server, which nothing watches.
"""

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 120
"""How long the temporary server may take to answer (a busy 2-core machine needs tens)."""
STOP_TIMEOUT_SECONDS = 5
ORPHAN_POLL_SECONDS = 0.2
API_URL_VARIABLE = "PREFECT_API_URL"
HOME_VARIABLE = "PREFECT_HOME"


class PrefectApiError(RuntimeError):
    """No Prefect server to report to; the message says which one failed and how."""


@dataclass
class PrefectApi:
    """The server a command's flows report to; `process` when this command started it."""

    url: str
    process: subprocess.Popen | None = None

    def wait_ready(self) -> None:
        """Return once the server answers; raise PrefectApiError (stopping it) if it cannot."""
        if self.process is None:
            return
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not answers(self.url):
            if self.process.poll() is not None:
                raise PrefectApiError(
                    f"the temporary Prefect server exited with code {self.process.returncode} "
                    f"while starting (its output is above); set {API_URL_VARIABLE} to a "
                    "running server instead"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise PrefectApiError(
                    f"the temporary Prefect server did not answer {self.url} in "
                    f"{STARTUP_TIMEOUT_SECONDS} s"
                )
            time.sleep(0.05)

    def flow_run_settings(self) -> AbstractContextManager:
        """Prefect's settings for the flow runs of this command: a heartbeat every
        `HEARTBEAT_SECONDS` (also Prefect's shortest), as the lost-run alert expects, where
        Prefect's default is far apart; none on a temporary server, which nothing watches (and
        each flow run's end waits for its heartbeat thread)."""
        from prefect.settings import temporary_settings

        from app.stack_settings import HEARTBEAT_SECONDS  # not at import: the server's process

        frequency = HEARTBEAT_SECONDS if self.process is None else None
        return temporary_settings(updates={"flows.heartbeat_frequency": frequency})

    def stop(self) -> None:
        """Stop the temporary server, if this command started one."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def adopt_running_stack(state_file: Path) -> bool:
    """Point this process at the stack recorded in `state_file` if the environment names no
    `PREFECT_API_URL` and the stack's Prefect server answers; whether it did. Variables already
    set win; the stack wins over a Prefect profile's URL.

    Call it before Prefect is imported: Prefect reads its settings once, on import.
    """
    if os.environ.get(API_URL_VARIABLE):
        return False
    try:
        env = json.loads(state_file.read_text())["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(env, dict) or not answers(str(env.get(API_URL_VARIABLE, ""))):
        return False
    for name, value in env.items():
        os.environ.setdefault(str(name), str(value))
    return True


def make_prefect_home() -> None:
    """Create `PREFECT_HOME`, when set, with its parent folders: Prefect makes only the last
    one, and a server of its in a home it could not make cannot open its database."""
    if home := os.environ.get(HOME_VARIABLE):
        Path(home).expanduser().mkdir(parents=True, exist_ok=True)


def connect_prefect() -> PrefectApi:
    """The server Prefect is configured with (`PREFECT_API_URL` in the environment or the
    active profile), if it answers; else a temporary one (starting: `wait_ready` before use)
    that Prefect is pointed at."""
    make_prefect_home()
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        if not answers(configured):
            raise PrefectApiError(f"{API_URL_VARIABLE} {configured} does not answer")
        return PrefectApi(configured)
    api = _start_temporary_server()
    # Registered after Prefect's import but before its log and event workers start, so it
    # runs after their exit handlers have sent the last logs and events to the server.
    atexit.register(api.stop)
    from cnn.io.locks import TEMPORARY_SERVER_VARIABLE

    os.environ[API_URL_VARIABLE] = api.url
    os.environ[TEMPORARY_SERVER_VARIABLE] = "1"  # its locks would bind this process alone
    refresh_global_settings_context()  # Prefect read its settings on import
    return api


def answers(api_url: str) -> bool:
    """Whether the Prefect server at `api_url` answers its health check within 2 s."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, timed out, not a URL, HTTP errors
        return False


def _start_temporary_server() -> PrefectApi:
    """Bind a free port here and hand the listening socket to the server's process: no other
    process can take the port meanwhile, and a client that connects early waits in its queue."""
    listening = socket.create_server(("127.0.0.1", 0))
    with listening:
        port = listening.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), str(listening.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=(listening.fileno(),),
        )
    return PrefectApi(f"http://127.0.0.1:{port}/api", process)


def _serve(parent_pid: int, listening_fd: int) -> None:
    """The temporary server's process: Prefect's API (no UI, the services of an ephemeral
    server) on the socket it was given, until the process that started it is gone."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True)
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=listening_fd)])


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_POLL_SECONDS)
    os._exit(0)  # the database is SQLite: a write cut short rolls back


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
