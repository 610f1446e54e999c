"""SetState latency and throughput against a real server subprocess.

    .venv/bin/python bench/set_state.py [--calls 3000] [--writers 8]
    .venv/bin/python bench/set_state.py --in-flight 64 [--rounds 3] [--old ../other-checkout]

The baseline, measured in the same run on the same server and channel, is the health check: a
unary call that does no work. SetState's cost is reported as a ratio to it, since these machines
are shared and noisy.

With `--in-flight N`, it measures throughput instead with N calls in flight at all times (spread
over a few client processes, each keeping its share in flight on one asyncio channel, each
SetState on a run of its own): health checks then SetStates on a fresh server each round, with
the server's and the clients' CPU time per call (with `--stream`, also SetStates sent on one
ExecuteStream per client process, on both servers with `--old`); with `--old`, another
checkout's server alternates with this one's, round by round. It prints each round, then
medians and ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc, states_pb2
from tests.support import ServerProcess, new_flow_run

RUNNING = states_pb2.State(type=states_pb2.STATE_TYPE_RUNNING)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def timed(call, request, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call(request)
        samples.append(time.perf_counter() - start)
    return samples


def writer(target: str, run_id: str, seconds: float, counts) -> None:
    stub = orchestration_pb2_grpc.OrchestrationServiceStub(grpc.insecure_channel(target))
    request = pb.SetStateRequest(run_id=run_id, state=RUNNING)
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        stub.SetState(request)
        done += 1
    counts.put(done)


def throughput(target: str, run_ids: list[str], seconds: float) -> float:
    # Spawned, not forked: a forked child would inherit this process's gRPC channel and fail.
    spawning = multiprocessing.get_context("spawn")
    counts: multiprocessing.Queue[int] = spawning.Queue()
    workers = [
        spawning.Process(target=writer, args=(target, run_id, seconds, counts))
        for run_id in run_ids
    ]
    for worker in workers:
        worker.start()
    total = sum(counts.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total / seconds


def in_flight_client(target: str, what: str, run_ids: list[str], seconds: float, counts) -> None:
    """Keep one call in flight per run id (for the health check: as many) for `seconds`."""

    async def go() -> int:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
            deadline = time.perf_counter() + seconds
            done = 0

            if what == "stream":  # every call of this process on one ExecuteStream
                return await over_one_stream(stub, run_ids, deadline)

            async def loop(run_id: str) -> None:
                nonlocal done
                if what == "check":
                    call, request = health.Check, health_pb2.HealthCheckRequest()
                else:
                    call, request = stub.SetState, pb.SetStateRequest(run_id=run_id, state=RUNNING)
                while time.perf_counter() < deadline:
                    await call(request)
                    done += 1

            began = time.process_time()
            await asyncio.gather(*(loop(run_id) for run_id in run_ids))
            return done, time.process_time() - began

    counts.put(asyncio.run(go()))


async def over_one_stream(stub, run_ids: list[str], deadline: float) -> tuple[int, float]:
    """One SetState in flight per run id, all on one ExecuteStream, until `deadline`."""
    began = time.process_time()
    requests: asyncio.Queue[pb.ExecuteStreamRequest | None] = asyncio.Queue()
    by_id = dict(enumerate(run_ids))

    def call(call_id: int) -> pb.ExecuteStreamRequest:
        request = pb.SetStateRequest(run_id=by_id[call_id], state=RUNNING)
        return pb.ExecuteStreamRequest(call_id=call_id, set_state=request)

    async def send():
        while (request := await requests.get()) is not None:
            yield request

    for call_id in by_id:
        requests.put_nowait(call(call_id))
    done, open_calls = 0, len(by_id)
    async for answer in stub.ExecuteStream(send()):
        assert answer.WhichOneof("result") == "set_state", answer
        done += 1
        if time.perf_counter() < deadline:
            requests.put_nowait(call(answer.call_id))
        else:
            open_calls -= 1
            if not open_calls:
                requests.put_nowait(None)
    return done, time.process_time() - began


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_flight(
    target: str, what: str, run_ids: list[str], seconds: float, processes: int, server_pid: int
) -> tuple[float, float, float]:
    """Calls per second with len(run_ids) in flight, spread over `processes` clients, and the
    server's and the clients' CPU microseconds per call."""
    spawning = multiprocessing.get_context("spawn")
    counts: multiprocessing.Queue[tuple[int, float]] = spawning.Queue()
    shares = [run_ids[i::processes] for i in range(processes)]
    workers = [
        spawning.Process(target=in_flight_client, args=(target, what, share, seconds, counts))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    server_before = cpu_seconds(server_pid)
    results = [counts.get() for _ in workers]
    server_cpu = cpu_seconds(server_pid) - server_before
    for worker in workers:
        worker.join()
    total = sum(done for done, _ in results)
    client_cpu = sum(cpu for _, cpu in results)
    return total / seconds, server_cpu / total * 1e6, client_cpu / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    parser.add_argument(
        "--stream", action="store_true", help="also SetStates on one ExecuteStream per process"
    )
    args = parser.parse_args()
    if args.in_flight:
        measure_in_flight(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "bench.db").start()
        try:
            channel = server.channel()
            stub = server.stub()
            health = health_pb2_grpc.HealthStub(channel)
            run = new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING)
            set_state = pb.SetStateRequest(run_id=run.id, state=RUNNING)
            check = health_pb2.HealthCheckRequest()
            timed(stub.SetState, set_state, 300)  # warm up both paths
            timed(health.Check, check, 300)
            base, measured = [], []
            for _ in range(5):  # interleave, so noise hits both alike
                base += timed(health.Check, check, args.calls // 5)
                measured += timed(stub.SetState, set_state, args.calls // 5)
            b50, s50 = statistics.median(base), statistics.median(measured)
            for label, samples in (("health check (baseline)", base), ("SetState", measured)):
                p50, p99 = statistics.median(samples) * 1e6, percentile(samples, 0.99) * 1e6
                print(f"{label:<24} p50 {p50:7.0f} us   p99 {p99:7.0f} us")
            print(f"SetState / baseline      p50 {s50 / b50:7.2f}x")
            one = throughput(server.target, [run.id], args.seconds)
            runs = [
                new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING).id
                for _ in range(args.writers)
            ]
            many = throughput(server.target, runs, args.seconds)
            print(f"throughput, 1 writer     {one:7.0f} SetState/s")
            print(
                f"throughput, {args.writers} writers    {many:7.0f} SetState/s ({many / one:.2f}x)"
            )
        finally:
            server.stop()


def in_flight_round(tree: Path | None, args: argparse.Namespace) -> dict[str, float]:
    """One server (of `tree`, another checkout, or this one): health checks, then SetStates,
    with `args.in_flight` calls in flight."""
    env = {}
    if tree is not None:
        env["PYTHONPATH"] = f"{tree / 'client'}{os.pathsep}{tree / 'service'}"
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "bench.db", env=env).start(timeout=60)
        try:
            assert server.process is not None
            pid = server.process.pid
            stub = server.stub()
            runs = [
                new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING).id
                for _ in range(args.in_flight)
            ]
            check, check_cpu, check_clients = in_flight(
                server.target, "check", runs, args.seconds, args.processes, pid
            )
            writes, write_cpu, write_clients = in_flight(
                server.target, "set_state", runs, args.seconds, args.processes, pid
            )
            streamed, stream_cpu, stream_clients = (0.0, 0.0, 0.0)
            if args.stream:  # (another checkout given with --old must have ExecuteStream)
                streamed, stream_cpu, stream_clients = in_flight(
                    server.target, "stream", runs, args.seconds, args.processes, pid
                )
        finally:
            server.stop()
    return {
        "check/s": check,
        "SetState/s": writes,
        "ratio": writes / check,
        "server us/check": check_cpu,
        "server us/SetState": write_cpu,
        "client us/check": check_clients,
        "client us/SetState": write_clients,
        **(
            {
                "streamed/s": streamed,
                "stream ratio": streamed / check,
                "server us/streamed": stream_cpu,
                "client us/streamed": stream_clients,
            }
            if args.stream
            else {}
        ),
    }


def measure_in_flight(args: argparse.Namespace) -> None:
    trees: dict[str, Path | None] = {"this": None}
    if args.old:
        trees["old"] = args.old.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            figures = in_flight_round(trees[name], args)
            results[name].append(figures)
            shown = "  ".join(f"{key} {value:.2f}" for key, value in figures.items())
            print(f"round {round_ + 1} {name}: {shown}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name, rounds in results.items():
        print(f"--- {name}, {args.in_flight} in flight (median of {len(rounds)} rounds, range)")
        for key in rounds[0]:
            values = [figures[key] for figures in rounds]
            print(
                f"  {key:<20} {statistics.median(values):9.2f}  "
                f"({min(values):.2f}-{max(values):.2f})"
            )


if __name__ == "__main__":
    main()
