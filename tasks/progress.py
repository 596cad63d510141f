"""Live progress in the Prefect UI: a progress artifact that follows a task's work."""

import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

UPDATE_SECONDS = 2.0
"""Fewest seconds between two updates (each one is a call to the Prefect API)."""


class ProgressArtifact:
    """A progress artifact of the running task, 0–100%, told the share done as the work goes
    (a `cnn.progress.Progress`). Updates are throttled, and one that fails is logged once and
    never fails the work."""

    def __init__(self, key: str, description: str) -> None:
        self._artifact = create_progress_artifact(0.0, key=key, description=description)
        self._last_update, self._shown, self._failed = 0.0, 0.0, False

    def __call__(self, fraction: float) -> None:
        percent = round(100.0 * min(max(fraction, 0.0), 1.0), 1)
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

    def finish(self) -> None:
        """Show 100% (an early-stopped training ends short of its last epoch)."""
        self(1.0)
