"""Where a task run's time goes against a local server: each call of a flow of trivial
sequential tasks, timed at its steps in both processes (one clock: perf_counter is the system's
monotonic clock, shared by the processes of a machine).

    .venv/bin/python bench/call_timeline.py [--tasks 1500] [--rounds 3] [--old TREE]

Per call (a task run makes two: create-and-start, then its final state), the median of:

- call: from the SDK's calls stream's `call` to its return (the answer message unwrapped);
- to server: from the SDK's handing the request to its calls stream until the server read it
  off ExecuteStream (the SDK's sender thread, gRPC both sides, the network, the event loop's
  wake-up);
- in group: from there until its group committed (the orchestrator's work and the commit, the
  wait for the group to run);
- to answer: until the answer is handed back to gRPC by the stream's handler;
- back: until the SDK's caller had the answer (gRPC both sides, the SDK's reader thread, the
  caller's wake-up);

and the SDK's own work between two calls (the engine, the requests built, the answers read). The
steps are timed by wrapping our own functions in the two processes (`CallStream.call`,
`stream_request`, `CallsStream._take`, `_decided`, `answers`), so a change of those names needs
this script changed too. With `--old`, another checkout (e.g. `git worktree add --detach
/tmp/old <commit>`) is timed alternating with this one, its client/ and service/ under the same
interpreter.

Figures (2026-12-02, main at 85b5769, load 6-7 on 2 cores, 1,500 tasks, medians of 3 rounds,
us): a call 712 = to server 223 + in group 279 + to answer 13 + back 177 (the rest, the request
wrapped and queued: 20); the SDK's work between calls 130. In the same minutes the bare transport
(bench/transport_floor.py) made a stream round trip in 172-197 us, about 90 each way: each gRPC
leg of a task run's call takes twice that, and the group (the orchestrator's work, one commit)
takes 40% of a call.

Where the CPU goes, per task run (the same day, load 4-11; /proc per thread, 2,000 tasks, 6
rounds): the SDK's main thread 0.25-0.35 ms, the threads of gRPC's blocking client for the calls
stream 0.26-0.48 ms (the channel's event thread 0.10-0.16, the thread sending the requests
0.11-0.19, the SDK's reader 0.06-0.13; gRPC's core 0.07-0.12 more); the server's event loop
0.69-0.85 ms, of which 0.42 in the groups (the orchestrator, SQLite, the API layer's decoding,
checks and encoding: that layer alone 44 us, timed in-process with the orchestrator's answers
canned) and 0.2 in the kernel (per task 36 pwrite and 12 fcntl, SQLite's WAL frames and locks,
and 10 epoll_wait); its other threads 0.17-0.2.

Measured and not adopted (each within the spread of the checkout it changed):
- the SDK's answers handed to their callers by the stream's response deserializer (run on gRPC's
  event thread), the reader thread only asking for the next message: 8 rounds alternating, a
  call 635 us against 626, back 158 against 168 but to server 197 against 185 (the reader now
  asks for the next message when the caller sends, on the way of the request);
- the SDK setting the interpreter's switch interval to the server's 0.5 ms: client and
  transport 384 us a call against 398 (4 rounds);
- on the server (its event loop's CPU per task run, a bare client sending the SDK's two calls,
  3,000 tasks, rounds alternating): without the errors interceptor 0.750 and 0.820 ms against
  0.750 and 0.793; without the log follower's asks 0.753 and 0.730; the stream's calls run in
  one coroutine with their group at once (no CallsStream, no call_soon) 0.803 and 0.727
  against 0.737 and 0.700; uvloop 0.740, 0.683, 0.667 against 0.770, 0.673, 0.693;
- gRPC options on the bare transport (round trip, 3 rounds each): grpc.http2.bdp_probe off
  190, 205, 183 us and grpc.enable_retries off 204, 198, 191 against 162, 182, 162; the
  server's own options and keepalives 185, 168, 208 against 164, 195, 191;
- a unary call per message instead of the stream (bench/transport_floor.py and a variant
  counting the server's CPU): the SDK's threads save their hand-offs, but the server spends
  217-460 us of CPU a call against 70-167 on the stream.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+) ")

# The server, its steps timed: `marks[call_id]` gets "read", "decided" and "answered".
SERVER = """
import json, os, signal, sys, time
from stateward_service import calls_stream

clock = time.perf_counter
marks = {}
take, decided, answers = (
    calls_stream.CallsStream._take, calls_stream.CallsStream._decided,
    calls_stream.CallsStream.answers,
)

def timed_take(self, request):
    marks[request.call_id] = {"read": clock()}
    return take(self, request)

def timed_decided(self, request, began, outcome):
    marks[request.call_id]["decided"] = clock()
    return decided(self, request, began, outcome)

async def timed_answers(self):
    async for response in answers(self):
        marks[response.call_id]["answered"] = clock()
        yield response

calls_stream.CallsStream._take = timed_take
calls_stream.CallsStream._decided = timed_decided
calls_stream.CallsStream.answers = timed_answers

def dump(*_):
    with open(os.environ["BENCH_MARKS"], "w") as out:
        json.dump(marks, out)
    os._exit(0)

signal.signal(signal.SIGUSR2, dump)
sys.argv = ["stateward", *sys.argv[1:]]
from stateward.cli import main
main()
"""

# The SDK, its calls timed: `marks[call_id]` gets "called", "sent" and "returned".
CLIENT = """
import json, os, sys, threading, time
from stateward import _transport, flow, task

clock = time.perf_counter
marks = {}
current = threading.local()
call, stream_request = _transport.CallStream.call, _transport.stream_request

def timed_stream_request(call_id, method, request):
    message = stream_request(call_id, method, request)
    current.call_id = call_id
    marks[call_id] = {"called": current.called, "sent": clock()}
    return message

def timed_call(self, method, request, timeout):
    current.called = clock()
    answer = call(self, method, request, timeout)
    marks[current.call_id]["returned"] = clock()
    return answer

_transport.stream_request = timed_stream_request
_transport.CallStream.call = timed_call

def plain(i):
    return i

step = task(plain)

@flow
def measured(n):
    for i in range(n):
        step(i)

measured(50)  # warm up: imports, the connection, the calls stream
marks.clear()
measured(int(sys.argv[1]))
with open(os.environ["BENCH_MARKS"], "w") as out:
    json.dump(marks, out)
"""

STEPS = (("to server", "sent", "read"), ("in group", "read", "decided"),
         ("to answer", "decided", "answered"), ("back", "answered", "returned"))  # fmt: skip


def one_round(tree: Path, tasks: int) -> dict[str, float]:
    """Medians (µs) of each step per call, of the whole call, and of the SDK's work between
    calls, for a flow of `tasks` tasks with `tree`'s SDK and server."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        env = {
            **os.environ,
            "PYTHONPATH": f"{tree / 'client'}:{tree / 'service'}",
            "STATEWARD_HOME": str(work),
            "STATEWARD_LOGGING_LEVEL": "WARNING",
        }
        log = work / "server.log"
        with open(log, "wb") as output:
            server = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(SERVER), "server", "start", "--port", "0",
                 "--db", str(work / "bench.db"), "--no-ui"],
                stdout=output, stderr=subprocess.STDOUT,
                env={**env, "BENCH_MARKS": str(work / "server.json")},
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (found := LISTENING.search(log.read_text(errors="replace"))):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.1)
            subprocess.run(
                [sys.executable, "-c", textwrap.dedent(CLIENT), str(tasks)],
                env={
                    **env,
                    "STATEWARD_API_URL": f"127.0.0.1:{found.group(2)}",
                    "BENCH_MARKS": str(work / "client.json"),
                },
                check=True,
            )
        finally:
            server.send_signal(signal.SIGUSR2)
            server.wait(timeout=60)
        client = json.loads((work / "client.json").read_text())
        served = json.loads((work / "server.json").read_text())
    calls = [{**marks, **served[key]} for key, marks in client.items() if key in served]
    calls.sort(key=lambda marks: marks["called"])
    figures = {
        label: statistics.median(marks[end] - marks[start] for marks in calls) * 1e6
        for label, start, end in (("call", "called", "returned"), *STEPS)
    }
    figures["SDK between calls"] = statistics.median(
        (after["called"] - before["returned"]) * 1e6 for before, after in itertools.pairwise(calls)
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, help="another checkout, timed alternating")
    args = parser.parse_args()
    trees = {"this": HERE}
    if args.old is not None:
        trees["old"] = args.old.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            figures = one_round(tree, args.tasks)
            results[name].append(figures)
            shown = ", ".join(f"{label} {value:.0f}" for label, value in figures.items())
            print(f"round {round_ + 1} {name}: {shown} (us)", flush=True)
    print(f"median of {args.rounds} rounds, us per call (range)")
    for name, rounds in results.items():
        for label in rounds[0]:
            values = [figures[label] for figures in rounds]
            print(
                f"  {name:<5} {label:<18} {statistics.median(values):6.0f}"
                f"  ({min(values):.0f}-{max(values):.0f})"
            )


if __name__ == "__main__":
    main()
