"""Fan-out tasks: run `train-variant` flow runs on a work pool's workers (GPU hosts)."""

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.deployments import run_deployment

from cnn.errors import InputError

VARIANT_FLOW = "train-variant"


class NoDeploymentError(InputError, LookupError):
    """No deployment of the per-variant flow targets the asked work pool."""


@task(name="find-variant-deployment", retries=2, retry_delay_seconds=5)
def find_variant_deployment(work_pool: str) -> str:
    """The `flow/deployment` name of the `train-variant` deployment on `work_pool`."""
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[VARIANT_FLOW])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
        )
    if not deployments:
        raise NoDeploymentError(
            f"work pool {work_pool!r} has no deployment of flow {VARIANT_FLOW!r}; "
            f"deploy one (prefect deploy --name {VARIANT_FLOW} --pool {work_pool})"
        )
    return f"{VARIANT_FLOW}/{deployments[0].name}"


@task(name="run-variant-deployment", task_run_name="run-variant-deployment {parameters[variant]}")
def run_variant_deployment(deployment: str, tags: list[str], parameters: dict) -> str:
    """Run one variant on the pool (its flow run tagged `tags`) and wait for it; return its
    flow run id."""
    flow_run = run_deployment(
        deployment, parameters=parameters, tags=tags, timeout=None, poll_interval=2
    )
    get_run_logger().info(
        "%s on %s: flow run %s ended %s",
        parameters["variant"],
        deployment,
        flow_run.name,
        flow_run.state.name,
    )
    if not flow_run.state.is_completed():
        raise RuntimeError(
            f"variant {parameters['variant']!r} (flow run {flow_run.name}) ended "
            f"{flow_run.state.name}: {flow_run.state.message}"
        )
    return str(flow_run.id)
