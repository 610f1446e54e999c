"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stateward.v1 import orchestration_pb2_grpc
from tests.support import (
    POSTGRES_URL_VARIABLE,
    PostgresDatabases,
    ServerProcess,
    running_server,
)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server per backend for the tests that only need some server: they create their
    own runs, and run once on a SQLite file and once on a PostgreSQL database."""
    folder = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        with running_server(folder) as process:
            yield process
        return
    url = request.getfixturevalue("postgres_databases").create()
    process = ServerProcess(url, log_path=folder / "server.log").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def stub(server: ServerProcess) -> orchestration_pb2_grpc.OrchestrationServiceStub:
    return server.stub()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, on a new database."""
    with running_server(tmp_path) as process:
        yield process


# Files whose tests run on one pytest-xdist worker together: the Ray tests share the one Ray
# instance a test process starts (tests/sdk/conftest.py's ray_instance).
_RUN_TOGETHER = {
    "tests/sdk/test_ray_runner.py": "ray",
    "tests/sdk/test_task_runners.py": "ray",
}


# The group handed out first: the longest, a sixth of the suite's time (450 s of 3,080 at load
# 20). Handed out in its turn, it began at three quarters of a run and ran alone at the end.
_FIRST_GROUP = "ray"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers with --dist loadgroup, and each test file's
    tests are one group: a file runs whole on one worker, in its order, as it runs alone (its
    module- and session-scoped servers, clusters and Ray made once there). The groups are
    handed out in the order of the files (--no-loadscope-reorder), _FIRST_GROUP first."""
    groups: dict[str, str] = {}
    for item in items:
        path = item.nodeid.partition("::")[0]  # the file, relative to the rootdir
        groups[item.nodeid] = _RUN_TOGETHER.get(path, path)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if config.getoption("dist", "no") != "no":
        items.sort(key=lambda item: groups[item.nodeid] != _FIRST_GROUP)  # stable: in order


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


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Fresh PostgreSQL databases on the server STATEWARD_TEST_POSTGRES_URL names (.ci/run
    starts one). Without it the PostgreSQL tests are skipped, and under CI=true they fail."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, "")
    if not url:
        why = (
            f"{POSTGRES_URL_VARIABLE} is not set: no PostgreSQL server to test against "
            "(.ci/postgres starts one and prints its URL)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and the PostgreSQL tests cannot run: {why}")
        pytest.skip(why)
    try:
        databases = PostgresDatabases(url)
    except Exception as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, and PostgreSQL at {POSTGRES_URL_VARIABLE} fails: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL_VARIABLE} cannot be reached: {error}")
    yield databases
    databases.drop_all()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new empty database of each backend: a SQLite file's path or a PostgreSQL URL (dropped
    in the background once the test is over)."""
    if request.param == "sqlite":
        yield str(tmp_path / "shared.db")
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    yield url
    databases.release(url)
