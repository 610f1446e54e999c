"""SetState latency and throughput against a real server subprocess.

    .venv/bin/python bench/set_state.py [--calls 3000] [--writers 8]

The baseline, measured in the same run on the same server and channel, is the health check: a
unary call that does no work. SetState's cost is reported as a ratio to it, since these machines
are shared and noisy.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
