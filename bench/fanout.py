"""Fan-out: stream delivery latency at many subscribers, and what live subscribers cost writers.

    .venv/bin/python bench/fanout.py [--old /tmp/hot-old] [--subscribers 100,1000] [--rounds 3]
        [--new-env NAME=VALUE] [--workers 2]

For each count of subscribers (spread over 4 subscriber processes, each holding its streams on
asyncio channels of `--streams-per-connection` streams each, asking for batches with
max_batch), a writer proposes `--transitions` states
at `--rate` per second; each subscriber notes when it received each transition, the writer when
each SetState was answered (one system-wide monotonic clock). Then writer throughput: `--writers`
concurrent SetState loops for `--seconds`, with no subscriber and then with the largest count of
subscribers live, as a ratio, with the CPU time the server process and the subscriber processes
used per write in each (the subscribers share the machine's cores with the server, so on a small
machine their own CPU takes the writers' share too). What the fan-out itself cost the server:
its CPU with the subscribers less what the same writes cost it alone, per stream message and per
delivered transition, beside the floor measured in the same round: the CPU per message of a bare
gRPC aio server that sends one message to each of as many streams per round (`--floor` rounds),
and how long after its round began each of those messages arrived (its delivery p50 and p99: what
a server that does nothing else achieves at that many streams, one process on this machine).
The baseline of the latencies is a health check round trip on the same server in the same round.
With `--replica`, the subscribers hold their streams on a second server process on the same
database (a replica: DESIGN.md's "Many processes, one database"), the writers call the first,
and the fan-out's CPU is both processes' (the replica follows the log in the writes alone too).
With `--old` (another checkout, e.g. `git worktree add /tmp/hot-old <commit>`), its server runs
the same rounds, alternating with this one's; `--new-env` sets variables for this checkout's
server only (with `--old` naming this same checkout: a same-run A/B of a setting). With
`--workers N`, this checkout's server also runs as `stateward server start --workers N` (N
processes on one port: the kernel spreads the connections), alternating with the one-process
server in the same run; the server's CPU is then its parent's and its workers', and the floor is
also measured with the streams shared by N bare servers (`floor xN`: what N processes
achieve).
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

MARKER = "bench-marker"
# Fresh interpreters for the subscribers and the floor's processes: this process has used gRPC
# (its health checks, its writer), and gRPC does not survive a fork once it runs (a run hung
# with forked subscribers waiting on streams that never started).
SPAWN = multiprocessing.get_context("spawn")
# A channel of its own, so a connection of its own: a server with several workers gets the
# connections spread across them by the kernel.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
RUNNING = states_pb2.State(type=states_pb2.STATE_TYPE_RUNNING)


def subscriber_process(
    target: str, streams: int, per_connection: int, ready, results, stop_after_marker: bool
) -> None:
    async def main() -> None:
        channels = [
            grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
            for _ in range(-(-streams // per_connection))
        ]

        async def follow(channel: grpc.aio.Channel) -> tuple[dict[str, int], int, int]:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            call = stub.WatchTransitions(pb.WatchTransitionsRequest(max_batch=500))
            await call.initial_metadata()
            ready.put(1)
            seen: dict[str, int] = {}
            messages = transitions = 0
            async for message in call:
                now = time.monotonic_ns()
                messages += 1
                batch = message.transitions or [message.transition]
                if not stop_after_marker:
                    # Only counted (the marker is the last transition written): a subscriber
                    # that notes each transition's time costs this machine's shared cores
                    # more CPU per write than the server's fan-out does.
                    if batch[-1].flow_name == MARKER:
                        call.cancel()
                        return seen, messages, transitions + len(batch) - 1
                    transitions += len(batch)
                    continue
                for transition in batch:
                    if transition.flow_name == MARKER:
                        call.cancel()
                        return seen, messages, transitions
                    transitions += 1
                    seen[transition.to_state.id] = now
            return seen, messages, transitions

        try:
            followed = await asyncio.gather(
                *(follow(channels[i // per_connection]) for i in range(streams)),
                return_exceptions=True,
            )
        finally:
            for channel in channels:
                await channel.close()
        for found in followed:
            if isinstance(found, BaseException):  # said, not waited for until a timeout
                print(f"a subscriber's stream ended: {found!r}", file=sys.stderr, flush=True)
                found = ({}, 0, 0)
            results.put(found)

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """The CPU time of a process and of its live descendants (a server's workers)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += tree_cpu_seconds(int(child))
    return total


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def start_subscribers(server: ServerProcess, subscribers: int, keep: bool, per_connection: int):
    processes = min(subscribers, 4)
    ready: multiprocessing.Queue[int] = SPAWN.Queue()
    results: multiprocessing.Queue[dict[str, int]] = SPAWN.Queue()
    shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    workers = [
        SPAWN.Process(
            target=subscriber_process,
            args=(server.target, n, per_connection, ready, results, keep),
        )
        for n in shares
    ]
    for worker in workers:
        worker.start()
    for _ in range(subscribers):
        ready.get(timeout=300)
    return workers, results


def stop_subscribers(server: ServerProcess, workers, results, subscribers: int) -> list:
    """(what each subscriber saw: {state id: when}, messages, transitions) once they stopped."""
    new_flow_run(server.stub(), flow_name=MARKER)
    found = [results.get(timeout=600) for _ in range(subscribers)]
    for worker in workers:
        worker.join()
    return found


def latencies(
    server: ServerProcess,
    streams: ServerProcess,
    subscribers: int,
    args: argparse.Namespace,
) -> list:
    """Delivery latencies (ms): writes on `server`, subscribers on `streams` (the same server,
    or a replica on the same database)."""
    transitions, rate = args.transitions, args.rate
    workers, results = start_subscribers(
        streams, subscribers, keep=True, per_connection=args.streams_per_connection
    )
    stub = server.stub()
    run = new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING)
    request = pb.SetStateRequest(run_id=run.id, state=RUNNING)
    answered: dict[str, int] = {}
    next_at = time.monotonic()
    for _ in range(transitions):
        next_at += 1.0 / rate
        answer = stub.SetState(request)
        answered[answer.state.id] = time.monotonic_ns()
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    found: list[float] = []
    for seen, _, _ in stop_subscribers(server, workers, results, subscribers):
        assert set(answered) <= set(seen), "a subscriber missed transitions"
        found.extend((seen[state_id] - at) / 1e6 for state_id, at in answered.items())
    return found


def writer_throughput(server: ServerProcess, writers: int, seconds: float) -> float:
    """SetStates answered per second by `writers` concurrent loops, each on a run of its own."""
    stub = server.stub()
    runs = [new_flow_run(stub, initial=states_pb2.STATE_TYPE_RUNNING).id for _ in range(writers)]

    async def main() -> int:
        # A connection per 4 writers: a server with several workers gets them spread.
        channels = [
            grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION)
            for _ in range(-(-writers // 4))
        ]
        deadline = time.perf_counter() + seconds

        async def loop(index: int, run_id: str) -> int:
            aio = orchestration_pb2_grpc.OrchestrationServiceStub(channels[index // 4])
            request = pb.SetStateRequest(run_id=run_id, state=RUNNING)
            done = 0
            while time.perf_counter() < deadline:
                await aio.SetState(request)
                done += 1
            return done

        try:
            return sum(await asyncio.gather(*(loop(i, r) for i, r in enumerate(runs))))
        finally:
            for channel in channels:
                await channel.close()

    return asyncio.run(main()) / seconds


def health_p50(server: ServerProcess) -> float:
    health = health_pb2_grpc.HealthStub(server.channel())
    samples = []
    for _ in range(300):
        began = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest())
        samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


_FLOOR_PADDING = b"x" * 192  # with the round's start, about one encoded transition's size


def _floor_server(ports, go, done, streams: int, rounds: int) -> None:
    """A gRPC aio server whose one streaming method sends 200 bytes to every open stream once
    per round (the round's start on the monotonic clock, and padding), and does nothing else;
    puts its CPU seconds per message."""
    _quiet()

    async def main() -> None:
        sent = 0
        all_sent = asyncio.Event()
        round_ = asyncio.Event()
        payload = b""

        async def stream(request: bytes, context: grpc.aio.ServicerContext):
            nonlocal sent
            await context.send_initial_metadata(())  # the subscriber counts itself in
            while True:
                await round_.wait()
                yield payload
                sent += 1
                if sent == streams:
                    all_sent.set()

        handler = grpc.method_handlers_generic_handler(
            "floor.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await asyncio.get_running_loop().run_in_executor(None, go.get)
        began = cpu_seconds(os.getpid())
        for _ in range(rounds):
            sent = 0
            all_sent.clear()
            woken, round_ = round_, asyncio.Event()
            payload = time.monotonic_ns().to_bytes(8, "little") + _FLOOR_PADDING
            woken.set()
            await all_sent.wait()
            await asyncio.sleep(0.01)
        done.put((cpu_seconds(os.getpid()) - began) / (rounds * streams))
        await server.stop(None)

    asyncio.run(main())


def _quiet() -> None:
    """No output from this process: gRPC reports every stream that the end cancels."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _floor_subscriber(port: int, streams: int, rounds: int, ready, delays) -> None:
    """Holds `streams` floor streams (until killed); once each got `rounds` messages, puts how
    long after its round began each message arrived (ms)."""
    _quiet()

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_stream("/floor.Floor/Stream")
            found: list[float] = []
            complete = 0

            async def one() -> None:
                nonlocal complete
                call = method(b"")
                await call.initial_metadata()
                ready.put(1)
                got = 0
                async for message in call:
                    began = int.from_bytes(message[:8], "little")
                    found.append((time.monotonic_ns() - began) / 1e6)
                    got += 1
                    if got == rounds:
                        complete += 1
                        if complete == streams:
                            delays.put(found)

            await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)

    asyncio.run(main())


def floor(subscribers: int, rounds: int, servers: int = 1) -> tuple[float, list[float]]:
    """The floor under the fan-out: microseconds of CPU a gRPC aio server that does nothing
    else spends per stream message, sending one to each of `subscribers` streams per round
    (held by 4 processes, as the subscribers above are), and how long after its round began
    each message arrived (ms): the delivery latency of a bare server at that many streams.
    With `servers` above 1, that many such server processes share the streams (the subscriber
    processes spread over them), each sending its rounds on its own: the floor of a server
    with that many workers."""
    ports: multiprocessing.Queue[int] = SPAWN.Queue()
    go: multiprocessing.Queue[int] = SPAWN.Queue()
    done: multiprocessing.Queue[float] = SPAWN.Queue()
    ready: multiprocessing.Queue[int] = SPAWN.Queue()
    delays: multiprocessing.Queue[list[float]] = SPAWN.Queue()
    processes = min(subscribers, 4)
    shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    owner = [i % servers for i in range(processes)]  # the server of each subscriber process
    streams = [sum(n for n, o in zip(shares, owner, strict=True) if o == k) for k in range(servers)]
    floor_servers = [
        SPAWN.Process(target=_floor_server, args=(ports, go, done, n, rounds)) for n in streams
    ]
    port_of = []
    for server in floor_servers:
        server.start()
        port_of.append(ports.get(timeout=60))
    clients = [
        SPAWN.Process(
            target=_floor_subscriber,
            args=(port_of[o], n, rounds, ready, delays),
            daemon=True,
        )
        for n, o in zip(shares, owner, strict=True)
    ]
    for client in clients:
        client.start()
    for _ in range(subscribers):
        ready.get(timeout=300)
    for _ in floor_servers:
        go.put(1)
    per_message = statistics.mean(done.get(timeout=600) for _ in floor_servers)
    found = [delay for _ in clients for delay in delays.get(timeout=600)]
    for server in floor_servers:
        server.join(timeout=60)
    for client in clients:
        client.kill()
        client.join()
    return per_message * 1e6, found


def one_round(
    tree: Path | None,
    args: argparse.Namespace,
    counts: list[int],
    env: dict[str, str],
    server_args: list[str],
    with_floor: bool,
) -> dict[str, float]:
    env = dict(env)
    if tree is not None:
        env["PYTHONPATH"] = f"{tree / 'client'}{os.pathsep}{tree / 'service'}"
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "bench.db", env=env, args=server_args)
        server.start(timeout=60)
        streams = server
        if args.replica:
            log = Path(folder) / "replica.log"
            streams = ServerProcess(Path(folder) / "bench.db", env=env, log_path=log)
            streams.start(timeout=60)
        try:
            figures["health p50 ms"] = health_p50(server)
            for count in counts:
                found = latencies(server, streams, count, args)
                figures[f"{count} subs p50 ms"] = statistics.median(found)
                figures[f"{count} subs p99 ms"] = percentile(found, 0.99)
            assert server.process is not None and streams.process is not None
            pid, replica = server.process.pid, streams.process.pid

            def cpu_of_both() -> tuple[float, float]:
                return tree_cpu_seconds(pid), tree_cpu_seconds(replica) if args.replica else 0.0

            cpu, replica_cpu = cpu_of_both()
            alone = writer_throughput(server, args.writers, args.seconds)
            server_alone = tree_cpu_seconds(pid) - cpu
            replica_alone = cpu_of_both()[1] - replica_cpu
            most = max(counts)
            workers, results = start_subscribers(
                streams, most, keep=False, per_connection=args.streams_per_connection
            )
            cpu, replica_cpu = cpu_of_both()
            theirs = sum(cpu_seconds(worker.pid) for worker in workers if worker.pid)
            busy = writer_throughput(server, args.writers, args.seconds)
            server_busy = tree_cpu_seconds(pid) - cpu
            replica_busy = cpu_of_both()[1] - replica_cpu
            theirs = sum(cpu_seconds(w.pid) for w in workers if w.pid) - theirs
            seen = stop_subscribers(server, workers, results, most)
            messages = sum(m for _, m, _ in seen)
            delivered = sum(t for _, _, t in seen)
            figures["writes/s alone"] = alone
            figures[f"writes/s with {most} subs"] = busy
            figures["writes ratio"] = busy / alone
            writes_alone, writes_busy = alone * args.seconds, busy * args.seconds
            figures["server cpu ms/write alone"] = server_alone / writes_alone * 1e3
            figures["server cpu ms/write w/ subs"] = server_busy / writes_busy * 1e3
            if args.replica:
                figures["replica cpu ms/write alone"] = replica_alone / writes_alone * 1e3
                figures["replica cpu ms/write w/ subs"] = replica_busy / writes_busy * 1e3
            figures["subs' cpu ms/write"] = theirs / writes_busy * 1e3
            # What the fan-out cost the server (and its replica): their CPU with the
            # subscribers, less what the same writes cost them alone, per message and per
            # transition the subscribers got (these include the writes after the timed ones,
            # up to the marker: a few).
            both_alone = server_alone + replica_alone
            fan_out = server_busy + replica_busy - both_alone / writes_alone * writes_busy
            figures["transitions/message"] = delivered / max(1, messages)
            figures["fan-out cpu us/message"] = fan_out / max(1, messages) * 1e6
            figures["fan-out cpu us/transition"] = fan_out / max(1, delivered) * 1e6
            if args.floor and with_floor:
                per_message, delays = floor(most, args.floor)
                figures["floor cpu us/message"] = per_message
                figures["floor delivery p50 ms"] = statistics.median(delays)
                figures["floor delivery p99 ms"] = percentile(delays, 0.99)
                if args.workers > 1:
                    per_message, delays = floor(most, args.floor, args.workers)
                    figures[f"floor x{args.workers} cpu us/message"] = per_message
                    figures[f"floor x{args.workers} delivery p50 ms"] = statistics.median(delays)
                    figures[f"floor x{args.workers} delivery p99 ms"] = percentile(delays, 0.99)
        finally:
            server.stop()
            if streams is not server:
                streams.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    parser.add_argument(
        "--new-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable set for this checkout's server only (e.g. a gRPC setting to compare, "
        "with --old naming this same checkout)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run this checkout's server with --workers N, alternating with one process",
    )
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=25,
        help="streams a subscriber process holds on each of its connections",
    )
    parser.add_argument("--subscribers", default="100,1000")
    parser.add_argument("--transitions", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--replica",
        action="store_true",
        help="the subscribers on a second server process on the same database (a replica), "
        "the writers on the first",
    )
    parser.add_argument(
        "--floor",
        type=int,
        default=50,
        help="rounds of the bare gRPC stream server measured as the floor (0: none)",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.subscribers.split(",")]
    # Each configuration: its checkout (None: this one), its server's variables and flags.
    configurations: dict[str, tuple[Path | None, dict[str, str], list[str]]] = {
        "new": (None, dict(pair.split("=", 1) for pair in args.new_env), [])
    }
    if args.old:
        configurations["old"] = (args.old.resolve(), {}, [])
    if args.workers > 1:
        name = f"new --workers {args.workers}"
        configurations[name] = (None, {}, ["--workers", str(args.workers)])
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for round_ in range(args.rounds):
        names = list(configurations)
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            tree, env, server_args = configurations[name]
            with_floor = name == names[0]  # the floor once a round
            results[name].append(one_round(tree, args, counts, env, server_args, with_floor))
            print(f"round {round_ + 1} {name}: {results[name][-1]}", flush=True)
            print(f"  load average: {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name, rounds in results.items():
        print(f"--- {name} (median of {len(rounds)} rounds, and their range)")
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            print(
                f"{key:>24}: {statistics.median(values):9.2f}"
                f"   ({min(values):.2f} - {max(values):.2f})"
            )


if __name__ == "__main__":
    main()
