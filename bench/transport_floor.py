"""The floor under a task run against a server: one gRPC round trip that does nothing.

    .venv/bin/python bench/transport_floor.py [--calls 3000] [--rounds 3] [--unix]

A task run whose final state is durable when its call returns needs two round trips to the
server (create and start; then the final state), so no SDK on this transport can cost less per
task than two of these. A server subprocess (grpc.aio, the same GIL switch interval as Stateward's
server) echoes 200-byte messages; a client sends one at a time and waits for each answer:

- stream: on one long-lived bidirectional stream, as the SDK sends its calls (ExecuteStream),
  with the caller reading the answer itself (cheaper than the SDK's reader thread);
- unary: one unary call per message.

It prints, per round, the round trip in microseconds and the client's CPU time per round trip,
then the medians and ranges, and twice the stream round trip: the floor to compare with
`bench/task_overhead.py`'s local-server figure measured right after it.

With `--unix`, a second echo server listens on a unix domain socket (grpcio's `unix:` address)
and each round measures both, the loopback TCP port first. Measured 2026-12-02 (load 6-8 on 2
cores, 3,000 calls, 3 runs of 3 rounds, medians): the stream round trip over the socket 268,
188, 191 us against 197, 172, 175 us over TCP (unary 443, 260, 261 against 365, 306, 284): the
calls stream gains nothing from a socket, so neither the server nor the SDK offers one.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from stateward_service.server import SWITCH_INTERVAL_SECONDS

MESSAGE = b"x" * 200


def serve(ports: Any, address: str = "127.0.0.1:0") -> None:
    """Run the echo server on `address` until killed; put its port on `ports` once it
    listens."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)

    async def echo_stream(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "floor.Echo",
            {
                "Stream": grpc.stream_stream_rpc_method_handler(echo_stream),
                "Unary": grpc.unary_unary_rpc_method_handler(echo),
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        ports.put(server.add_insecure_port(address))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def stream_round(channel: grpc.Channel, calls: int) -> tuple[float, float]:
    """(wall µs, client CPU µs) per round trip on one bidirectional stream."""
    outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def requests() -> Iterator[bytes]:
        while (message := outgoing.get()) is not None:
            yield message

    answers = channel.stream_stream("/floor.Echo/Stream")(requests())
    outgoing.put(MESSAGE)
    next(answers)  # the stream is open
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(calls):
        outgoing.put(MESSAGE)
        next(answers)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    outgoing.put(None)
    return wall / calls * 1e6, cpu / calls * 1e6


def unary_round(channel: grpc.Channel, calls: int) -> tuple[float, float]:
    """(wall µs, client CPU µs) per unary round trip."""
    echo = channel.unary_unary("/floor.Echo/Unary")
    echo(MESSAGE)
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(calls):
        echo(MESSAGE)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall / calls * 1e6, cpu / calls * 1e6


def summary(label: str, samples: list[float]) -> str:
    return f"{label:<26} {statistics.median(samples):7.0f}  ({min(samples):.0f}-{max(samples):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unix", action="store_true", help="also over a unix domain socket")
    args = parser.parse_args()
    servers: list[multiprocessing.Process] = []
    targets: dict[str, str] = {}
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        addresses = {"": "127.0.0.1:0"}
        if args.unix:
            addresses["unix "] = f"unix:{folder}/echo.sock"
        try:
            for prefix, address in addresses.items():
                ports: Any = multiprocessing.Queue()
                server = multiprocessing.Process(target=serve, args=(ports, address), daemon=True)
                server.start()
                servers.append(server)
                port = ports.get(timeout=30)
                targets[prefix] = address if prefix else f"127.0.0.1:{port}"
            channels = {prefix: grpc.insecure_channel(target) for prefix, target in targets.items()}
            for round_ in range(args.rounds):
                for prefix, channel in channels.items():
                    for name, measure in (("stream", stream_round), ("unary", unary_round)):
                        wall, cpu = measure(channel, args.calls)
                        results.setdefault(f"{prefix}{name} round trip us", []).append(wall)
                        results.setdefault(f"{prefix}{name} client cpu us", []).append(cpu)
                        print(
                            f"round {round_ + 1} {prefix}{name:<6} {wall:6.0f} us, "
                            f"client CPU {cpu:5.0f} us"
                        )
            for channel in channels.values():
                channel.close()
        finally:
            for server in servers:
                server.kill()
    print(f"median of {args.rounds} rounds (range)")
    for label, samples in results.items():
        print(summary(label, samples))
    floor = [2 * x / 1000 for x in results["stream round trip us"]]
    print(f"floor per durable task run (2 stream round trips): {statistics.median(floor):.2f} ms")


if __name__ == "__main__":
    main()
