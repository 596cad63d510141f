"""Live progress of a task's work: a Prefect progress artifact, and a bar in the terminal when
the flow runs in one (a `malaria` command; a worker has none)."""

import logging
import sys
import time
from types import TracebackType

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.theme import Theme

BAR_THEME = Theme(
    {name: style for name, style in DEFAULT_STYLES.items() if name.startswith(("bar", "progress"))}
)
UPDATE_SECONDS = 2.0
"""Fewest seconds between two updates of the artifact (each one is a call to the Prefect API)."""


class TaskProgress:
    """Told the share done as the work goes (a `cnn.progress.Progress`), shows it as a
    progress artifact of the running task, 0–100%, and in a terminal as a bar that Prefect's
    log lines print above. Artifact updates are throttled; one that fails is logged once and
    never fails the work. Use it as a context manager: the bar goes when the work ends."""

    def __init__(
        self, key: str, label: str, description: str, console: Console | None = None
    ) -> None:
        self._artifact = create_progress_artifact(0.0, key=key, description=description)
        self._last_update, self._shown, self._failed = 0.0, 0.0, False
        console = self._console = console or _terminal_console()
        self._bar = None
        if console is not None:
            console.push_theme(BAR_THEME)  # Prefect's console has only its own styles
            self._bar = Progress(
                TextColumn(label),
                BarColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._bar_task = self._bar.add_task(label, total=100.0)

    def __enter__(self) -> "TaskProgress":
        self._on_bar(lambda bar: bar.start())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._on_bar(lambda bar: bar.stop())
        if self._console is not None:
            self._console.pop_theme()

    def __call__(self, fraction: float) -> None:
        percent = round(100.0 * min(max(fraction, 0.0), 1.0), 1)
        self._on_bar(lambda bar: bar.update(self._bar_task, completed=percent))
        now = time.monotonic()
        if percent <= self._shown or (percent < 100.0 and now - self._last_update < UPDATE_SECONDS):
            return
        self._last_update, self._shown = now, percent
        try:
            update_progress_artifact(self._artifact, percent)
        except Exception as error:  # the UI's progress is not worth a failed training
            if not self._failed:
                get_run_logger().warning("Cannot update the progress artifact: %s", error)
            self._failed = True

    def _on_bar(self, action) -> None:
        """Do `action` to the bar, if there is one; a bar that fails is dropped, never the work."""
        if self._bar is None:
            return
        try:
            action(self._bar)
        except Exception:
            self._bar = None

    def finish(self) -> None:
        """Show 100% (an early-stopped training ends short of its last epoch)."""
        self(1.0)


def _terminal_console() -> Console | None:
    """Prefect's own console when its log lines go to a terminal (so they print above the
    bar), else none: no bar in a worker's log or a redirected run."""
    for handler in [*logging.getLogger().handlers, *logging.getLogger("prefect").handlers]:
        if isinstance(handler, PrefectConsoleHandler) and handler.console.is_terminal:
            return handler.console
    return Console(stderr=True) if sys.stderr.isatty() else None
