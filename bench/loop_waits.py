"""Where the server's event loop waits while streams resume: what delays a health Check.

    .venv/bin/python bench/loop_waits.py [--old TREE] [--rounds 3] [--size 1000000]

The server runs with a monitor on its event loop (this file, as a wrapper of `stateward server
start`): a task sleeps 1 ms over and over and notes how late it woke, which is how long a call
arriving then (a health Check) waits before the loop looks at it. Each late wake is split by the
loop thread's own counters (/proc/self/task/TID/schedstat, Linux) into the CPU the thread ran
meanwhile (its own work: callbacks, collections), the time it was runnable but had no core
(the machine's run queue: other processes, or the server's other threads, on the cores) and
the rest, when it was blocked though its timer was due (waiting for the interpreter's lock a
reader thread holds). Collections (the thread, generation, CPU) and callbacks that ran over
1.5 ms of CPU are noted too.

On the database of `--size` transitions that bench/resume.py builds (under /tmp/stateward-resume),
`--concurrent` streams resume at once from spread cursors as bench/resume.py's concurrent round
does, with a health checker calling every millisecond; then as long with no stream (idle). For
each: the slowest Check, the loop's latest wakes with their split, the sums of the split, the
longest collections and callbacks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# --- the wrapper, in the server's process ---------------------------------------------------------


def _serve_monitored(out: Path, argv: list[str]) -> None:
    """`stateward server start ARGV` with the monitor; SIGUSR1 appends what it saw since the
    last to `out` (a JSON line) and starts afresh."""
    import asyncio.events

    wakes: list[tuple[float, float, float]] = []  # late by, CPU, run queue (ms)
    collections: list[tuple[float, int, str]] = []  # CPU (ms), generation, thread
    callbacks: list[tuple[float, str]] = []  # CPU (ms), what
    started = [0.0]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            spent = (time.thread_time() - started[0]) * 1e3
            collections.append((spent, info["generation"], threading.current_thread().name))

    gc.callbacks.append(on_collection)
    run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        began = time.thread_time()
        run(self)
        spent = (time.thread_time() - began) * 1e3
        if spent > 1.5:
            callbacks.append((spent, repr(self._callback)[:120]))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]

    def report(*_: object) -> None:
        late = sorted(wakes, reverse=True)
        figures = {
            "wakes": len(late),
            "latest": [[round(x, 2) for x in wake] for wake in late[:8]],
            "late ms": sum(w[0] for w in late),
            "cpu ms": sum(w[1] for w in late),
            "run queue ms": sum(w[2] for w in late),
            "collections ms": sum(c[0] for c in collections),
            "longest collections": sorted(collections, reverse=True)[:5],
            "longest callbacks": sorted(callbacks, reverse=True)[:5],
        }
        with out.open("a") as file:
            file.write(json.dumps(figures) + "\n")
        wakes.clear()
        collections.clear()
        callbacks.clear()

    signal.signal(signal.SIGUSR1, report)

    async def monitor() -> None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"

        def counters() -> tuple[int, int]:
            with open(path) as file:
                ran, queued, _ = file.read().split()
            return int(ran), int(queued)

        while True:
            ran, queued = counters()
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            late = (time.perf_counter() - began) * 1e3 - 1.0
            ran_after, queued_after = counters()
            wakes.append((late, (ran_after - ran) / 1e6, (queued_after - queued) / 1e6))

    import stateward_service.server as server

    serve = server.serve

    async def monitored(*args: Any, **kwargs: Any) -> None:
        asyncio.get_running_loop().create_task(monitor())
        await serve(*args, **kwargs)

    server.serve = monitored  # type: ignore[assignment]
    sys.argv = ["stateward", *argv]
    runpy.run_module("stateward", run_name="__main__")


# --- the driver -----------------------------------------------------------------------------------


def one_round(tree: Path | None, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    import grpc
    import resume

    import tests.support as support
    from stateward.v1 import orchestration_pb2_grpc

    path = resume.database(args.folder, args.size)
    resume.warm(path)
    env = {"STATEWARD_QUICK_CHECK": "false", "LOOP_WAITS_OUT": str(out)}
    if tree is not None:
        env["PYTHONPATH"] = f"{tree / 'client'}{os.pathsep}{tree / 'service'}"
    server = support.ServerProcess(path, env=env, log_path=path.with_suffix(".log"))
    server.args = []
    popen = support.subprocess.Popen

    def wrapped(command: list[str], **kwargs: Any) -> Any:  # python -m stateward ... -> this file
        return popen([command[0], str(Path(__file__).resolve()), "--serve", *command[3:]], **kwargs)

    support.subprocess.Popen = wrapped  # type: ignore[attr-defined,assignment]
    try:
        server.start(timeout=600)
    finally:
        support.subprocess.Popen = popen  # type: ignore[attr-defined,assignment]
    assert server.process is not None
    pid = server.process.pid
    out.write_text("")

    def resumes() -> None:
        async def main() -> None:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
                step = max(1, (args.size - args.reads) // args.concurrent)
                await asyncio.gather(
                    *(resume._read(stub, i * step, args.reads) for i in range(args.concurrent))
                )

        asyncio.run(main())

    try:
        resume.replay_and_resume(server.target, pid, args.size, 20_000)  # warm
        took: list[float] = []

        def timed() -> None:
            began = time.perf_counter()
            resumes()
            took.append(time.perf_counter() - began)

        results = []
        os.kill(pid, signal.SIGUSR1)  # the monitor starts afresh
        for name, work in (("resuming", timed), ("idle", lambda: time.sleep(took[0]))):
            checks = resume.health_during(server.target, work)
            os.kill(pid, signal.SIGUSR1)  # what it saw in this window
            results.append({"window": name, "slowest check ms": max(checks)})
            deadline = time.monotonic() + 60
            while len(out.read_text().splitlines()) < len(results) + 1:
                if time.monotonic() > deadline:
                    raise SystemExit("the server's monitor did not report")
                time.sleep(0.1)
        lines = out.read_text().splitlines()
        for window, line in zip(results, lines[1:], strict=True):
            window |= json.loads(line)
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stateward-resume"))
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--reads", type=int, default=20_000)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    trees: dict[str, Path | None] = {"new": None}
    if args.old:
        trees["old"] = args.old.resolve()
    out = args.folder / "loop-waits.jsonl"
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            for figures in one_round(trees[name], args, out):
                print(f"round {round_ + 1} {name}: {json.dumps(figures)}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve_monitored(Path(os.environ["LOOP_WAITS_OUT"]), sys.argv[2:])
    else:
        main()
