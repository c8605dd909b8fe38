"""Fixtures of the distributed tests: Redis required, PostgreSQL used when it answers."""

from __future__ import annotations

import pytest
import tinker

from tests.conftest import LiveServer
from tests.distributed.training import STEPS, new_run, step


@pytest.fixture(scope="session")
def reference_losses(server: LiveServer) -> list[float]:
    """Per-step losses of the reference run, uninterrupted, on the embedded server."""
    client = tinker.ServiceClient(base_url=server.url, api_key=server.keys["alice"])
    training_client = new_run(client)
    return [step(training_client) for _ in range(STEPS)]
