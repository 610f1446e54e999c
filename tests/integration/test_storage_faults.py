"""A database that cannot take writes for a while: a full disk, a read-only file, a lock held
by another program. Writes answer RESOURCE_EXHAUSTED or UNAVAILABLE naming
the cause, health says NOT_SERVING meanwhile, and writes work again once the cause is gone.

The disk is a small tmpfs mounted for the test, which needs root and a kernel that lets this
process mount; elsewhere the full-disk test is skipped, saying why (never under CI=true as root,
where it must run)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.exceptions import StatusCode
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from stateward_service.store import Store, storage_unavailable
from tests.support import ServerProcess, new_flow_run, running_server, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _mount(folder: Path, options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    why = "mounting a tmpfs needs root" if os.geteuid() != 0 else ""
    if not why:
        mounted = _mount(folder, "size=16m,mode=0755")
        why = "" if mounted.returncode == 0 else f"cannot mount a tmpfs: {mounted.stderr.strip()}"
    if why:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"under CI as root the storage fault tests must run: {why}")
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def health(server: ServerProcess) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=20).status)


def big_run(megabytes: float) -> pb.CreateFlowRunRequest:
    run = runs_pb2.FlowRun(flow_name="big")
    run.parameters.update({"blob": "x" * int(megabytes * 1024 * 1024)})
    return pb.CreateFlowRunRequest(flow_run=run)


def fill(folder: Path) -> Path:
    """Fill the file system holding `folder` to the last byte."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 512, 1):
            try:
                while os.write(descriptor, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(descriptor)
    return filler


def test_a_full_disk_is_resource_exhausted_and_writes_resume_when_space_returns(small_disk):
    server = ServerProcess(small_disk / "full.db").start()
    try:
        stub = server.stub()
        new_flow_run(stub)
        filler = fill(small_disk)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in range(20):  # the WAL's slack absorbs small writes; these do not fit
                stub.CreateFlowRun(big_run(1), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "full" in caught.value.details()
        wait_until(lambda: health(server) == NOT_SERVING, what="health to say NOT_SERVING")
        filler.unlink()
        wait_until(lambda: health(server) == SERVING, what="health to say SERVING again")
        created = stub.CreateFlowRun(big_run(1), timeout=30).flow_run
        assert stub.GetFlowRun(pb.GetFlowRunRequest(id=created.id)).flow_run.id == created.id
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def test_a_read_only_database_is_named_as_the_cause(tmp_path):
    # A file system cannot be remounted read-only under an open database ("busy"), and root
    # writes through file modes: SQLite's own read-only mode gives the same refusal.
    path = tmp_path / "ro.db"
    Store(path).close()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            conn.execute("UPDATE schema_version SET version = version")
    finally:
        conn.close()
    failure = storage_unavailable(caught.value, path)
    assert failure is not None and failure.code == StatusCode.UNAVAILABLE
    assert "read-only" in failure.message and str(path) in failure.message


def test_a_database_locked_by_another_program_is_unavailable(tmp_path):
    with running_server(tmp_path) as server:
        stub = server.stub()
        new_flow_run(stub)
        other = sqlite3.connect(server.db, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateFlowRun(
                    pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="locked")),
                    timeout=60,
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "locked by another program" in caught.value.details()
        finally:
            other.execute("ROLLBACK")
            other.close()
        run = new_flow_run(stub, flow_name=f"after-{uuid.uuid4().hex[:6]}")
        assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.id == run.id


def test_a_checkpoint_the_full_disk_refuses_is_said_once_not_at_every_tick(small_disk, tmp_path):
    # The log beside the test, not on the full disk (where its lines could not be written).
    database = small_disk / "full.db"
    server = ServerProcess(database, log_path=tmp_path / "server.log").start()
    refused = "could not checkpoint the database"
    try:
        stub = server.stub()
        new_flow_run(stub)
        # A reader's snapshot keeps the next commit's frames in the WAL (a checkpoint copies
        # none past it) while the disk fills: copying them needs the database file to grow.
        reader = sqlite3.connect(database, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM transitions").fetchone()
        stub.CreateFlowRun(big_run(1), timeout=30)
        filler = fill(small_disk)
        reader.execute("COMMIT")
        reader.close()
        wait_until(lambda: refused in server.output(), timeout=30, what="a refused checkpoint")
        # The checkpointer looks every 50 ms: over the next 3 s (an observation window, not a
        # wait for an event) a warning per try would be about 60 lines of the same.
        window = time.monotonic() + 3.0
        wait_until(lambda: time.monotonic() > window, timeout=30, what="the window's end")
        assert server.output().count(refused) == 1, server.output()[-2000:]
        filler.unlink()
        wait_until(
            lambda: "the database checkpoints again" in server.output(),
            timeout=30,
            what="the checkpointer to say it copies again",
        )
        created = stub.CreateFlowRun(big_run(1), timeout=30).flow_run
        assert stub.GetFlowRun(pb.GetFlowRunRequest(id=created.id)).flow_run.id == created.id
    finally:
        server.stop()
    assert "Traceback" not in server.output()
