"""Nothing open to the network by default, no credentials in the code. (Servers actually
bound: tests/integration/test_service.py; secrets kept out of logs: the MLflow outage and
the concurrent-retrain tests, which run with a password and a webhook token set.)"""

import re
import subprocess

from app.cli import _build_parser
from app.options import given
from app.stack import _mlflow_server_command, _prefect_server_command, embedded_backends
from app.stack_settings import StackSettings
from tests.integration.servers import REPO

CREDENTIAL_PATTERNS = {
    "password in a URL": re.compile(r"://[^/\s:@'\"]+:[^/\s@'\"*{}$<]+@"),
    "assigned secret": re.compile(
        r"""(?i)\b(password|passwd|secret|token|api_?key)\b\s*[:=]\s*["'][^"'{}$<\s]{8,}["']"""
    ),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def test_the_stack_listens_on_loopback_unless_told_otherwise():
    settings = StackSettings()
    assert settings.host == "127.0.0.1"
    mlflow_command = _mlflow_server_command(settings, embedded_backends(settings))
    for command in (_prefect_server_command(settings), mlflow_command):
        assert command[command.index("--host") + 1] == "127.0.0.1"
    args = _build_parser().parse_args(["stack", "up"])
    assert StackSettings(**given(args, StackSettings)).host == "127.0.0.1"  # as the CLI builds it
    opened = _build_parser().parse_args(["stack", "up", "--host", "0.0.0.0"])
    assert StackSettings(**given(opened, StackSettings)).host == "0.0.0.0"


def test_no_credentials_are_written_in_the_code_or_its_configuration():
    tracked = subprocess.run(
        ["git", "ls-files", "cnn", "tasks", "flows", "benchmarks", "docs", "*.yaml", "*.toml",
         "*.md", ".ci"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    found = [
        f"{path}: {what}"
        for path in tracked
        if (REPO / path).suffix in (".py", ".yaml", ".yml", ".toml", ".md", ".json", ".sh", "")
        and (REPO / path).is_file()
        for what, pattern in CREDENTIAL_PATTERNS.items()
        if pattern.search((REPO / path).read_text(errors="ignore"))
    ]
    assert found == []
