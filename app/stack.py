"""The local service stack: Prefect server, MLflow server, work pools, deployments, workers.

`malaria stack up` starts them all on 127.0.0.1 (unless told another host), deploys
`prefect.yaml`, and records what it started in `<state dir>/stack.json`; every process logs to
`<state dir>/logs/`. `malaria stack down` stops them; `malaria stack status` says what runs.
Processes are started in their own sessions, so they outlive the command that started them.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.prefect_api import answers, make_prefect_home
from app.stack_settings import HEARTBEAT_SECONDS, QUIET_ENVIRONMENT, StackSettings, client_host
from app.team import (
    BUCKET,
    ObjectStore,
    Postgres,
    Started,
    free_port_with_grpc,
    wait_for_postgres,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GPU_POOL = "gpu"
WORK_POOLS = ("cpu", GPU_POOL)
WORKER_PREFIX = "worker-"
WORKER_ENVIRONMENT = {"PREFECT_RUNNER_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
"""Flow-run processes of the workers tell the server that they live, so a run whose process
or host is gone is found (`app.alerts`)."""
"""Processes named so are workers: stopped before the servers they report to."""
POSTGRES = "postgres"
OBJECT_STORE = "object-store"
STORES = (POSTGRES, OBJECT_STORE)
"""Processes the servers keep their data in: stopped after the servers."""
PREFECT_DATABASE_VARIABLE = "PREFECT_API_DATABASE_CONNECTION_URL"
PREFECT_DATABASE_FILE = "prefect.db"
HEALTH_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 20
KILL_WAIT_SECONDS = 5
"""How long a SIGKILLed process may take to be gone (SeaweedFS ignores SIGTERM for ~25 s)."""


class StackError(RuntimeError):
    """The stack cannot be started or stopped as asked; the message says what is in the way."""


@dataclass
class StackState:
    """What `up` started: process ids and log files by service name, and the URLs."""

    prefect_url: str
    mlflow_url: str
    env: dict[str, str]
    processes: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    deployments: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


def stack_up(settings: StackSettings) -> StackState:
    """Start both servers, create the work pools, deploy `prefect.yaml` to them, start one
    worker per pool. On any failure, whatever this call started is stopped again."""
    from tasks.notify import WEBHOOK_ENV, webhook_url

    state_path = settings.state_file
    if state_path.exists():
        raise StackError(f"a stack is already recorded in {state_path}; `malaria stack down` first")
    if not (PROJECT_ROOT / "prefect.yaml").exists():
        raise StackError(f"no prefect.yaml in {PROJECT_ROOT}: run from a checkout of the project")
    for name, port in (
        ("--prefect-port", settings.prefect_port),
        ("--mlflow-port", settings.mlflow_port),
    ):
        if _port_in_use(settings.host, port):
            raise StackError(f"{name}: port {port} on {settings.host} is already in use")
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    make_prefect_home()
    if settings.profile == "embedded":
        settings.mlflow_store.mkdir(parents=True, exist_ok=True)
    state = StackState(settings.prefect_url, settings.mlflow_url, settings.client_env)
    try:
        backends = _start_backends(settings, state, logs)
        state.env.update({**backends.s3_env, "MALARIA_DATA_DIR": backends.data_dir})
        prefect_db = {PREFECT_DATABASE_VARIABLE: backends.prefect_database}
        _start(state, "prefect-server", _prefect_server_command(settings), logs, prefect_db)
        mlflow_command = _mlflow_server_command(settings, backends)
        _start(state, "mlflow-server", mlflow_command, logs, backends.s3_env)
        _wait_healthy(state, "prefect-server", f"{settings.prefect_url}/api/health")
        # Pools and deployments need only Prefect: made while MLflow still comes up.
        _prefect(  # an existing pool keeps its settings (a custom job template)
            *(
                ["work-pool", "create", pool, "--type", "process"]
                for pool in WORK_POOLS
                if httpx.get(f"{settings.prefect_url}/api/work_pools/{pool}", timeout=10).is_error
            ),
            state=state,
        )
        deploy = [part for name in _deployments_on(WORK_POOLS) for part in ("--name", name)]
        _prefect(["--no-prompt", "deploy", *deploy], state=state, log=logs / "deploy.log")
        state.deployments = _deployment_names(settings)
        webhook = settings.webhook_url or webhook_url()
        state.alerts = install_stack_alerts(f"{settings.prefect_url}/api", webhook)
        _wait_healthy(state, "mlflow-server", f"{settings.mlflow_url}/health")
        worker_env = {**state.env, **WORKER_ENVIRONMENT}
        for pool in WORK_POOLS:
            command = ["worker", "start", "--pool", pool, "--name", f"malaria-{pool}"]
            if pool == GPU_POOL:  # one flow run at a time: variants never share the GPU
                command += ["--limit", "1"]
            # the server alerts now: a worker's own hook would post the same failure twice
            unset = (WEBHOOK_ENV,) if webhook else ()
            name = f"{WORKER_PREFIX}{pool}"
            _start(state, name, [_bin("prefect"), *command], logs, worker_env, unset)
    except BaseException:
        _stop_all(state)
        raise
    state_path.write_text(json.dumps(asdict(state), indent=2))
    return state


def stack_down(settings: StackSettings) -> list[str]:
    """Stop every process `up` recorded; return their names. Nothing recorded: an error."""
    state = read_state(settings)
    stopped = _stop_all(state)
    settings.state_file.unlink()
    return stopped


def stack_status(settings: StackSettings) -> dict[str, dict]:
    """Each recorded process: its pid, whether it runs, and its log file."""
    state = read_state(settings)
    return {
        name: {"pid": pid, "running": _alive(pid), "log": state.logs.get(name)}
        for name, pid in state.processes.items()
    }


def read_state(settings: StackSettings) -> StackState:
    path = settings.state_file
    if not path.exists():
        raise StackError(f"no stack recorded in {path}; start one with `malaria stack up`")
    return StackState(**json.loads(path.read_text()))


def _prefect_server_command(settings: StackSettings) -> list[str]:
    return [
        _bin("prefect"),
        "server",
        "start",
        "--host",
        settings.host,
        "--port",
        str(settings.prefect_port),
    ]


@dataclass(frozen=True)
class Backends:
    """Where the servers and the workers keep their data, and what an S3 client needs to
    reach the store."""

    prefect_database: str
    mlflow_backend: str
    mlflow_artifacts: str
    data_dir: str
    """The workers' MALARIA_DATA_DIR: datasets, checkpoints and kept models."""
    s3_env: dict[str, str] = field(default_factory=dict)


def embedded_backends(settings: StackSettings) -> Backends:
    """SQLite files: the Prefect server's own in the state folder (unless the environment
    names a database), MLflow's store and artifacts under `mlflow/store`."""
    store = settings.mlflow_store.absolute()
    database = (settings.state_dir / PREFECT_DATABASE_FILE).absolute()
    return Backends(
        prefect_database=os.environ.get(PREFECT_DATABASE_VARIABLE)
        or f"sqlite+aiosqlite:///{database}",
        mlflow_backend=f"sqlite:///{store / 'mlflow.db'}",
        mlflow_artifacts=str(store / "artifacts"),
        data_dir=settings.data_dir,
    )


def _start_backends(settings: StackSettings, state: StackState, logs: Path) -> Backends:
    """The embedded profile's SQLite files (the Prefect server's own, so that a command's
    temporary server, on Prefect's home database, never runs the stack's automations), or
    the team profile's PostgreSQL and object store (MLflow's artifacts and the workers' data
    folder on it): the given ones, or ones started here."""
    if settings.profile == "embedded":
        return embedded_backends(settings)
    database_url = settings.database_url
    if database_url is None:
        postgres = Postgres(
            settings.state_dir.absolute() / POSTGRES,
            settings.postgres_port,
            client_host(settings.host),
        )
        postgres.initialise()
        _start(state, POSTGRES, postgres.command(), logs, {}, user=postgres.user)
        wait_for_postgres(postgres, HEALTH_TIMEOUT_SECONDS, _started(state, POSTGRES))
        database_url = postgres.url
    artifacts, s3_env = settings.object_store, {}
    if artifacts is None:
        ports = {name: free_port_with_grpc() for name in ("master", "volume", "filer")}
        objects = ObjectStore(
            settings.state_dir.absolute() / "objects",
            client_host(settings.host),
            {**ports, "s3": settings.object_store_port},
        )
        _start(state, OBJECT_STORE, objects.command(), logs, {})
        objects.wait_ready(HEALTH_TIMEOUT_SECONDS, _started(state, OBJECT_STORE))
        artifacts, s3_env = f"s3://{BUCKET}", objects.client_env
    host_and_port = database_url.removeprefix("postgresql://")
    return Backends(
        prefect_database=f"postgresql+asyncpg://{host_and_port}/prefect",
        mlflow_backend=f"postgresql+psycopg2://{host_and_port}/mlflow",
        mlflow_artifacts=f"{artifacts.rstrip('/')}/mlflow",
        data_dir=f"{artifacts.rstrip('/')}/data",
        s3_env=s3_env,
    )


def _mlflow_server_command(settings: StackSettings, backends: Backends) -> list[str]:
    return [
        _bin("mlflow"),
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--backend-store-uri",
        backends.mlflow_backend,
        "--artifacts-destination",
        backends.mlflow_artifacts,
        "--workers",
        str(settings.mlflow_workers),
    ]


def stack_alerts(settings: StackSettings) -> dict[str, Any]:
    """(Re)install the alerts on the server `PREFECT_API_URL` names, else on the recorded
    stack's: for a server that `up` did not start, or a new webhook."""
    from tasks.notify import webhook_url

    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        if not settings.state_file.exists():
            raise StackError(
                f"no Prefect server to install alerts on: set PREFECT_API_URL, or start the "
                f"stack (no stack recorded in {settings.state_file})"
            )
        api_url = f"{read_state(settings).prefect_url}/api"
    webhook = settings.webhook_url or webhook_url()
    return {"prefect_api_url": api_url, "alerts": install_stack_alerts(api_url, webhook)}


def install_stack_alerts(api_url: str, webhook: str | None) -> list[str]:
    """The server's automations (`app.alerts`), on the Prefect server at `api_url`."""
    if not answers(api_url):
        raise StackError(f"the Prefect server {api_url} does not answer: no alerts installed")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from app.alerts import install_alerts

    with temporary_settings({PREFECT_API_URL: api_url}):
        return install_alerts(webhook)


def _start(
    state: StackState,
    name: str,
    command: list[str],
    logs: Path,
    env: dict,
    unset: tuple[str, ...] = (),
    user: str | None = None,
) -> None:
    log = logs / f"{name}.log"
    environment = {**QUIET_ENVIRONMENT, **os.environ, **env}
    for variable in unset:
        environment.pop(variable, None)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
    state.processes[name] = process.pid
    state.logs[name] = str(log.absolute())


def _started(state: StackState, name: str) -> Started:
    """A store the stack started, as its waits see it."""
    pid = state.processes[name]
    return Started(name, lambda: _alive(pid), Path(state.logs[name]))


def _wait_healthy(state: StackState, name: str, url: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not _alive(state.processes[name]):
            raise StackError(f"{name} exited while starting; see {state.logs[name]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise StackError(
        f"{name} did not answer {url} in {HEALTH_TIMEOUT_SECONDS} s; see {state.logs[name]}"
    )


def _prefect(*commands: list[str], state: StackState, log: Path | None = None) -> None:
    """Run Prefect CLI commands at once against the stack's server; fail with the output of
    the first that fails."""
    started = [
        subprocess.Popen(
            [_bin("prefect"), *arguments],
            cwd=PROJECT_ROOT,
            env={**QUIET_ENVIRONMENT, **os.environ, **state.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for arguments in commands
    ]
    outputs = [process.communicate()[0] for process in started]
    if log is not None:
        log.write_text("".join(outputs))
    for arguments, process, output in zip(commands, started, outputs, strict=True):
        if process.returncode != 0:
            last_lines = output.strip().splitlines()[-5:]
            raise StackError(f"`prefect {' '.join(arguments)}` failed: {' / '.join(last_lines)}")


def _deployments_on(pools: tuple[str, ...]) -> list[str]:
    """The deployments of `prefect.yaml` on these work pools (the Kubernetes pool's wait for a
    team to create that pool)."""
    import yaml

    config = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    return [
        deployment["name"]
        for deployment in config["deployments"]
        if deployment["work_pool"]["name"] in pools
    ]


def _deployment_names(settings: StackSettings) -> list[str]:
    response = httpx.post(f"{settings.prefect_url}/api/deployments/filter", json={}, timeout=10)
    response.raise_for_status()
    return sorted(deployment["name"] for deployment in response.json())


def _stop_all(state: StackState) -> list[str]:
    """Stop the workers, then the servers they talk to, then the stores those keep their data
    in: each tier at once, SIGTERM to each
    process group, then SIGKILL to what is still there after a grace period. Returns the
    names in reverse start order."""
    names = list(reversed(state.processes))
    workers = [name for name in names if name.startswith(WORKER_PREFIX)]
    stores = [name for name in names if name in STORES]
    servers = [name for name in names if name not in workers + stores]
    for tier in (workers, servers, stores):
        running = [state.processes[name] for name in tier if _alive(state.processes[name])]
        for pid in running:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while any(_alive(pid) for pid in running) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in running:
            _signal_group(pid, signal.SIGKILL)
        deadline += KILL_WAIT_SECONDS
        while any(_alive(pid) for pid in running) and time.monotonic() < deadline:
            time.sleep(0.1)
    return names


def _signal_group(pid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal_number)  # each service leads its own session and group


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it if it ended
        if finished:
            return False
    except ChildProcessError:
        pass  # started by an earlier `malaria stack up`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((client_host(host), port)) == 0


def _bin(name: str) -> str:
    """A console script of this environment (the one `malaria` runs in)."""
    return str(Path(sys.executable).with_name(name))
