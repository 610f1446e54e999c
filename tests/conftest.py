"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A test marked `required_in_ci` may skip where its tools are missing (saying which), but
    never under CI=true, where CI has installed them: there a skip is a failure."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("CI") == "true"
        and item.get_closest_marker("required_in_ci") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where it must run: {reason}"
