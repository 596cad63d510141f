"""Engines a team already runs, driven through Prefect: the ingest's shards on a Dask cluster."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect_dask import DaskTaskRunner

from cnn.config import IngestConfig
from cnn.ingest.parallel import ordered_results
from cnn.ingest.shards import ShardJob, ShardMap, ShardResult, write_shard
from cnn.settings import settings
from tasks.retry import IO_RETRIES

CONNECT_TIMEOUT = "10s"
"""How long to wait for a Dask scheduler that does not answer."""
JOBS_AHEAD_PER_THREAD = 2
"""Shards submitted ahead per worker thread: every thread busy, pixels in flight bounded."""


class DaskUnavailableError(ConnectionError):
    """The Dask scheduler did not answer (retried like any connection that may come back)."""


@task(name="write-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def write_shard_task(job: ShardJob) -> ShardResult:
    """Read, decode, resize and write one shard's images, on whichever Dask worker runs it."""
    return write_shard(*job)


def shard_engine(config: IngestConfig) -> ShardMap | None:
    """Where the ingest's shards are written: the Dask cluster the config or
    `MALARIA_DASK_ADDRESS` names, else None (this host's worker processes)."""
    address = config.dask_address or settings().dask_address
    return shards_on_dask(address) if address else None


def shards_on_dask(address: str) -> ShardMap:
    """A `ShardMap` that writes each shard as a `write-shard` task run on the Dask cluster at
    `address`, through prefect-dask's `DaskTaskRunner` (connected only once there are shards
    to write). Dask reruns the shards of a worker it loses; a rerun rewrites the same file."""

    def map_shards(jobs: Iterator[ShardJob]) -> Iterator[ShardResult]:
        with _connected(address) as (runner, threads):
            get_run_logger().info(
                "Writing shards on Dask cluster %s (%d threads)", address, threads
            )

            def submit(job: ShardJob) -> PrefectFuture[ShardResult]:
                return runner.submit(write_shard_task, {"job": job})

            yield from ordered_results(submit, jobs, JOBS_AHEAD_PER_THREAD * max(threads, 1))

    return map_shards


@contextmanager
def _connected(address: str) -> Iterator[tuple[DaskTaskRunner, int]]:
    """prefect-dask's task runner on the scheduler at `address`, for the block, and the
    threads of the cluster's workers."""
    with ExitStack() as stack:  # leaves the runner however the block or the connection ends
        try:
            runner = stack.enter_context(
                DaskTaskRunner(address=address, client_kwargs={"timeout": CONNECT_TIMEOUT})
            )
            threads = sum(runner.client.nthreads().values())  # the client connects here
        except OSError as error:
            raise DaskUnavailableError(
                f"Dask scheduler {address!r} (--dask-address, MALARIA_DASK_ADDRESS) did not "
                f"answer: {error}"
            ) from error
        yield runner, threads
