"""Fan-out in instructions: what the server executes per stream message it sends to a live
subscriber, beside a bare gRPC aio server sending one message to each of as many streams (the
floor), each under callgrind (valgrind), so that the figures hold on a loaded machine.

    .venv/bin/python bench/fanout_instructions.py [--old TREE] [--subscribers 100] [--writes 40]
        [--rounds 1]

The server runs under callgrind; a client process (not under it) holds `--subscribers` streams
(WatchTransitions with max_batch 500, on one channel) and one writer. The writes go in lock
step: each SetState, then a wait until every stream received its transition, so that each
message carries exactly one transition whatever the speed (callgrind makes the server about
fifty times slower). The server's counters are zeroed before `--writes` writes with no stream
and dumped after, then again with the streams open: per message = (with - without) /
(writes x subscribers), all threads (the event loop's, gRPC's, the follower's). The floor: a
gRPC aio server, under callgrind too, whose one streaming method sends 200 bytes to every open
stream once per round, the rounds in lock step as well; per message = its instructions over
`--writes` rounds / (rounds x streams). With `--old` (another checkout), its server is measured
in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server_instructions import LISTENING, callgrind, control, dump

HERE = Path(__file__).resolve().parent.parent

CLIENT = """
import asyncio, sys
import grpc
from stateward.v1 import orchestration_pb2 as pb, orchestration_pb2_grpc, runs_pb2, states_pb2

FLOOR = sys.argv[2] == "floor"

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
        floor = channel.unary_stream("/floor.Floor/Stream")
        received = opened = 0
        arrived = asyncio.Event()
        streams = []

        async def follow():
            nonlocal received, opened
            if FLOOR:
                call = floor(b"")
            else:
                call = stub.WatchTransitions(pb.WatchTransitionsRequest(max_batch=500))
            await call.initial_metadata()
            opened += 1
            arrived.set()
            async for message in call:
                received += 1 if FLOOR else len(message.transitions) or 1
                arrived.set()

        async def until(count):
            while received < count:
                arrived.clear()
                await arrived.wait()

        run = None
        if not FLOOR:
            running = states_pb2.State(type=states_pb2.STATE_TYPE_RUNNING)
            made = await stub.CreateFlowRun(pb.CreateFlowRunRequest(
                flow_run=runs_pb2.FlowRun(flow_name="bench", state=running)))
            request = pb.SetStateRequest(run_id=made.flow_run.id, state=running)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            command, count = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            count = int(count)
            if command == "subscribe":
                for _ in range(count):
                    streams.append(asyncio.ensure_future(follow()))
                while opened < len(streams):
                    arrived.clear()
                    await arrived.wait()
            elif command == "write":
                for _ in range(count):
                    expected = received + len(streams)
                    await stub.SetState(request)
                    await until(expected)
            elif command == "round":  # the floor server sends; wait for every stream's message
                await until(received + count * len(streams))
            elif command == "stop":
                for stream in streams:
                    stream.cancel()
                return
            print("done", flush=True)

asyncio.run(main())
"""

FLOOR_SERVER = """
import asyncio, sys
import grpc

PAYLOAD = b"x" * 200  # about one encoded transition's size

async def main():
    streams = int(sys.argv[1])
    opened = sent = 0
    everyone, all_sent, round_ = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def stream(request, context):
        nonlocal opened, sent
        await context.send_initial_metadata(())
        opened += 1
        if opened == streams:
            everyone.set()
        while True:
            await round_.wait()
            yield PAYLOAD
            sent += 1
            if sent == streams:
                all_sent.set()

    handler = grpc.method_handlers_generic_handler(
        "floor.Floor", {"Stream": grpc.unary_stream_rpc_method_handler(stream)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port} ", flush=True)
    loop = asyncio.get_running_loop()
    await everyone.wait()
    while True:
        rounds = int(await loop.run_in_executor(None, sys.stdin.readline))
        if not rounds:
            break
        for _ in range(rounds):
            sent = 0
            all_sent.clear()
            woken, round_ = round_, asyncio.Event()
            woken.set()
            await all_sent.wait()
        print("sent", flush=True)
    await server.stop(None)

asyncio.run(main())
"""


class _Client:
    def __init__(self, target: str, mode: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, target, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != word:
            raise SystemExit(f"the client said {line!r}, not {word!r}")

    def ask(self, command: str, count: int, wait: bool = True) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command} {count}\n")
        self.process.stdin.flush()
        if wait:
            self._expect("done")

    def close(self) -> None:
        if self.process.poll() is None:
            self.ask("stop", 0, wait=False)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _start(command: list[str], work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    log = work / "server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
    deadline = time.monotonic() + 600
    while not (found := LISTENING.search(log.read_text(errors="replace"))):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return server, f"127.0.0.1:{found.group(2)}"


def server_per_message(tree: Path, subscribers: int, writes: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="fanout-instructions-"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{tree / 'client'}:{tree / 'service'}",
        "STATEWARD_HOME": str(work),
        "STATEWARD_LOGGING_LEVEL": "WARNING",
    }
    out = work / "server.cg"
    server, target = _start(
        [*callgrind(out), sys.executable, "-m", "stateward", "server", "start",
         "--port", "0", "--db", str(work / "bench.db"), "--no-ui"],
        work, env,
    )  # fmt: skip
    client = None
    try:
        client = _Client(target, "server", env)
        client.ask("write", 10)  # warm: the run's row, the statements
        control(server.pid, "--zero")
        client.ask("write", writes)
        alone = sum(dump(server.pid, out).values())
        client.ask("subscribe", subscribers)
        client.ask("write", 10)  # warm: every stream's first message
        control(server.pid, "--zero")
        client.ask("write", writes)
        busy = sum(dump(server.pid, out).values())
    finally:
        if client is not None:
            client.close()
        server.terminate()
        server.wait()
    return (busy - alone) / (writes * subscribers)


def floor_per_message(subscribers: int, rounds: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="fanout-floor-"))
    out = work / "floor.cg"
    env = dict(os.environ)
    server, target = _start(
        [*callgrind(out), sys.executable, "-c", FLOOR_SERVER, str(subscribers)], work, env
    )
    client = None
    try:
        assert server.stdin is not None
        client = _Client(target, "floor", env)
        client.ask("subscribe", subscribers)

        def send(count: int) -> None:
            assert server.stdin is not None
            server.stdin.write(f"{count}\n")
            server.stdin.flush()
            client.ask("round", count)

        send(5)  # warm
        control(server.pid, "--zero")
        send(rounds)
        sent = sum(dump(server.pid, out).values())
        server.stdin.write("0\n")
        server.stdin.flush()
    finally:
        if client is not None:
            client.close()
        server.terminate()
        server.wait()
    return sent / (rounds * subscribers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="another checkout, measured alternating")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    trees = {"this": HERE}
    if args.old is not None:
        trees["old"] = args.old.resolve()
    results: dict[str, list[float]] = {name: [] for name in [*trees, "floor"]}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(server_per_message(tree, args.subscribers, args.writes))
            print(f"round {round_ + 1} {name}: {results[name][-1] / 1e3:.1f}K", flush=True)
        results["floor"].append(floor_per_message(args.subscribers, args.writes))
        print(f"round {round_ + 1} floor: {results['floor'][-1] / 1e3:.1f}K", flush=True)
    print(f"instructions per stream message, {args.subscribers} subscribers (range)")
    for name, values in results.items():
        print(f"  {name:<6} {sum(values) / len(values) / 1e3:8.1f}K  "
              f"({min(values) / 1e3:.1f}K-{max(values) / 1e3:.1f}K)")  # fmt: skip


if __name__ == "__main__":
    main()
