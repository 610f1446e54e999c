"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stateward.v1 import orchestration_pb2_grpc
from tests.support import ServerProcess, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the tests that only need some server: they create their own runs."""
    with running_server(tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture
def stub(server: ServerProcess) -> orchestration_pb2_grpc.OrchestrationServiceStub:
    return server.stub()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, on a new database."""
    with running_server(tmp_path) as process:
        yield process
