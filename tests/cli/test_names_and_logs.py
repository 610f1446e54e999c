"""Kind 7 of the first day: run names are unique within a flow run (a task's runs are `task-0`,
`task-1`, ..., a mapped run takes its map index), a subflow's task run shows the child run; a
failure is logged at ERROR with its traceback once, a retry at WARNING; at INFO a run says one
line, at its end, and DEBUG tells every state change; prints in hooks are attributed to their
run, for flows as for tasks."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.cli.conftest import run, stateward

PROGRAM = """
from stateward import flow, task

def hook(subject, run, state):
    print(f"hook of {run.name} sees {state.name}")

@task
def square(x):
    return x * x

@task(retries=1, retry_delay_seconds=0)
def bad():
    raise ValueError("broken on purpose")

@task(log_prints=True, on_completion=[hook])
def chatty():
    print("in the task")

@flow(flow_run_name="child-run")
def child():
    return 1

@flow(flow_run_name="named-run", log_prints=True, on_completion=[hook])
def names():
    square.map(range(4)).result()
    square(5)
    child()
    chatty()

@flow(flow_run_name="failing-run")
def failing():
    bad()

names()
state = failing(return_state=True)
print("final", state.name)
"""


def test_names_logs_and_hook_prints(home: Path) -> None:
    done = run([sys.executable, "-c", PROGRAM], home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "final Failed\n"
    log = done.stderr

    # Names: the map index, then the next free number; the subflow's task run after its flow.
    listing = stateward(home, "task-run", "ls", "--flow-run", "named-run", env={"COLUMNS": "200"})
    names = re.findall(r"^│ [0-9a-f]{8} │ \S+ +│ (\S+) ", listing.stdout, flags=re.M)
    assert sorted(names) == ["chatty-0", "child-0", *[f"square-{i}" for i in range(5)]]
    inspected = stateward(home, "flow-run", "inspect", "named-run", env={"COLUMNS": "200"})
    child_row = next(line for line in inspected.stdout.splitlines() if "child-0" in line)
    assert re.search(r"[0-9a-f]{8} child-run", child_row)  # the child flow run it stands for

    # Levels: a retry is a warning; the failure an error with its traceback, shown once.
    assert re.search(r"WARNING \| Task run 'bad-0' \(bad\) - Retrying: ValueError", log)
    assert re.search(r"ERROR   \| Task run 'bad-0' \(bad\) - Failed: ValueError", log)
    assert re.search(r"ERROR   \| Flow run 'failing-run' \(failing\) - Failed", log)
    assert log.count("Traceback (most recent call last)") == 1
    assert log.index("Traceback") > log.index("Task run 'bad-0' (bad) - Failed")
    assert "INFO    | Task run 'bad-0' (bad) - Failed" not in log

    # At INFO, one line per run, at its end: not its Pending and Running.
    for run_name in ("square-0", "square-4", "chatty-0"):
        lines = [line for line in log.splitlines() if f"Task run '{run_name}'" in line]
        story = [line for line in lines if " - in the task" not in line and "hook of" not in line]
        assert len(story) == 1 and story[0].endswith("- Completed"), lines
    assert "- Running" not in log and "- Pending" not in log
    assert re.search(r"INFO    \| Flow run 'named-run' \(names\) - Completed", log)

    # Prints: in code and in hooks, each attributed to its own run.
    assert "| Task run 'chatty-0' - in the task" in log
    assert "| Task run 'chatty-0' - hook of chatty-0 sees Completed" in log
    assert "| Flow run 'named-run' - hook of named-run sees Completed" in log


def test_debug_tells_every_state_change(home: Path) -> None:
    program = """
from stateward import flow, task

@task
def square(x):
    return x * x

@flow(flow_run_name="told-run")
def told():
    return square(3)

print(told())
"""
    done = run([sys.executable, "-c", program], home, env={"STATEWARD_LOGGING_LEVEL": "DEBUG"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "9\n"
    for label in ("Task run 'square-0' (square)", "Flow run 'told-run' (told)"):
        told = re.findall(rf"(DEBUG|INFO) +\| {re.escape(label)} - (\w+)", done.stderr)
        assert told == [("DEBUG", "Pending"), ("DEBUG", "Running"), ("INFO", "Completed")], told


def test_a_failures_traceback_shows_the_users_code_not_the_sdks(home: Path) -> None:
    program = """
from stateward import flow, task

def parse(text):
    return int(text)

@task
def load(text):
    return parse(text)

@flow(flow_run_name="trimmed-run")
def pipeline():
    return load("x")

pipeline(return_state=True)
"""
    done = run([sys.executable, "-c", program], home)
    assert done.returncode == 0, done.stderr
    shown = done.stderr[done.stderr.index("Traceback") :]
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\w+)$', shown, flags=re.M)
    assert frames == [("<string>", "load"), ("<string>", "parse")], shown
    assert "ValueError: invalid literal for int() with base 10: 'x'" in shown
    # The run's logs, read back from the database, show the same.
    logs = stateward(home, "flow-run", "logs", "trimmed-run", env={"COLUMNS": "200"})
    assert logs.returncode == 0, logs.stderr
    assert re.findall(r'  File "([^"]+)", line \d+, in (\w+)', logs.stdout) == frames
    # At DEBUG, everything is shown, the engine's frames too.
    debug = run([sys.executable, "-c", program], home, env={"STATEWARD_LOGGING_LEVEL": "DEBUG"})
    assert re.search(r'File "[^"]*stateward[/\\]_engine\.py"', debug.stderr), debug.stderr


ESCAPING = """
import sys
from stateward import flow, task

def parse(text):
    return int(text)

@task
def load(text):
    return parse(text)

@flow
def pipeline():
    try:
        load("x")
    except ValueError as error:
        raise RuntimeError("could not load") from error

if len(sys.argv) > 1:  # the application's own hook
    sys.excepthook = lambda kind, error, tb: print(f"own hook: {error}", file=sys.stderr)
pipeline()
"""


def printed_tracebacks(stderr: str) -> str:
    """What Python printed as the script ended: what follows the run's Failed line and the
    traceback logged with it (which ends with the exception's line)."""
    logged = stderr[stderr.rindex("Failed: RuntimeError: could not load") :]
    return logged.split("\nRuntimeError: could not load\n", 1)[1]


def test_a_flows_exception_escaping_the_script_is_printed_with_the_users_frames(
    home: Path,
) -> None:
    """The traceback Python prints when a flow's exception escapes the script leaves the SDK's
    frames out, as the run's logged one does: it went through flows.py, _flow_engine.py,
    _engine.py, _interrupt.py and _outcomes.py, twice (the flow's call and the task's). The
    exception's chain, type and message stay; at DEBUG every frame is printed, and an
    application's own sys.excepthook is left alone."""
    done = run([sys.executable, "-c", ESCAPING], home)
    assert done.returncode == 1, done.stderr
    printed = printed_tracebacks(done.stderr)
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', printed, flags=re.M)
    assert frames == [
        ("<string>", "pipeline"),  # the cause: load("x") in the flow, then the task's code
        ("<string>", "load"),
        ("<string>", "parse"),
        ("<string>", "<module>"),  # the exception: the script's call, then the flow's raise
        ("<string>", "pipeline"),
    ], printed
    assert "ValueError: invalid literal for int() with base 10: 'x'" in printed
    assert "The above exception was the direct cause of the following exception:" in printed
    assert printed.rstrip().endswith("RuntimeError: could not load"), printed
    debug = run([sys.executable, "-c", ESCAPING], home, env={"STATEWARD_LOGGING_LEVEL": "DEBUG"})
    assert debug.returncode == 1
    shown = printed_tracebacks(debug.stderr)
    assert re.search(r'File "[^"]*stateward[/\\]_flow_engine\.py"', shown), shown
    own = run([sys.executable, "-c", ESCAPING, "own"], home)
    assert own.returncode == 1
    assert printed_tracebacks(own.stderr).strip() == "own hook: could not load", own.stderr


def test_an_unreachable_servers_error_escaping_the_script_shows_the_users_call_alone(
    home: Path,
) -> None:
    """The SDK's own exceptions say what happened in their message: the printed traceback keeps
    the user's frames and leaves out the SDK's that raised it (ten frames, from the flow's call
    to the transport's check, before)."""
    program = "from stateward import flow\n\n@flow\ndef pipeline():\n    return 1\n\npipeline()\n"
    done = run([sys.executable, "-c", program], home, env={"STATEWARD_API_URL": "127.0.0.1:1"})
    assert done.returncode == 1, done.stderr
    frames = re.findall(r'^  File "([^"]+)", line \d+, in (\S+)$', done.stderr, flags=re.M)
    assert frames == [("<string>", "<module>")], done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("stateward.exceptions.ServerUnavailable: cannot reach"), done.stderr
