"""Prefect pull steps: what a worker does before it loads a deployment's flow.

`prefect.yaml` names `set_project_directory` as every deployment's pull step, in place of the
absolute path of the host that ran `prefect deploy`: a worker on any host runs the flows from
its own checkout of the project.
"""

import os
from pathlib import Path

PROJECT_DIR_VARIABLE = "MALARIA_PROJECT_DIR"


def set_project_directory() -> dict[str, str]:
    """Enter this host's checkout: `$MALARIA_PROJECT_DIR` if the worker has it, else the
    checkout this package is installed from (`pip install -e .`)."""
    directory = Path(os.environ.get(PROJECT_DIR_VARIABLE) or Path(__file__).parents[1])
    if not (directory / "prefect.yaml").is_file():
        raise FileNotFoundError(
            f"{directory} is not a checkout of the project (no prefect.yaml): set "
            f"{PROJECT_DIR_VARIABLE} in the worker's environment to the checkout's path"
        )
    os.chdir(directory)
    return {"directory": str(directory.absolute())}
