"""`stateward/__init__.py` is the whole public API: this test pins it, so a change to it is a
decision, not an accident."""

from __future__ import annotations

import importlib

import pytest

import stateward
from tests.support import ROOT

README = ROOT / "README.md"

PUBLIC = {
    "AsyncClient", "AwaitingRetry", "Cancelled", "CancelledRun", "Cancelling", "Client",
    "Completed", "Crashed", "CrashedRun", "Failed", "FailedRun", "Flow", "FlowRun", "Late",
    "OrchestrationAborted", "Paused", "Pending", "ResultTooLarge", "Retrying", "Running",
    "Scheduled", "State", "StateType", "StatewardError", "StatewardFuture", "StatewardFutureList",
    "Task", "TaskRun", "Transition", "allow_failure", "cache_policies", "exponential_backoff",
    "flow", "get_client", "get_run_context", "get_run_logger", "pause_flow_run", "quote",
    "resume_flow_run", "runtime", "tags", "task", "task_input_hash", "unmapped", "wait",
}  # fmt: skip


def test_the_public_api_is_pinned():
    assert set(stateward.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(stateward, name) is not None


def test_code_written_for_the_reference_imports_the_same_names():
    from stateward import flow, task  # the seed's `from prefect import flow, task`
    from stateward.tasks import exponential_backoff, task_input_hash

    assert callable(flow) and callable(task)
    assert stateward.exponential_backoff is exponential_backoff
    assert stateward.task_input_hash is task_input_hash


def test_the_reference_module_paths_hold_the_same_objects():
    """`from prefect.X import Y` becomes `from stateward.X import Y`: each module path of the
    reference's examples that Stateward has gives the object `stateward` itself exports."""
    import stateward.cache_policies
    import stateward.context
    import stateward.exceptions
    import stateward.flow_runs
    import stateward.flows
    import stateward.futures
    import stateward.input
    import stateward.logging
    import stateward.logging.loggers
    import stateward.runtime
    import stateward.states
    import stateward.task_runners
    import stateward.tasks
    import stateward.utilities.annotations

    same = {
        stateward.logging.get_run_logger: stateward.get_run_logger,
        stateward.logging.loggers.get_run_logger: stateward.get_run_logger,
        stateward.logging.loggers.disable_run_logger: stateward.logging.disable_run_logger,
        stateward.logging.loggers.get_logger: stateward.logging.get_logger,
        # Prefect 3 keeps Prefect 2's default runner under its old name, as this same class.
        stateward.task_runners.ConcurrentTaskRunner: stateward.task_runners.ThreadPoolTaskRunner,
        stateward.context.get_run_context: stateward.get_run_context,
        stateward.context.tags: stateward.tags,
        stateward.flow_runs.pause_flow_run: stateward.pause_flow_run,
        stateward.flow_runs.resume_flow_run: stateward.resume_flow_run,
        stateward.flows.flow: stateward.flow,
        stateward.flows.Flow: stateward.Flow,
        stateward.tasks.task: stateward.task,
        stateward.tasks.Task: stateward.Task,
        stateward.futures.wait: stateward.wait,
        stateward.states.State: stateward.State,
        stateward.states.Completed: stateward.Completed,
        stateward.states.StateType: stateward.StateType,
        stateward.utilities.annotations.unmapped: stateward.unmapped,
        stateward.utilities.annotations.allow_failure: stateward.allow_failure,
        stateward.utilities.annotations.quote: stateward.quote,
        stateward.exceptions.TerminationSignal: stateward._signals.TerminationSignal,
        stateward.cache_policies: stateward.cache_policies,
        stateward.runtime: stateward.runtime,
    }
    for there, here in same.items():
        assert there is here, there
    for name in (
        "as_completed", "resolve_futures_to_results", "resolve_futures_to_states",
    ):  # fmt: skip
        assert callable(getattr(stateward.futures, name))
    assert issubclass(stateward.input.RunInput, object)
    assert stateward.task_runners.ThreadPoolTaskRunner is not None
    for name in (
        "CancelledRun", "CrashedRun", "FailedRun", "FlowPauseTimeout", "FlowRunWaitTimeout",
        "MappingLengthMismatch", "MappingMissingIterable", "MissingContextError",
        "MissingResult", "NotPausedError", "ParameterBindError", "ParameterTypeError",
        "PausedRun", "TerminationSignal", "UnfinishedRun", "UpstreamTaskError",
    ):  # fmt: skip
        assert isinstance(getattr(stateward.exceptions, name), type), name


def test_the_version_is_the_installed_distributions():
    """`stateward.__version__`, as the reference's `prefect.__version__`: the version the
    installed package's metadata gives, read on first use (`import stateward` stays cheap)."""
    from importlib.metadata import version

    assert stateward.__version__ == version("stateward")
    assert "__version__" in dir(stateward)


def test_a_module_of_the_reference_that_stateward_leaves_out_says_what_to_use_instead():
    """`from prefect.artifacts import ...` ported to `stateward.artifacts` is one line saying
    that Stateward leaves it out and what to do instead (README's "Differences from the
    reference", which names each such module), not a bare "No module named"."""
    from stateward._left_out import LEFT_OUT

    with pytest.raises(ImportError) as raised:
        from stateward.artifacts import create_markdown_artifact  # noqa: F401
    message = str(raised.value)
    assert message == (
        "Stateward does not provide stateward.artifacts (the reference's prefect.artifacts): "
        "log the content with get_run_logger(), or return it as the run's result "
        "(README: 'Differences from the reference')"
    )
    assert "\n" not in message
    with pytest.raises(ImportError, match=r"prefect.blocks.*secret manager"):
        importlib.import_module("stateward.blocks.system")
    with pytest.raises(ImportError, match=r"prefect.runtime.deployment.*no deployments"):
        importlib.import_module("stateward.runtime.deployment")
    with pytest.raises(ImportError, match=r"prefect.variables"):
        from stateward import variables  # noqa: F401
    with pytest.raises(AttributeError, match=r"prefect.transactions"):
        stateward.transactions  # noqa: B018
    with pytest.raises(ImportError, match=r"prefect.serve\): run the script yourself"):
        from stateward import serve  # noqa: F401
    with pytest.raises(ImportError, match=r"prefect.suspend_flow_run\): use pause_flow_run"):
        from stateward import suspend_flow_run  # noqa: F401
    with pytest.raises(ImportError, match=r"from stateward import get_client"):
        importlib.import_module("stateward.client.orchestration")
    with pytest.raises(ImportError, match=r"stateward.runs.FlowRun and TaskRun"):
        importlib.import_module("stateward.client.schemas.objects")
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'stateward.no_such_module'"):
        importlib.import_module("stateward.no_such_module")
    differences = README.read_text().split("## Differences from the reference")[1]
    for module in LEFT_OUT:
        assert f"`prefect.{module}" in differences.split("\n## ")[0], module


def test_a_method_of_the_reference_s_flows_and_tasks_that_stateward_leaves_out_says_so():
    """`my_flow.serve()`, `my_flow.deploy()`, `my_task.delay()`: one line saying what to do
    instead; any other missing attribute is Python's usual AttributeError."""

    @stateward.flow
    def served() -> None:
        pass

    @stateward.task
    def delayed() -> None:
        pass

    with pytest.raises(AttributeError) as raised:
        served.serve(name="nightly")
    assert str(raised.value) == (
        "Stateward's Flow has no serve() (the reference's): run the script yourself (cron, "
        "systemd, a CI job) and point every process at one `stateward server start` with "
        "STATEWARD_API_URL to see all runs (README: 'Differences from the reference')"
    )
    with pytest.raises(AttributeError, match=r"Flow has no visualize\(\).*stateward ui"):
        served.visualize()
    with pytest.raises(AttributeError, match=r"Task has no delay\(\).*\.submit\(\)"):
        delayed.delay()
    with pytest.raises(AttributeError, match=r"^'Task' object has no attribute 'deploy'$"):
        delayed.deploy()
    with pytest.raises(AttributeError, match=r"^'Flow' object has no attribute 'no_such'$"):
        served.no_such  # noqa: B018


def test_a_name_of_a_reference_module_that_stateward_leaves_out_says_what_to_use_instead():
    """`from prefect.states import Suspended` ported: one ImportError line (the usual "cannot
    import name" would say nothing), for each name README's Differences list; any other
    missing name is Python's usual error. ObjectNotFound is NotFound, under the reference's
    name."""
    from stateward._left_out import LEFT_OUT_NAMES
    from stateward.exceptions import NotFound, ObjectNotFound

    with pytest.raises(ImportError) as raised:
        from stateward.states import Suspended  # noqa: F401
    assert str(raised.value) == (
        "Stateward does not provide stateward.states.Suspended (the reference's "
        "prefect.states.Suspended): use pause_flow_run, whose process waits for the resume "
        "(README: 'Differences from the reference')"
    )
    with pytest.raises(ImportError, match=r"environment variables named STATEWARD_"):
        from stateward.settings import PREFECT_API_URL  # noqa: F401
    with pytest.raises(ImportError, match=r"prefect.flow_runs.suspend_flow_run\): use pause"):
        from stateward.flow_runs import suspend_flow_run  # noqa: F401
    with pytest.raises(ImportError, match=r"prefect.exceptions.Abort\): the engine raises "):
        from stateward.exceptions import Abort  # noqa: F401
    with pytest.raises(ImportError, match=r"prefect.exceptions.Pause\): a paused flow run "):
        from stateward.exceptions import Pause  # noqa: F401
    with pytest.raises(ImportError, match=r"^cannot import name 'no_such_name'"):
        from stateward.states import no_such_name
    with pytest.raises(ImportError, match=r"^cannot import name 'no_such_name'"):
        from stateward.exceptions import no_such_name  # noqa: F401
    assert not hasattr(stateward.states, "no_such_name")
    assert ObjectNotFound is NotFound
    differences = README.read_text().split("## Differences from the reference")[1]
    section = differences.split("\n## ")[0]
    for names in LEFT_OUT_NAMES.values():
        for name in names:
            assert name in section, name
