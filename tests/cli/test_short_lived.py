"""Who runs the server's loops on the embedded default: a process that runs flows competes for
the leader lock for as long as it lives; a short command of the CLI (a listing, an inspect)
opens the home's database, answers and exits without ever taking it (it would sweep the whole
database just to exit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import environment, run
from tests.support import ROOT


def leader_pid(home: Path) -> int | None:
    """The process that took the home's leader lock last (its lock file names it)."""
    lock = home / "stateward.db.leader"
    words = lock.read_text().split() if lock.exists() else []
    return int(words[1]) if len(words) == 2 and words[0] == "pid" else None


def test_short_commands_never_take_the_leader_lock(home):
    for command in (["flow-run", "ls"], ["task-run", "ls"], ["concurrency-limit", "ls"]):
        process = subprocess.Popen(
            [sys.executable, "-m", "stateward", *command],
            env=environment(home),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
        assert leader_pid(home) != process.pid, f"stateward {' '.join(command)} led the loops"


PROGRAM = """
import os, time
from stateward import flow

@flow
def hello():
    return 1

hello()
deadline = time.monotonic() + 30
lock = os.path.join(os.environ["STATEWARD_HOME"], "stateward.db.leader")
while time.monotonic() < deadline:
    if os.path.exists(lock) and open(lock).read().split() == ["pid", str(os.getpid())]:
        print("leads")
        break
    time.sleep(0.05)
"""


def test_a_process_that_runs_flows_leads_the_loops(home):
    done = run([sys.executable, "-c", PROGRAM], home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leads"


EXITING = """
import threading, time
from stateward import flow

@flow
def hello():
    return 1

hello()
# The main thread ends here; this thread keeps the process alive past two of the leader
# loop's retries (one a second), after the interpreter has shut the worker threads down.
threading.Thread(target=time.sleep, args=(2.5,)).start()
"""


def test_a_process_whose_main_thread_ended_exits_without_leader_lock_warnings(home):
    """The leader loop went on trying after the interpreter had shut its worker threads down,
    and logged "cannot take the leader lock: cannot schedule new futures after shutdown" once a
    second until the process exited."""
    done = run([sys.executable, "-c", EXITING], home)
    assert done.returncode == 0, done.stderr
    assert "leader lock" not in done.stderr, done.stderr


EXITING_WITH_AN_EXECUTOR = """
import concurrent.futures, logging, threading
from stateward import flow

@flow
def hello():
    return 1

hello()
# At exit, the interpreter stops every executor's worker threads (the embedded event loop's
# too) and then joins them, this one included, before the main thread counts as ended. This
# thread holds the exit there until the leader loop has had its next go, which it reports.
heard = threading.Event()
class Heard(logging.Handler):
    def emit(self, record):
        heard.set()
leadership = logging.getLogger("stateward.leadership")
leadership.addHandler(Heard(logging.DEBUG))
leadership.setLevel(logging.DEBUG)
concurrent.futures.ThreadPoolExecutor(1).submit(heard.wait, 30)
"""


def test_a_process_exiting_while_an_executor_works_exits_without_leader_lock_warnings(home):
    """Seen once in about twenty scripts: at exit, Python stops the executors' worker threads
    (the embedded event loop's included) while the main thread still counts as alive, and a
    leader loop's try in that window logged "cannot take the leader lock: cannot schedule new
    futures after shutdown"."""
    done = run([sys.executable, "-c", EXITING_WITH_AN_EXECUTOR], home)
    assert done.returncode == 0, done.stderr
    assert "cannot take the leader lock" not in done.stderr, done.stderr
