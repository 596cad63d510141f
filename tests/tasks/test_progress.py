"""Live progress: a Prefect progress artifact that reaches 100%, and a terminal bar that never
fails the work."""

import io

import pytest
from prefect.client.orchestration import get_client
from rich.console import Console

from tasks.progress import TaskProgress

pytestmark = [
    pytest.mark.usefixtures("prefect_harness"),
    pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning"),
]


def artifact_progress(key: str) -> float:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return artifact.data


def test_progress_shows_as_an_artifact_and_a_terminal_bar():
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=80)
    with TaskProgress("progress-test", "train simple", "how far", console) as progress:
        progress(0.25)
        assert artifact_progress("progress-test") == 25.0
        progress(0.5)  # within the throttle: the bar moves, the artifact waits
        assert artifact_progress("progress-test") == 25.0
        progress.finish()
    assert artifact_progress("progress-test") == 100.0
    assert "train simple" in terminal.getvalue() and "100%" in terminal.getvalue()


class BrokenTerminal(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("the terminal went away")


def test_a_terminal_that_fails_costs_the_bar_not_the_work():
    console = Console(file=BrokenTerminal(), force_terminal=True)
    with TaskProgress("progress-broken-terminal", "ingest", "how far", console) as progress:
        progress(0.5)
        progress.finish()
    assert artifact_progress("progress-broken-terminal") == 100.0


def test_no_terminal_no_bar(capsys):
    with TaskProgress("progress-no-terminal", "ingest", "how far") as progress:
        progress.finish()
    assert "ingest" not in capsys.readouterr().err
    assert artifact_progress("progress-no-terminal") == 100.0
