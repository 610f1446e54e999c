"""The Ray task runner, where Ray is installed (it is not part of the dev extra: it is large).
A local Ray instance runs the tasks; they propose their own states to the session's server."""

from __future__ import annotations

import os

import pytest

from stateward import flow
from stateward.states import StateType
from tests.sdk.test_task_runners import failing, hooked, square_failing_once

ray = pytest.importorskip("ray")
from stateward.ray import RayTaskRunner  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_runner(sdk_server):
    ray.init(num_cpus=2, include_dashboard=False)
    yield RayTaskRunner()
    ray.shutdown()


def test_a_map_with_a_retry_runs_on_ray_workers(ray_runner, client, tmp_path) -> None:
    @flow(task_runner=ray_runner)
    def squares(folder: str) -> list[list[int]]:
        return square_failing_once.map(range(10), folder=folder).result()

    results = squares(str(tmp_path))
    assert [value for value, _ in results] == [x * x for x in range(10)]
    assert os.getpid() not in {pid for _, pid in results}


def test_hooks_and_failures_on_ray(ray_runner, client, tmp_path) -> None:
    @flow(task_runner=ray_runner)
    def mixed(folder: str) -> list[object]:
        good = hooked.submit(1, folder)
        bad = failing.submit(2)
        good.wait()
        bad.wait()
        return [good.state.type, bad.state.type]

    assert mixed(str(tmp_path)) == [StateType.COMPLETED, StateType.FAILED]
    assert int((tmp_path / "completed-1").read_text()) != os.getpid()
