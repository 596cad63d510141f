"""What the `malaria` command's exit trick saves, against the same command without it,
alternating runs (the machine's speed moves by ±10% within minutes):

    python benchmarks/tricks.py [--rounds 4]

**Skipping the interpreter's teardown** (`app.cli._exit_now`: `os._exit` once the exit
handlers have run): `malaria variants --json` (TensorFlow loaded, nothing else), with it and
with the normal exit. (The run saved in benchmarks/results/tricks.json also timed the
temporary Prefect server started before Prefect's import, with the patch `LATE_SERVER` that
this script had then: it saved 0.35 s of a 4.7 s `malaria ingest`, and was removed.)

Printed and saved to benchmarks/results/tricks.json.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure, save

RUN = (
    "import sys, app.cli as cli; exec({patch!r}); sys.argv = ['malaria', *sys.argv[1:]]; cli.run()"
)
NORMAL_EXIT = "cli._exit_now = lambda exit_code: None"


def _seconds(patch: str, arguments: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, "-c", RUN.format(patch=patch or "pass"), *arguments]
    run = measure(command, env=env, cwd=Path(__file__).resolve().parents[1])
    if run.returncode != 0:
        sys.exit(f"{arguments[0]} failed:\n{run.stderr[-3000:]}")
    return run.seconds


def compare(name: str, patch: str, arguments: list[str], rounds: int, scratch: Path) -> dict:
    """Seconds of the command with the trick and without it, alternating, and the median
    saving."""
    with_trick, without = [], []
    for round_ in range(rounds):
        for patched, times in (("", with_trick), (patch, without)):
            env = {"MALARIA_DATA_DIR": str(scratch / f"{name}-{round_}-{bool(patched)}")}
            times.append(round(_seconds(patched, arguments, env), 2))
    result = {
        "with_trick_seconds": with_trick,
        "without_seconds": without,
        "median_saving_seconds": round(
            statistics.median(without) - statistics.median(with_trick), 2
        ),
    }
    print(name, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tricks-") as scratch:
        scratch = Path(scratch)
        result = {
            "benchmark": "tricks",
            "machine": {"cpus": os.cpu_count()},
            "skip_interpreter_teardown": compare(
                "teardown", NORMAL_EXIT, ["variants", "--json"], args.rounds, scratch
            ),
        }
    save("tricks", result)


if __name__ == "__main__":
    main()
