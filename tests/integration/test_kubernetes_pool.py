"""The Kubernetes GPU pool, without a cluster: created from `kubernetes/gpu-pool.json` and
deployed to from `prefect.yaml` on a real Prefect server, then the job of a flow run rendered
by prefect-kubernetes' own job configuration, as its worker renders it before creating it."""

import asyncio
import json
import os
import subprocess

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from app.stack_settings import QUIET_ENVIRONMENT
from tests.integration.servers import BIN, REPO

pytestmark = pytest.mark.slow

POOL = "gpu-kubernetes"
DEPLOYMENT = "train-variant/train-variant-kubernetes"
SECRET_VALUE = "deployer-secret-4f1c"
"""A credential in the environment of whoever deploys: it must reach no pool, deployment or
job (pods read credentials from the Kubernetes secret)."""


def _prefect(*arguments: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        **QUIET_ENVIRONMENT,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "AWS_SECRET_ACCESS_KEY": SECRET_VALUE,
        "MLFLOW_TRACKING_PASSWORD": SECRET_VALUE,
    }
    return subprocess.run(
        [str(BIN / "prefect"), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def _rendered_job() -> tuple[dict, dict]:
    """A flow run of the deployment, as the UI's Run button makes it, and the Kubernetes job
    that the pool's worker would create for it."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(DEPLOYMENT)
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"dataset": "s3://malaria/data/datasets/d", "variant": "simple"},
        )
        pool = await client.read_work_pool(POOL)
        configuration = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            flow_run, client=client, work_pool=pool, worker_name="render-check"
        )
        return configuration.job_manifest, deployment.model_dump(mode="json")


def test_the_gpu_pool_renders_a_job_with_a_gpu_the_image_and_no_secret(prefect_harness):
    template = str(REPO / "kubernetes" / "gpu-pool.json")
    created = _prefect(
        "work-pool", "create", POOL, "--type", "kubernetes", "--base-job-template", template,
        "--overwrite",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect("--no-prompt", "deploy", "--name", "train-variant-kubernetes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    job, deployment = asyncio.run(_rendered_job())
    assert deployment["work_pool_name"] == POOL
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "malaria-cnn:gpu"
    assert container["envFrom"] == [{"secretRef": {"name": "malaria-credentials"}}]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["MALARIA_DATA_DIR"] == "s3://malaria/data"
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")
    assert env["PREFECT_API_URL"] == PREFECT_API_URL.value()  # the pod reports to the server
    assert "PREFECT__FLOW_RUN_ID" in env
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    rendered = json.dumps(job) + json.dumps(deployment)
    assert "hostPath" not in rendered and "volumes" not in pod  # storage by URI only
    assert SECRET_VALUE not in rendered
