"""The reference's modules and methods that Stateward leaves out, each with what to use instead.

`import stateward.artifacts` (ported from `import prefect.artifacts`) raises an ImportError that
says so in one line, instead of a bare "No module named". `stateward/__init__.py` installs
a finder last on `sys.meta_path`, which is asked only about modules nothing else found and
imports this module only then; flows and tasks ask it about a method they do not have
(`my_flow.serve()`). README's "Differences from the reference" says the same.
"""

from __future__ import annotations

from typing import NoReturn

_DEPLOY = (
    "run the script yourself (cron, systemd, a CI job) and point every process at one "
    "`stateward server start` with STATEWARD_API_URL to see all runs"
)
_RUN_HERE = (
    "the script's own process runs the flow; its tasks can go to a process pool, Dask or Ray "
    "(task_runner=)"
)
_HOOKS = (
    "use on_failure and the other state change hooks, or follow transitions with "
    "`stateward watch` or the WatchTransitions RPC"
)
_SETTINGS = "use environment variables or your secret manager"
_RESULTS = (
    "results are stored on the state or in result_storage files; read them with state.result()"
)

# A module of the reference, as under `prefect.` -> what to do instead. (Names that `prefect`
# itself exports are here too: `from stateward import serve` imports `stateward.serve` as a
# submodule once the package has no such attribute, and so meets the finder.)
LEFT_OUT: dict[str, str] = {
    "artifacts": "log the content with get_run_logger(), or return it as the run's result",
    "aserve": _DEPLOY,
    "automations": _HOOKS,
    "blocks": _SETTINGS,
    "client.orchestration": (
        "import get_client from stateward itself (`from stateward import get_client`)"
    ),
    "client.schemas": (
        "the run records are stateward.runs.FlowRun and TaskRun, StateType is in "
        "stateward.states, and the client's listings take their filters as arguments "
        "(list_flow_runs(flow_names=, state_types=, tags=...))"
    ),
    "concurrency": (
        "use tag concurrency limits: `stateward concurrency-limit create TAG N` and "
        "@task(tags=[TAG])"
    ),
    "deploy": _DEPLOY,
    "deployments": _DEPLOY,
    "events": _HOOKS,
    "infrastructure": _RUN_HERE,
    "results": _RESULTS,
    "runner": _RUN_HERE,
    "runtime.deployment": "there are no deployments: " + _DEPLOY,
    "schedules": _DEPLOY,
    "serializers": _RESULTS,
    "serve": _DEPLOY,
    "suspend_flow_run": "use pause_flow_run, whose process waits for the resume",
    "task_worker": "call or .submit() the task inside a flow",
    "testing": (
        "set STATEWARD_HOME to a temporary folder for the test session (the embedded default "
        "then uses a fresh database there)"
    ),
    "transactions": (
        "tasks called inside a task hold their cache entries until it completes (see the "
        "cache policies in the README)"
    ),
    "variables": _SETTINGS,
    "workers": _RUN_HERE,
}


_NO_TASK_WORKERS = "call or .submit() the task inside a flow"
_CONFIGURE = (
    "Stateward's settings are environment variables named STATEWARD_... "
    "(`stateward server start --help` lists the server's)"
)

# A command group of the reference's CLI (`prefect deployment ls`) that Stateward's leaves out
# -> what to do instead.
LEFT_OUT_COMMANDS: dict[str, str] = {
    "artifact": LEFT_OUT["artifacts"],
    "automation": _HOOKS,
    "block": _SETTINGS,
    "cloud": "there is no hosted service: run `stateward server start` where your runs report",
    "config": _CONFIGURE,
    "dashboard": "`stateward ui` opens the web view",
    "deploy": _DEPLOY,
    "deployment": _DEPLOY,
    "event": _HOOKS,
    "flow": (
        "flows are the decorated functions, with no records of their own; list their runs "
        "with `stateward flow-run ls --flow NAME`"
    ),
    "global-concurrency-limit": LEFT_OUT["concurrency"],
    "init": _DEPLOY,
    "profile": _CONFIGURE,
    "profiles": _CONFIGURE,
    "task": _NO_TASK_WORKERS,
    "variable": _SETTINGS,
    "work-pool": _RUN_HERE,
    "work-queue": _RUN_HERE,
    "worker": _RUN_HERE,
}

# A method of the reference's flows and tasks that Stateward's leave out -> what to do instead.
LEFT_OUT_METHODS: dict[str, dict[str, str]] = {
    "Flow": {
        "deploy": _DEPLOY,
        "from_source": _DEPLOY,
        "serve": _DEPLOY,
        "to_deployment": _DEPLOY,
        "visualize": (
            "see the run's task runs on its page in the web view (`stateward ui`), or "
            "`stateward flow-run inspect RUN`"
        ),
    },
    "Task": {"apply_async": _NO_TASK_WORKERS, "delay": _NO_TASK_WORKERS, "serve": _NO_TASK_WORKERS},
}


_RUNS_MAKE_STATES = (
    "a run's code returns its own state (Completed(...), Failed(data=exc)) or raises, and "
    "Stateward makes the rest"
)
_PAUSE_INSTEAD = "use pause_flow_run, whose process waits for the resume"
_INPUT_INSTEAD = "pause the run with wait_for_input= and resume it with the input"

# A name of a reference module that Stateward's module at the same path leaves out -> what to
# do instead.
LEFT_OUT_NAMES: dict[str, dict[str, str]] = {
    "exceptions": {
        "Abort": (
            "the engine raises OrchestrationAborted where the reference raises Abort (the "
            "server answered ABORT), an Exception that reaches the caller"
        ),
        "Pause": (
            "a paused flow run waits in its own process (pause_flow_run) and is never ended "
            "to be run again; a Paused state's result raises PausedRun"
        ),
        "PrefectSignal": (
            "the BaseExceptions raised in a run's code are RunInterrupted (RunTimedOut, "
            "RunCancelled) and TerminationSignal"
        ),
    },
    "flow_runs": {"suspend_flow_run": _PAUSE_INSTEAD},
    "input": {"receive_input": _INPUT_INSTEAD, "send_input": _INPUT_INSTEAD},
    "states": {
        "AwaitingConcurrencySlot": _RUNS_MAKE_STATES,
        "StateGroup": _RUNS_MAKE_STATES,
        "Suspended": _PAUSE_INSTEAD,
        "exception_to_crashed_state": _RUNS_MAKE_STATES,
        "exception_to_failed_state": _RUNS_MAKE_STATES,
        "return_value_to_state": _RUNS_MAKE_STATES,
    },
}


def missing_name(module: str, name: str) -> NoReturn:
    """For a module's `__getattr__`: raise ImportError saying what to do instead when `name`
    is one the reference's module at that path has and Stateward's leaves out (a PREFECT_...
    setting, in `stateward.settings`), else Python's usual AttributeError. An ImportError, so
    that `from stateward.states import Suspended` shows it: `from ... import` replaces an
    AttributeError by "cannot import name"."""
    short = module.removeprefix("stateward.")
    instead = LEFT_OUT_NAMES.get(short, {}).get(name)
    if short == "settings" and name.startswith("PREFECT_"):
        instead = (
            "Stateward's settings are environment variables named STATEWARD_...: set or read "
            "them in os.environ"
        )
    if instead is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    raise ImportError(
        f"Stateward does not provide {module}.{name} (the reference's prefect.{short}.{name}): "
        f"{instead} (README: 'Differences from the reference')",
        name=module,
    )


def missing_command(name: str) -> str | None:
    """The one-line message for `stateward NAME` when NAME is a command group of the
    reference's CLI that Stateward leaves out (`deployment`, `work-pool`...); None for any
    other name."""
    instead = LEFT_OUT_COMMANDS.get(name)
    if instead is None:
        return None
    return (
        f"Stateward leaves out the reference's `prefect {name}` commands: {instead} "
        "(README: 'Differences from the reference')"
    )


def missing_method(obj: object, name: str) -> AttributeError:
    """The error for `<a Flow or Task>.<name>` that does not exist: what to do instead when
    the reference has the method, else Python's own (with its "Did you mean")."""
    kind = type(obj).__name__
    instead = LEFT_OUT_METHODS.get(kind, {}).get(name)
    if instead is None:
        return AttributeError(f"{kind!r} object has no attribute {name!r}", name=name, obj=obj)
    return told(
        f"Stateward's {kind} has no {name}() (the reference's): {instead} "
        "(README: 'Differences from the reference')",
        obj,
    )


def told(message: str, obj: object) -> AttributeError:
    """An AttributeError of `obj` whose `message` says already what to use instead, so that
    Python adds no "Did you mean: ...?" to it (which would name a method of `obj` merely
    spelt alike). Python 3.11 computes that line from the error's `name` and `obj`, which an
    attribute lookup sets when both are unset; with `obj` set and no `name`, neither the
    interpreter's display nor the traceback module adds one."""
    return AttributeError(message, obj=obj)


def refusal(name: str) -> str | None:
    """The one-line message for importing `name` (e.g. "stateward.artifacts") when it is a
    module of the reference that Stateward leaves out; None for any other name."""
    module = name.removeprefix("stateward.")
    instead = LEFT_OUT.get(module) if module != name else None
    if instead is None:
        return None
    return (
        f"Stateward does not provide {name} (the reference's prefect.{module}): {instead} "
        "(README: 'Differences from the reference')"
    )


def refuse(name: str) -> None:
    """Raise ImportError with the `refusal` of `name`, if it has one. A plain ImportError, not
    ModuleNotFoundError: `from stateward import artifacts` then shows it too (the import
    system turns a ModuleNotFoundError of that name into "cannot import name")."""
    message = refusal(name)
    if message is not None:
        raise ImportError(message, name=name)
