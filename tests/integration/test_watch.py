"""WatchTransitions over real gRPC: filters, order, replay-then-live with no gap and no duplicate
under concurrent writers, 100 subscribers, a stalled subscriber, restarts, shutdown, retention,
and the `stateward watch` command."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from stateward.client import AsyncClient, Client
from stateward.exceptions import CursorExpired, StatewardError
from stateward.runs import RunKind, Transition
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from stateward.v1.orchestration_pb2_grpc import OrchestrationServiceStub
from stateward_service.store.sqlite.schema import migrate
from tests.support import ROOT, ServerProcess, running_server, wait_until


@pytest.fixture(scope="module")
def watch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("watch")) as server:
        yield server


@pytest.fixture
def client(watch_server: ServerProcess) -> Iterator[Client]:
    with Client(watch_server.target) as connected:
        yield connected


def logged(db: Path, after: int) -> list[tuple[int, str, str]]:
    """(sequence, run id, to-state id) straight from the server's transitions table."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT sequence, run_id, to_state_id FROM transitions WHERE sequence > ? "
            "ORDER BY sequence",
            (after,),
        ).fetchall()


def last_sequence(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT coalesce(max(sequence), 0) FROM transitions").fetchone()[0]


def collect(server: ServerProcess, count: int, **request: object) -> list[pb.Transition]:
    """The first `count` transitions a raw stream delivers, and any more that arrive in the
    0.3 s after them (a test expecting `count` then sees the extra ones)."""
    call = server.stub().WatchTransitions(pb.WatchTransitionsRequest(**request), timeout=30)
    found = []
    stop = threading.Timer(0.3, call.cancel)
    try:
        for message in call:
            found.append(message.transition)
            if len(found) == count:
                stop.start()
    except grpc.RpcError as error:
        # Only the cancel after the count ends it: a deadline means fewer came than expected.
        assert error.code() == grpc.StatusCode.CANCELLED, (found, error)
    finally:
        stop.cancel()
    return found


def flow_with_tasks(client: Client, tasks: int = 2):
    flow_run = client.create_flow_run("watched", state=State(StateType.PENDING))
    client.set_state(flow_run.id, State(StateType.RUNNING))
    task_runs = [
        client.create_task_run(f"t{i}", flow_run_id=flow_run.id, state=State(StateType.PENDING))
        for i in range(tasks)
    ]
    return flow_run, task_runs


def finish(client: Client, run_ids: list[str]) -> None:
    for run_id in run_ids:
        client.set_state(run_id, State(StateType.RUNNING))
        client.set_state(run_id, State(StateType.COMPLETED))


def test_filters_select_runs_flow_runs_and_state_types(watch_server, client):
    start = last_sequence(watch_server.db)
    flow_a, (a1, a2) = flow_with_tasks(client)
    flow_b, (b1,) = flow_with_tasks(client, 1)
    finish(client, [a1.id, a2.id, b1.id])
    client.set_state(flow_a.id, State(StateType.COMPLETED))

    written = [s for s, _, _ in logged(watch_server.db, start)]
    everything = collect(watch_server, len(written), after_sequence=start)
    assert [t.sequence for t in everything] == written
    by_run = collect(watch_server, 3, after_sequence=start, run_ids=[a1.id])
    assert {t.run_id for t in by_run} == {a1.id} and len(by_run) == 3
    by_flow = collect(watch_server, 9, after_sequence=start, flow_run_ids=[flow_a.id])
    assert {t.run_id for t in by_flow} == {flow_a.id, a1.id, a2.id}
    assert len(by_flow) == 3 + 3 + 3  # flow: Pending, Running, Completed; tasks: 3 each
    assert all(t.flow_run_id == flow_a.id for t in by_flow)
    completed = collect(watch_server, 4, after_sequence=start, state_types=[StateType.COMPLETED])
    assert {t.run_id for t in completed} == {a1.id, a2.id, b1.id, flow_a.id}
    both = collect(
        watch_server,
        2,
        after_sequence=start,
        flow_run_ids=[flow_b.id],
        state_types=[StateType.RUNNING],
    )
    assert [(t.run_id, t.to_state.name) for t in both] == [
        (flow_b.id, "Running"),
        (b1.id, "Running"),
    ]


def test_transitions_carry_run_names_kinds_and_chained_states(watch_server, client):
    start = last_sequence(watch_server.db)
    flow_run, (task_run,) = flow_with_tasks(client, 1)
    finish(client, [task_run.id])
    seen = collect(watch_server, len(logged(watch_server.db, start)), after_sequence=start)
    sequences = [t.sequence for t in seen]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    task_transitions = [t for t in seen if t.run_id == task_run.id]
    assert [t.to_state.name for t in task_transitions] == ["Pending", "Running", "Completed"]
    assert not task_transitions[0].HasField("from_state")
    for before, after in itertools.pairwise(task_transitions):
        assert after.from_state.id == before.to_state.id
    first = task_transitions[0]
    assert first.run_kind == runs_pb2.RUN_KIND_TASK_RUN
    assert (first.run_name, first.task_key, first.flow_run_id) == (
        task_run.name, "t0", flow_run.id,
    )  # fmt: skip
    flow_first = next(t for t in seen if t.run_id == flow_run.id)
    assert (flow_first.flow_name, flow_first.run_name) == ("watched", flow_run.name)


def test_replay_then_live_has_no_gap_and_no_duplicate_under_concurrent_writers(watch_server):
    db = watch_server.db
    start = last_sequence(db)
    stop = threading.Event()

    def write(run_id: str) -> None:
        with Client(watch_server.target) as writer:
            while not stop.is_set():
                writer.set_state(run_id, State(StateType.RUNNING))

    def grown_past(sequence: int) -> None:
        wait_until(lambda: last_sequence(db) > sequence, 30, f"the log to pass #{sequence}")

    with Client(watch_server.target) as setup:
        runs = [setup.create_flow_run("busy", state=State(StateType.RUNNING)).id for _ in range(4)]
        marker = setup.create_flow_run("marker", state=State(StateType.PENDING))
    threads = [threading.Thread(target=write, args=(run_id,)) for run_id in runs]
    received: dict[str, list[Transition]] = {"replay": [], "live": []}
    started = {"replay": threading.Event(), "live": threading.Event()}

    def subscribe(label: str, after: int | None) -> None:
        with Client(watch_server.target) as reader:
            for transition in reader.watch(
                after_sequence=after, started=lambda _: started[label].set()
            ):
                received[label].append(transition)
                if transition.run_id == marker.id and transition.to_state.is_running():
                    return

    subscribers = [
        threading.Thread(target=subscribe, args=("replay", start), daemon=True),
        threading.Thread(target=subscribe, args=("live", None), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        grown_past(start + 200)  # the log grows before the subscribers arrive
        for thread in subscribers:
            thread.start()
        for event in started.values():
            assert event.wait(30), "a subscriber never connected"
        # Both hand over from the log or their start to live while the writes go on.
        grown_past(last_sequence(db) + 200)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    with Client(watch_server.target) as closer:
        closer.set_state(marker.id, State(StateType.RUNNING))
    for thread in subscribers:
        thread.join(30)
        assert not thread.is_alive(), "a subscriber never saw the marker"

    replayed = [(t.sequence, t.run_id, t.to_state.id) for t in received["replay"]]
    assert len(replayed) > 200
    assert replayed == logged(db, start)[: len(replayed)]
    assert replayed[-1][1] == marker.id
    live = [(t.sequence, t.run_id, t.to_state.id) for t in received["live"]]
    assert live, "the live subscriber saw nothing"
    first = live[0][0]
    assert live == logged(db, first - 1)[: len(live)]  # contiguous from where it started
    assert live[-1][1] == marker.id


def test_a_hundred_subscribers_each_receive_everything_in_order(watch_server):
    start = last_sequence(watch_server.db)
    marker_name = "hundred-marker"

    async def main() -> list[list[int]]:
        async with AsyncClient(watch_server.target) as reader:

            async def follow() -> list[int]:
                seen = []
                async for transition in reader.watch(after_sequence=start):
                    seen.append(transition.sequence)
                    if transition.flow_name == marker_name:
                        return seen
                return seen

            followers = [asyncio.create_task(follow()) for _ in range(100)]
            async with AsyncClient(watch_server.target) as writer:
                run = await writer.create_flow_run("hundred", state=State(StateType.RUNNING))
                for _ in range(200):
                    await writer.set_state(run.id, State(StateType.RUNNING))
                await writer.create_flow_run(marker_name, state=State(StateType.PENDING))
            return await asyncio.wait_for(asyncio.gather(*followers), 60)

    results = asyncio.run(main())
    expected = [s for s, _, _ in logged(watch_server.db, start)]
    assert len(expected) == 202
    assert all(seen == expected for seen in results)


def test_filtered_subscribers_among_many_get_only_theirs_in_order_with_no_gap(watch_server):
    """Live subscribers on one run, on one flow run, on a state type, and two hundred that want
    everything, while four writers move runs of four flow runs at once: each gets exactly the
    transitions of the log its filter selects, in order, none missing, none twice (the
    dispatcher wakes a subscriber only for what it wants, and its cursor skips the rest)."""
    db = watch_server.db

    with Client(watch_server.target) as setup:
        flows = [flow_with_tasks(setup, 2) for _ in range(4)]
    filters: list[dict[str, object]] = []
    for flow_run, task_runs in flows:
        filters.append({"flow_run_ids": [flow_run.id]})
        filters.append({"run_ids": [task_runs[0].id]})
    filters.append({"run_ids": [flows[0][1][1].id, flows[1][1][1].id]})
    filters.append({"state_types": [StateType.COMPLETED]})
    filters.append({"flow_run_ids": [flows[2][0].id], "state_types": [StateType.RUNNING]})
    filters += [{} for _ in range(200)]

    def wanted(row: tuple[int, str, str, int], where: dict[str, object]) -> bool:
        _, run_id, flow_run_id, to_type = row
        return (
            run_id in where.get("run_ids", [run_id])  # type: ignore[operator]
            and flow_run_id in where.get("flow_run_ids", [flow_run_id])  # type: ignore[operator]
            and to_type in where.get("state_types", [to_type])  # type: ignore[operator]
        )

    async def main() -> tuple[list[int], list[bool]]:
        async with grpc.aio.insecure_channel(watch_server.target) as channel:
            stub = OrchestrationServiceStub(channel)
            received: list[list[int]] = [[] for _ in filters]
            calls = [
                stub.WatchTransitions(pb.WatchTransitionsRequest(max_batch=50, **where))
                for where in filters
            ]
            starts = [
                int(dict(await call.initial_metadata())["stateward-start-sequence"])
                for call in calls
            ]

            async def follow(index: int) -> None:
                async for message in calls[index]:
                    for transition in message.transitions or [message.transition]:
                        received[index].append(transition.sequence)

            followers = [asyncio.create_task(follow(i)) for i in range(len(calls))]

            def write(run_ids: list[str]) -> None:
                with Client(watch_server.target) as writer:
                    for _ in range(15):
                        for run_id in run_ids:
                            writer.set_state(run_id, State(StateType.RUNNING))
                    for run_id in run_ids:
                        writer.set_state(run_id, State(StateType.COMPLETED))

            await asyncio.gather(
                *(
                    asyncio.to_thread(write, [t.id for t in task_runs] + [flow_run.id])
                    for flow_run, task_runs in flows
                )
            )
            log = logged_with_filters(db, min(starts))
            expected = [
                [row[0] for row in log if row[0] > start and wanted(row, where)]
                for start, where in zip(starts, filters, strict=True)
            ]
            for _ in range(1200):  # a minute at most
                if all(len(got) >= len(want) for got, want in zip(received, expected, strict=True)):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # anything extra would arrive now
            for call in calls:
                call.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            return [len(e) for e in expected], [
                got == want for got, want in zip(received, expected, strict=True)
            ]

    sizes, exact = asyncio.run(main())
    assert all(sizes[:12]), sizes  # each filter selected some transitions
    assert all(exact), [i for i, ok in enumerate(exact) if not ok]


def logged_with_filters(db: Path, after: int) -> list[tuple[int, str, str, int]]:
    """(sequence, run id, flow run id, new state type) from the server's transitions table."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT sequence, run_id, flow_run_id, to_type FROM transitions WHERE sequence > ? "
            "ORDER BY sequence",
            (after,),
        ).fetchall()


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far: user and system, all its threads (in the
    system's clock ticks, 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# About 6,000 writes: 15 s on a quiet machine, two minutes at load 40 (once past the default
# limit, 120 s).
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stalled_subscriber_does_not_slow_writers_and_resumes_without_loss(tmp_path):
    server = ServerProcess(tmp_path / "stall.db", args=["--stream-buffer", "100"]).start()
    assert server.process is not None
    pid = server.process.pid
    try:
        client = Client(server.target)
        run = client.create_flow_run("stall", state=State(StateType.RUNNING))

        def write(n: int) -> float:
            """The server's CPU seconds for `n` writes."""
            began = cpu_seconds(pid)
            for _ in range(n):
                client.set_state(run.id, State(StateType.RUNNING))
            return cpu_seconds(pid) - began

        # The stalled subscriber's own channel keeps a small receive window, so that it stops
        # taking messages (its transport reads ahead for it until the window is full) within
        # the few hundred writes below.
        stalled_channel = grpc.insecure_channel(
            server.target,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 8192)],
        )

        def stall() -> tuple[grpc.Call, int]:
            """A subscriber from the head that never reads."""
            start = last_sequence(server.db)
            stream = OrchestrationServiceStub(stalled_channel).WatchTransitions(
                pb.WatchTransitionsRequest(after_sequence=start)
            )
            stream.initial_metadata()
            return stream, start

        write(300)  # warm up
        # What the writes cost the server, alone and with a stalled subscriber, in rounds in
        # pairs, alternately in either order (the database's growth hits both sides alike). A
        # subscriber is stalled once its window is full: the writes that fill it are not
        # counted. The server's CPU time, not the writer's wall clock: on a machine busy with
        # other processes the wall clock measured their load (medians of 1.24 at load 10,
        # 1.65 at load 15-25 against a limit of 1.5), CPU time what the server did.
        alone = with_stalled = 0.0
        for pair in range(6):
            if pair % 2:
                alone += write(250)
            stalled, _ = stall()
            write(300)
            with_stalled += write(250)
            stalled.cancel()
            if not pair % 2:
                alone += write(250)
        # A stalled subscriber that held writers back would cost them many times over (200
        # live readers once made writes 24x slower); one that cost the server nothing leaves
        # the ratio at 1, within the clock ticks' noise.
        assert with_stalled <= 1.5 * alone, (with_stalled, alone)
        # Ten times what the server keeps in memory: the stalled one catches up from the log.
        stalled, start = stall()
        write(1000)
        expected = [s for s, _, _ in logged(server.db, start)]
        assert len(expected) == 1000
        received = []
        for message in stalled:
            received.append(message.transition.sequence)
            if len(received) == len(expected):
                break
        stalled.cancel()
        assert received == expected
        stalled_channel.close()
        client.close()
    finally:
        server.stop()


def test_watch_reconnects_after_a_server_restart_with_its_cursor(tmp_path):
    server = ServerProcess(tmp_path / "restart.db").start()
    client = Client(server.target, wait_for_ready=True)
    run = client.create_flow_run("restarting", state=State(StateType.RUNNING))
    start = last_sequence(server.db)
    seen: list[Transition] = []

    def follow() -> None:
        with Client(server.target) as reader:
            for transition in reader.watch(after_sequence=start, max_backoff=0.2):
                seen.append(transition)
                if transition.to_state.name == "Done":
                    return

    follower = threading.Thread(target=follow)
    follower.start()
    for _ in range(30):
        client.set_state(run.id, State(StateType.RUNNING))
    server.stop()
    time.sleep(0.3)
    server.restart()
    try:
        for _ in range(30):
            client.set_state(run.id, State(StateType.RUNNING))
        client.set_state(run.id, State(StateType.COMPLETED, name="Done"))
        follower.join(30)
        assert not follower.is_alive()
        sequences = [t.sequence for t in seen]
        assert sequences == [s for s, _, _ in logged(server.db, start)]
        assert len(sequences) == 61
    finally:
        client.close()
        server.stop()


def test_shutdown_ends_streams_with_unavailable_and_the_cursor(tmp_path):
    server = ServerProcess(tmp_path / "shutdown.db").start()
    client = Client(server.target)
    run = client.create_flow_run("closing", state=State(StateType.RUNNING))
    stream = server.stub().WatchTransitions(pb.WatchTransitionsRequest(after_sequence=0))
    first = next(stream)
    assert first.transition.run_id == run.id
    server.process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "reconnect with after_sequence=1" in caught.value.details()
    assert metadata_of(caught.value)["last_sequence"] == "1"
    assert server.process.wait(20) == 0
    client.close()


def metadata_of(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def test_a_cursor_the_log_no_longer_holds_is_failed_precondition(tmp_path):
    args = ["--log-retention", "5", "--log-prune-interval", "0.1"]
    server = ServerProcess(tmp_path / "retention.db", args=args).start()
    try:
        client = Client(server.target)
        run = client.create_flow_run("pruned", state=State(StateType.RUNNING))
        for _ in range(20):
            client.set_state(run.id, State(StateType.RUNNING))
        deadline = time.monotonic() + 5
        while len(logged(server.db, 0)) > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        kept = [s for s, _, _ in logged(server.db, 0)]
        assert kept == list(range(17, 22))
        with pytest.raises(grpc.RpcError) as caught:
            list(server.stub().WatchTransitions(pb.WatchTransitionsRequest(after_sequence=3)))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "oldest kept is 17" in caught.value.details()
        assert metadata_of(caught.value) == {"oldest_sequence": "17"}
        with pytest.raises(CursorExpired, match="oldest kept is 17") as expired:
            next(iter(client.watch(after_sequence=0)))
        assert expired.value.oldest_sequence == 17
        # Told, a client replays from the oldest kept instead, the blocking and the async one.
        told: list[tuple[int, int]] = []
        replay = client.watch(after_sequence=0, pruned=lambda *said: told.append(said))
        assert [next(replay).sequence for _ in kept] == kept
        replay.close()

        async def first_replayed() -> int:
            async with AsyncClient(server.target) as reader:
                replay = reader.watch(after_sequence=2, pruned=lambda *said: told.append(said))
                async with aclosing(replay) as transitions:
                    async for transition in transitions:
                        return transition.sequence
            raise AssertionError("nothing replayed")

        assert asyncio.run(first_replayed()) == 17
        assert told == [(0, 17), (2, 17)]
        resumed = collect(server, len(kept), after_sequence=16)
        assert [t.sequence for t in resumed] == kept
        with pytest.raises(grpc.RpcError) as ahead:
            list(server.stub().WatchTransitions(pb.WatchTransitionsRequest(after_sequence=500)))
        assert ahead.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "beyond the newest" in ahead.value.details()
        for far in (2**63, 2**64 - 1):  # past what SQLite's integers hold
            with pytest.raises(grpc.RpcError) as ahead:
                list(server.stub().WatchTransitions(pb.WatchTransitionsRequest(after_sequence=far)))
            assert ahead.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "beyond the newest" in ahead.value.details()
        client.close()
    finally:
        server.stop()


def test_a_log_an_older_version_pruned_to_nothing_expires_the_cursors_before_its_last(tmp_path):
    # A version-4 database whose log was pruned to nothing after sequence 7: upgraded, it keeps
    # 7 as a placeholder row, which is no transition. A cursor before 7 missed it: refused.
    path = tmp_path / "pruned-before-5.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=4)
    for _ in range(7):
        db.execute(
            "INSERT INTO transitions (run_kind, run_id, flow_run_id, to_state_id, to_type)"
            " VALUES (1, 'r', 'r', 's', 2)"
        )
    db.execute("DELETE FROM transitions")
    db.close()
    request = pb.WatchTransitionsRequest(after_sequence=6)
    server = ServerProcess(path).start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            list(server.stub().WatchTransitions(request, timeout=20))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "after sequence 6" in caught.value.details()
        assert metadata_of(caught.value) == {"oldest_sequence": "8"}
        client = Client(server.target)
        run = client.create_flow_run("after the upgrade", state=State(StateType.PENDING))
        resumed = collect(server, 1, after_sequence=7)
        assert [(t.sequence, t.run_id) for t in resumed] == [(8, run.id)]
        with pytest.raises(grpc.RpcError) as still:
            list(server.stub().WatchTransitions(request, timeout=20))
        assert "oldest kept is 8" in still.value.details()
        client.close()
    finally:
        server.stop()


def test_malformed_watch_requests_are_invalid_argument(watch_server):
    for request, field in (
        (pb.WatchTransitionsRequest(run_ids=["nope"]), "run_ids[0]"),
        (pb.WatchTransitionsRequest(flow_run_ids=[""]), "flow_run_ids[0]"),
        (pb.WatchTransitionsRequest(state_types=[0]), "state_types"),
        (pb.WatchTransitionsRequest(state_types=[42]), "state_types"),
        (pb.WatchTransitionsRequest(max_batch=1001), "max_batch"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            list(watch_server.stub().WatchTransitions(request, timeout=5))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field)


def test_a_subscriber_behind_gets_many_transitions_per_message(watch_server, client):
    flow_run, task_runs = flow_with_tasks(client, tasks=40)
    finish(client, [t.id for t in task_runs])  # 2 + 40 * 3 transitions of this flow run
    expected = collect(watch_server, 122, flow_run_ids=[flow_run.id], after_sequence=0)
    assert len(expected) == 122 and all(t.sequence for t in expected)
    request = pb.WatchTransitionsRequest(flow_run_ids=[flow_run.id], after_sequence=0, max_batch=50)
    call = watch_server.stub().WatchTransitions(request, timeout=30)
    messages: list[pb.WatchTransitionsResponse] = []
    found: list[pb.Transition] = []
    for message in call:
        messages.append(message)
        found.extend(message.transitions or [message.transition])
        if len(found) >= 122:
            call.cancel()
            break
    assert found == expected  # the same transitions, in order, none twice
    # Replayed from the log, they come at most 50 to a message; only single ones use `transition`.
    assert len(messages) <= 6
    assert all(len(m.transitions) <= 50 for m in messages)
    assert all(m.HasField("transition") == (not m.transitions) for m in messages)
    # The client asks for batches and reads both fields.
    ours = []
    for transition in client.watch(flow_run_ids=[flow_run.id], after_sequence=0):
        ours.append(transition.sequence)
        if len(ours) == 122:
            break
    assert ours == [t.sequence for t in expected]


def watch_command(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


def connected(watcher: subprocess.Popen[str]) -> str:
    """The line the command writes on stderr once its stream is established: what is written
    after it reaches the command live."""
    assert watcher.stderr is not None
    line = watcher.stderr.readline()
    while " - retrying (Ctrl-C to stop)" in line:  # a lost stream is said once, then retried
        line = watcher.stderr.readline()
    assert "watching transitions after #" in line, line
    return line


def test_the_watch_command_prints_a_live_run(watch_server, client):
    flow_run = client.create_flow_run("cli-watched")
    env = {**os.environ, "STATEWARD_API_URL": watch_server.target, "COLUMNS": "200"}
    command = [sys.executable, "-m", "stateward", "watch", "--flow-run", flow_run.id]
    watcher = watch_command(command, env)
    try:
        connected(watcher)
        client.set_state(flow_run.id, State(StateType.PENDING))
        client.set_state(flow_run.id, State(StateType.RUNNING))
        task_run = client.create_task_run("step", flow_run_id=flow_run.id)
        finish(client, [task_run.id])
        client.set_state(flow_run.id, State(StateType.COMPLETED))
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline().strip() for _ in range(5)]
    finally:
        watcher.terminate()
        watcher.wait(10)
    assert " flow " in lines[0] and flow_run.name in lines[0] and "- → Pending" in lines[0]
    assert "Pending → Running" in lines[1] and "(cli-watched)" in lines[1]
    assert " task " in lines[2] and "(step)" in lines[2] and "- → Running" in lines[2]
    assert " task " in lines[3] and "Running → Completed" in lines[3]
    assert " flow " in lines[4] and "Running → Completed" in lines[4]
    assert f" {flow_run.id[:8]} " in lines[4]  # the short id, which the commands take


def test_the_watch_command_replays_from_the_start(watch_server, client):
    flow_run = client.create_flow_run("replayed", state=State(StateType.PENDING))
    env = {**os.environ, "STATEWARD_API_URL": watch_server.target}
    command = [
        sys.executable, "-m", "stateward", "watch", "--from-start", "--run", flow_run.id,
        "--state", "pending",
    ]  # fmt: skip
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert watcher.stdout is not None
        line = watcher.stdout.readline()
    finally:
        watcher.terminate()
        watcher.wait(10)
    assert "replayed" in line and "Pending" in line


def test_kinds_are_told_apart(watch_server, client):
    start = last_sequence(watch_server.db)
    flow_run, (task_run,) = flow_with_tasks(client, 1)
    kinds = {t.run_id: t.run_kind for t in client_watch(client, start, 3)}
    assert kinds == {flow_run.id: RunKind.FLOW_RUN, task_run.id: RunKind.TASK_RUN}


def client_watch(client: Client, after: int, count: int) -> list[Transition]:
    found = []
    for transition in client.watch(after_sequence=after):
        found.append(transition)
        if len(found) == count:
            return found
    return found


def test_the_watch_command_reconnects_when_the_server_restarts(tmp_path):
    server = ServerProcess(tmp_path / "cli-restart.db").start()
    env = {**os.environ, "STATEWARD_API_URL": server.target}
    command = [sys.executable, "-m", "stateward", "watch"]
    watcher = watch_command(command, env)
    try:
        with Client(server.target, wait_for_ready=True) as client:
            connected(watcher)
            run = client.create_flow_run("before-restart", state=State(StateType.PENDING))
            assert watcher.stdout is not None
            assert "before-restart" in watcher.stdout.readline()
            delivered = last_sequence(server.db)
            server.stop()
            server.restart()
            client.set_state(run.id, State(StateType.RUNNING))
            assert "Pending → Running" in watcher.stdout.readline()
            # It says where it resumed: after the last transition it printed.
            assert f"reconnected, watching transitions after #{delivered} " in connected(watcher)
    finally:
        watcher.terminate()
        watcher.wait(10)
        server.stop()


def test_the_async_client_resumes_after_a_restart(tmp_path):
    """And says so as the sync client does: `started` at each connection, `retrying` with the
    error of each broken or refused one."""
    server = ServerProcess(tmp_path / "async-restart.db").start()
    starts: list[int | None] = []
    failures: list[Exception] = []

    async def main() -> list[int]:
        async with AsyncClient(server.target, wait_for_ready=True) as client:
            run = await client.create_flow_run("async", state=State(StateType.RUNNING))
            seen: list[int] = []
            two_seen = asyncio.Event()

            async def follow() -> None:
                async for transition in client.watch(
                    after_sequence=0,
                    max_backoff=0.2,
                    started=starts.append,
                    retrying=failures.append,
                ):
                    seen.append(transition.sequence)
                    if len(seen) == 2:
                        two_seen.set()
                    if transition.to_state.is_completed():
                        return

            follower = asyncio.create_task(follow())
            await client.set_state(run.id, State(StateType.RUNNING))
            await asyncio.wait_for(two_seen.wait(), 30)
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.restart)
            await client.set_state(run.id, State(StateType.COMPLETED))
            await asyncio.wait_for(follower, 30)
            return seen

    try:
        assert asyncio.run(main()) == [1, 2, 3]
    finally:
        server.stop()
    assert starts[0] == 0 and starts[-1] == 2 and len(starts) >= 2
    assert failures and all(isinstance(error, StatewardError) for error in failures)
