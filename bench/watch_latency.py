"""Delivery latency of WatchTransitions: from SetState answered to subscriber received.

    .venv/bin/python bench/watch_latency.py [--transitions 300] [--rate 100]

For 1, 10 and 100 subscribers (spread over up to 4 subscriber processes, each holding its
streams on one asyncio channel), a writer proposes `--transitions` states at `--rate` per second.
Each subscriber notes when it received each transition; the writer notes when each SetState was
answered; both use the system-wide monotonic clock. The baseline, measured in the same run, is a
health check round trip (a unary call that does no work).
"""

from __future__ import annotations

import argparse
import asyncio
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

MARKER = "bench-marker"


def subscriber_process(target: str, streams: int, ready, results) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)

            async def follow() -> dict[str, int]:
                call = stub.WatchTransitions(pb.WatchTransitionsRequest())
                await call.initial_metadata()
                ready.put(1)
                seen: dict[str, int] = {}
                async for message in call:
                    now = time.monotonic_ns()
                    if message.transition.flow_name == MARKER:
                        call.cancel()
                        return seen
                    seen[message.transition.to_state.id] = now
                return seen

            for seen in await asyncio.gather(*(follow() for _ in range(streams))):
                results.put(seen)

    asyncio.run(main())


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def measure(server: ServerProcess, subscribers: int, transitions: int, rate: float) -> list[float]:
    processes = min(subscribers, 4)
    ready: multiprocessing.Queue[int] = multiprocessing.Queue()
    results: multiprocessing.Queue[dict[str, int]] = multiprocessing.Queue()
    shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    workers = [
        multiprocessing.Process(target=subscriber_process, args=(server.target, n, ready, results))
        for n in shares
    ]
    for worker in workers:
        worker.start()
    for _ in range(subscribers):
        ready.get(timeout=60)
    stub = server.stub()
    run = new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING)
    request = pb.SetStateRequest(
        run_id=run.id, state=states_pb2.State(type=states_pb2.STATE_TYPE_RUNNING)
    )
    answered: dict[str, int] = {}
    interval = 1.0 / rate
    next_at = time.monotonic()
    for _ in range(transitions):
        next_at += interval
        answer = stub.SetState(request)
        answered[answer.state.id] = time.monotonic_ns()
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    new_flow_run(stub, flow_name=MARKER)
    latencies: list[float] = []
    for _ in range(subscribers):
        seen = results.get(timeout=120)
        assert set(answered) <= set(seen), "a subscriber missed transitions"
        latencies.extend((seen[state_id] - at) / 1e6 for state_id, at in answered.items())
    for worker in workers:
        worker.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "bench.db").start()
        try:
            health = health_pb2_grpc.HealthStub(server.channel())
            for _ in range(200):
                health.Check(health_pb2.HealthCheckRequest())
            base = []
            for _ in range(1000):
                began = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest())
                base.append((time.perf_counter() - began) * 1e3)
            b50 = statistics.median(base)
            print(f"baseline: unary round trip p50 {b50:.3f} ms")
            print(f"{args.transitions} transitions at {args.rate:g}/s")
            for subscribers in (1, 10, 100):
                latencies = measure(server, subscribers, args.transitions, args.rate)
                p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
                print(
                    f"{subscribers:>3} subscriber(s): p50 {p50:6.2f} ms ({p50 / b50:5.1f}x)"
                    f"   p99 {p99:6.2f} ms ({p99 / b50:5.1f}x)   max {max(latencies):6.2f} ms"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
