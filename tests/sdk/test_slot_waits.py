"""A task run waiting for a tag concurrency slot starts as soon as the slot frees, not when the
WAIT's delay (1 s by default) is over: against a server and in the embedded default."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from stateward.client import Client
from tests.sdk.conftest import python
from tests.support import running_server

TASKS, SECONDS = 4, 0.5
# The most a next task may start after the previous one ended. Before the change the gap was the
# rest of the 1 s delay: 0.5 s with tasks of 0.5 s (measured 0.50-0.56 s); after it, a few ms.
# The bound leaves room for a loaded 2-core machine.
GAP_BOUND = 0.25

PROGRAM = f"""
import json, time
from stateward import flow, task

spans = []

@task(tags=["io"])
def work(i):
    start = time.monotonic()
    time.sleep({SECONDS})
    spans.append((start, time.monotonic()))

@flow
def limited():
    for future in [work.submit(i) for i in range({TASKS})]:
        future.result()

if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["embedded"]:
        from stateward._embedded import get_client
        get_client().create_concurrency_limit("io", 1)
    began = time.monotonic()
    limited()
    total = time.monotonic() - began
    spans.sort()
    print(json.dumps({{"total": total, "spans": spans}}))
"""


def run_limited(env: dict[str, str], *args: str) -> tuple[float, list[float], str]:
    """The program's total time, the gaps between one task's end and the next one's start,
    and its stderr (its log)."""
    result = python(
        f"import sys; sys.argv[1:] = {list(args)!r}\n{PROGRAM}",
        env={"STATEWARD_LOGGING_LEVEL": "DEBUG", **env},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    spans = out["spans"]
    assert len(spans) == TASKS
    gaps = [after[0] - before[1] for before, after in itertools.pairwise(spans)]
    return out["total"], gaps, result.stderr


def check(total: float, gaps: list[float], log: str) -> None:
    assert all(gap >= 0 for gap in gaps), gaps  # one slot: never two at once
    assert max(gaps) < GAP_BOUND, gaps
    assert total < TASKS * SECONDS + GAP_BOUND * TASKS + 1.0, total
    waits = [line for line in log.splitlines() if "waiting for a concurrency slot" in line]
    assert waits, log
    assert "DEBUG" in waits[0] and "tag 'io' is full (1 of 1 running)" in waits[0], waits


def test_a_waiting_task_starts_when_the_slot_frees_against_a_server(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:  # the default slot wait: 1 s
        with Client(server.target) as client:
            client.create_concurrency_limit("io", 1)
        total, gaps, log = run_limited({"STATEWARD_API_URL": server.target})
    check(total, gaps, log)


def test_a_waiting_task_starts_when_the_slot_frees_embedded(tmp_path: Path) -> None:
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    total, gaps, log = run_limited(env, "embedded")
    check(total, gaps, log)
