"""Fixtures of the integration tests that talk to an S3-compatible server."""

import pytest

from tests.integration.servers import seaweed_s3


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> dict[str, str]:
    """A SeaweedFS server for the module (`servers.seaweed_s3`): what an S3 client needs."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as (env, _):
        yield env


@pytest.fixture
def s3(s3_server, monkeypatch) -> dict[str, str]:
    """This process talks to the module's server, as a user's shell with AWS_* set does."""
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server
