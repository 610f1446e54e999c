"""The server's instructions per task run: a flow of trivial sequential tasks against a local
server that runs under callgrind (valgrind), the counters zeroed before a flow and dumped after.

    .venv/bin/python bench/server_instructions.py [--old TREE] [--small 30] [--large 130]
        [--rounds 1] [--client]
        [--call set-state|health]

Wall and CPU times move with the load of a shared machine; the instructions a process executes
in user space barely do, so this is the figure to compare two commits by (with `--old`, a
checkout of another commit, e.g. `git worktree add --detach /tmp/old <commit>`, whose client/
and service/ sources run under the same interpreter, in the same round). What it does not
count: the kernel's side (system calls, the switches between threads and processes), which
`bench/task_overhead.py` sees in its CPU and "waits" figures. With `--call`, the client makes
unary calls in place of task runs (SetState: RUNNING on a running flow run, as
`bench/set_state.py`; or the health check, a call that does no work), and the figures are per
call.

Per task run: (instructions of a flow of `--large` tasks - those of a flow of `--small`) /
(large - small), so that the flow's own start and end cancel out. By thread: the event loop's
(the first thread: gRPC's handlers, the group commits, the follower's asks) and the others
(gRPC's I/O threads, the checkpointer, the follower's thread). With `--client`, the SDK's
process runs under callgrind too and its figure is printed beside (its main thread and the
others: the calls stream's reader...).

Callgrind makes the server about fifty times slower, so a round takes several minutes, and
work the event loop does on a timer rather than per call is over-counted as much: the log
follower asks SQLite's change signal every 5 ms while writes go on, about once per task run at
full speed but some fifty times per task run here (and with 613dc10 an ask polls only when
none of the process's own transactions looked since the last one: here most do). Compare the
main thread's per-call work with this; count such timer work at full speed (statements,
`bench/task_overhead.py`).

Figures (one round, load 18-27 on 2 cores): 613dc10 with f5ef7c4's answers against 87ce0c3,
the server 2841.9K instructions per task run against 2774.3K (the main thread 2407.7K against
2417.0K, the other threads 434.2K against 357.2K, not explained: gRPC's threads and the
checkpointer's wakes move with timing too). In-process and at full speed, the statements of a
task run's two calls went from 16.19 to 15.18 (the follower's connection's from 1.07 to 0.08).

The spread (2026-12-02, 3decf77, load 2-10): the same server's main thread counted 1856K to 1992K
per task run over 5 rounds, so two checkouts differing by less than about 5% are not told apart in
a few rounds. Where a task run's (two calls on the stream) ~1.9M go on the main thread: the same
two calls run in-process through the gRPC API's methods (their bytes decoded, the group's
transaction, the answers encoded; no gRPC; at ecf5105) counted 1364K, and through the in-process
API (no protobuf, as the embedded default) 1110K; SQLite's C is about 290K of it (the server's
count). So gRPC, asyncio and the stream's and group's plumbing take about 0.6M (0.3M a call; a
whole unary health check costs 631K, a unary SetState 1221K: `--call`). Measured and not adopted,
each within that spread of the checkout it changed (main thread, this against old): answers sent
with `context.write` and requests read with `context.read()` instead of the async generators of the
handler and the errors interceptor (3 rounds: 1932K/1895K, 1895K/1856K, 1877K/1992K); a lone call's
group run at once instead of `call_soon` when no other callback is ready to join it (2 rounds:
1916K/1932K, 1995K/1966K). At full speed (1,000 tasks, /proc per thread), the SDK sending its calls
as unary RPCs instead of on the stream cost the server more (main thread user CPU 1.52-1.58 ms per
task run against 1.15 ms) and saved its own helper threads (main thread 0.90 ms, no helpers,
against 0.54-0.58 ms plus about 0.4 ms of three helper threads); the SDK's caller reading the
stream's answers itself instead of its reader thread did not shorten a task run (4.6, 5.6, 4.6 ms
against 3.6, 4.6, 5.3 ms, load 7-10).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub
from task_instructions import FLOW  # this folder is the script's: first on sys.path

HERE = Path(__file__).resolve().parent.parent

# With --call: `measured(n)` makes n unary calls of one kind in place of task runs, so that a
# call's own cost is counted apart from a task run's: SetState (RUNNING on a running flow run, as
# bench/set_state.py does), or the health check (a call that does no work: gRPC's own share).
UNARY = """
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stateward.v1 import orchestration_pb2 as pb, orchestration_pb2_grpc, runs_pb2, states_pb2

channel = grpc.insecure_channel(os.environ["STATEWARD_API_URL"])
if CALL == "set-state":
    RUNNING = states_pb2.State(type=states_pb2.STATE_TYPE_RUNNING)
    stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
    run = stub.CreateFlowRun(
        pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="bench", state=RUNNING))
    ).flow_run
    call, request = stub.SetState, pb.SetStateRequest(run_id=run.id, state=RUNNING)
else:
    call, request = health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest()

def measured(n):
    for _ in range(n):
        call(request)
"""
CALLS = ("set-state", "health")

DRIVER = """
measured(20)  # warm up: imports, the connection, the calls stream
print("ready", flush=True)
for line in sys.stdin:
    if int(line) == 0:
        break
    measured(int(line))
    print("done", flush=True)
"""

LISTENING = re.compile(r"listening on (\S+):(\d+) ")


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}"]


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def dump(pid: int, out: Path) -> dict[int, int]:
    """Dump `pid`'s counters; the instructions of each of its threads since the last zero."""
    before = set(out.parent.glob(out.name + ".*"))
    control(pid, "--dump")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = sorted(set(out.parent.glob(out.name + ".*")) - before)
        if new:
            time.sleep(1.0)  # every thread's file is written
            new = sorted(set(out.parent.glob(out.name + ".*")) - before)
            counts = {}
            for path in new:
                text = path.read_text(errors="replace")
                thread = re.search(r"^thread: (\d+)", text, re.M)
                summary = re.search(r"^summary: (\d+)", text, re.M)
                if thread and summary:
                    counts[int(thread.group(1))] = int(summary.group(1))
            return counts
        time.sleep(0.1)
    raise SystemExit(f"callgrind wrote no dump for process {pid}")


def measure(tree: Path, small: int, large: int, client_too: bool, program: str) -> dict[str, float]:
    """Instructions per task run (or call) of the server (and the client) with `tree`'s
    sources, `program` (FLOW, or UNARY with its CALL) the client's."""
    work = Path(tempfile.mkdtemp(prefix="server-instructions-"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree / 'client'}:{tree / 'service'}",
        "STATEWARD_HOME": str(work),
        "STATEWARD_LOGGING_LEVEL": "WARNING",
    }
    server_out, client_out = work / "server.cg", work / "client.cg"
    log = work / "server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [*callgrind(server_out), sys.executable, "-m", "stateward", "server", "start",
             "--port", "0", "--db", str(work / "bench.db"), "--no-ui"],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work,
        )  # fmt: skip
    client: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 600
        while not (found := LISTENING.search(log.read_text(errors="replace"))):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        # The SDK gives a server 5 s to answer its first call; one under callgrind on a loaded
        # machine may take longer to answer its first health check: wait for that here.
        address = f"127.0.0.1:{found.group(2)}"
        with grpc.insecure_channel(address) as channel:
            HealthStub(channel).Check(HealthCheckRequest(), timeout=600, wait_for_ready=True)
        command = [sys.executable, "-c", program + DRIVER]
        client = subprocess.Popen(
            [*callgrind(client_out), *command] if client_too else command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "STATEWARD_API_URL": address},
        )
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise SystemExit("the client failed")
        counts: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        for tasks in (small, large):
            control(server.pid, "--zero")
            if client_too:
                control(client.pid, "--zero")
            client.stdin.write(f"{tasks}\n")
            client.stdin.flush()
            if client.stdout.readline().strip() != "done":
                raise SystemExit("the client failed")
            counts[tasks] = (
                dump(server.pid, server_out),
                dump(client.pid, client_out) if client_too else {},
            )
        client.stdin.write("0\n")
        client.stdin.flush()
        client.wait()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        server.terminate()
        server.wait()
    per_task = large - small
    figures: dict[str, float] = {}
    for index, who in enumerate(("server", "client")):
        few, many = counts[small][index], counts[large][index]
        if not many:
            continue
        loop = (many.get(1, 0) - few.get(1, 0)) / per_task
        total = (sum(many.values()) - sum(few.values())) / per_task
        figures[who] = total
        figures[f"{who} main thread"] = loop
        figures[f"{who} other threads"] = total - loop
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, help="another checkout, measured alternating")
    parser.add_argument("--small", type=int, default=30)
    parser.add_argument("--large", type=int, default=130)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--client", action="store_true", help="count the SDK's process too")
    parser.add_argument("--call", choices=CALLS, help="unary calls of this kind, not task runs")
    args = parser.parse_args()
    trees = {"this": HERE}
    if args.old is not None:
        trees["old"] = args.old.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            program = f"CALL = {args.call!r}\n{UNARY}" if args.call else FLOW
            figures = measure(tree, args.small, args.large, args.client, program)
            results[name].append(figures)
            shown = ", ".join(f"{key} {value / 1e3:.1f}K" for key, value in figures.items())
            print(f"round {round_ + 1} {name} ({tree}): {shown}", flush=True)
    print(f"instructions per {'call' if args.call else 'task run'} (range over the rounds)")
    for name, rounds in results.items():
        for key in rounds[0]:
            values = [figures[key] for figures in rounds]
            line = f"{min(values) / 1e3:.1f}K-{max(values) / 1e3:.1f}K"
            print(f"  {name:<5} {key:<22} {sum(values) / len(values) / 1e3:8.1f}K  ({line})")
    if "old" in results:
        this, old = results["this"], results["old"]
        ratio = [t["server"] / o["server"] for t, o in zip(this, old, strict=True)]
        print(f"server this/old: {sum(ratio) / len(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})")


if __name__ == "__main__":
    main()
