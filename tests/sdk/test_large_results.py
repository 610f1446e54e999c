"""Results larger than the server stores, end to end against a real server: `persist_result=False`
keeps a value in memory (downstream runs get it; nothing goes to the server; another process is
told it was not persisted); `result_storage=` (or STATEWARD_RESULTS_STORAGE_PATH) writes it to a
file and sends a reference, which another process reads; without either, the value is kept in
memory only (with a warning), unless the run asked for its result to persist: then it fails saying
the ways out; caching hands out stored references. The server's largest message is a limit too."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import uuid
from pathlib import Path

import pytest

from stateward import flow, task
from stateward._results import RESULT_FILE_KEY
from stateward.exceptions import MissingResult, ResultTooLarge
from stateward.filesystems import LocalFileSystem
from stateward.runs import SetStateStatus
from stateward.states import ResultData, State, StateType
from stateward.task_runners import ProcessPoolTaskRunner
from tests.sdk.conftest import python

pytestmark = pytest.mark.usefixtures("sdk_server")

LIMIT = 10_000
BIG = 50_000  # characters: over the limit once encoded, under the server's message size


@pytest.fixture(autouse=True)
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", str(LIMIT))
    monkeypatch.delenv("STATEWARD_RESULTS_STORAGE_PATH", raising=False)


@task
def produce_on_a_worker(n: int) -> str:  # module level: a process pool's worker imports it
    return "w" * n


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def read_in_another_process(run_id: str, kind: str = "task") -> str:
    """What `.result()` of the run's stored state gives in a new process (its repr, or the
    exception's type and message), through the same server."""
    done = python(
        f"""
        import os
        from stateward.client import Client
        with Client(os.environ["STATEWARD_API_URL"]) as client:
            run = client.get_{kind}_run({run_id!r})
            try:
                value = run.state.result()
            except Exception as error:
                print(f"{{type(error).__name__}}: {{error}}")
            else:
                print(f"value of length {{len(value)}}: {{value[:3]!r}}")
        """
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- persist_result=False: in memory only -------------------------------------------------------


def test_a_result_not_persisted_flows_downstream_and_never_reaches_the_server(client) -> None:
    @task(persist_result=False)
    def produce() -> str:
        return "x" * BIG

    @task
    def measure(value: str) -> int:
        return len(value)

    @flow(name=unique("sdk-memory-only"))
    def pipeline() -> tuple[int, int, str]:
        state = produce(return_state=True)
        future = produce.submit()
        return measure(state.result()), measure(future), state.details.task_run_id

    inline, submitted, run_id = pipeline()
    assert (inline, submitted) == (BIG, BIG)
    stored = client.get_task_run(run_id).state
    assert stored is not None and stored.is_completed() and stored.data is None
    with pytest.raises(MissingResult, match="not persisted"):
        stored.result()
    assert read_in_another_process(run_id).startswith("MissingResult: this run's result was not")


def test_an_async_flow_and_task_not_persisting_keep_their_values_in_memory(client) -> None:
    @task(persist_result=False)
    async def produce() -> str:
        return "y" * BIG

    @flow(name=unique("sdk-memory-only-async"), persist_result=False)
    async def pipeline() -> str:
        return await produce()

    state = asyncio.run(pipeline(return_state=True))
    assert state.is_completed() and len(state.result()) == BIG
    stored = client.get_flow_run(state.details.flow_run_id).state
    assert stored is not None and stored.is_completed() and stored.data is None
    assert read_in_another_process(state.details.flow_run_id, "flow").startswith(
        "MissingResult: this run's result was not persisted"
    )


# --- without either option: kept in memory, unless persistence was asked for --------------------


def test_a_result_over_the_limit_not_asked_to_persist_is_kept_in_memory(
    client, caplog: pytest.LogCaptureFixture
) -> None:
    """As the reference, which persists no result unless asked: the run completes, its caller
    gets the value, one warning says what to set to store it; elsewhere it is a MissingResult."""

    @task
    def produce() -> str:
        return "m" * BIG

    @flow(name=unique("sdk-big-in-memory"))
    def pipeline() -> tuple[str, str]:
        state = produce(return_state=True)
        assert state.is_completed() and state.data is None and len(state.result()) == BIG
        return state.details.task_run_id, produce()

    state = pipeline(return_state=True)  # the flow's own result is over the limit too
    assert state.is_completed() and state.data is None
    run_id, value = state.result()
    assert value == "m" * BIG
    warnings = [r.getMessage() for r in caplog.records if "kept in this process only" in r.message]
    assert len(warnings) == 3  # two task runs and the flow run, one each
    assert all("result_storage=" in w and "STATEWARD_RESULTS_STORAGE_PATH" in w for w in warnings)
    stored = client.get_task_run(run_id).state
    assert stored is not None and stored.is_completed() and stored.data is None
    assert read_in_another_process(run_id).startswith("MissingResult: this run's result was not")


@pytest.mark.parametrize("isasync", [False, True], ids=["sync", "async"])
def test_a_result_over_the_limit_fails_a_run_asked_to_persist_naming_the_ways_out(
    isasync: bool,
) -> None:
    if isasync:

        @task(persist_result=True)
        async def produce() -> str:
            return "z" * BIG
    else:

        @task(persist_result=True)  # type: ignore[no-redef]
        def produce() -> str:
            return "z" * BIG

    state = produce(return_state=True)
    if isasync:
        state = asyncio.run(state)
    assert state.is_failed()
    assert "persist_result=False" in state.message and "result_storage=" in state.message
    assert "STATEWARD_RESULTS_STORAGE_PATH" in state.message
    with pytest.raises(ResultTooLarge, match="over the limit of 10,000 bytes"):
        state.result()


def test_a_flow_result_over_the_limit_fails_the_flow_run_asked_to_persist() -> None:
    @flow(name=unique("sdk-big-flow"), persist_result=True)
    def produce() -> list[int]:
        return list(range(BIG))

    with pytest.raises(ResultTooLarge, match="result of flow"):
        produce()


def test_a_cached_task_or_persisting_by_default_requires_its_result_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @task(cache_key_fn=lambda context, arguments: unique("sdk-big-cached"))
    def cached() -> str:
        return "k" * BIG

    @task
    def plain() -> str:
        return "p" * BIG

    assert cached(return_state=True).is_failed()
    assert plain(return_state=True).is_completed()
    monkeypatch.setenv("STATEWARD_RESULTS_PERSIST_BY_DEFAULT", "true")
    with pytest.raises(ResultTooLarge, match="persist_result=False"):
        plain()


def test_on_the_embedded_default_a_large_result_is_kept_in_memory_unless_asked_to_persist(
    tmp_path: Path,
) -> None:
    """No server: the process orchestrates its runs on its home's database, with the default
    limit (2 MiB); a 3 MB result of a plain task completes, one asked to persist fails."""
    done = python(
        """
        from stateward import flow, task
        @task
        def plain() -> bytes:
            return b"e" * 3_000_000
        @task(persist_result=True)
        def persisted() -> bytes:
            return b"e" * 3_000_000
        @flow
        def pipeline() -> None:  # returns None: completes, its failed task run handled
            state = plain(return_state=True)
            print(state.type.name, len(state.result()), state.data)
            state = persisted(return_state=True)
            print(state.type.name, type(state.result(raise_on_failure=False)).__name__)
        state = pipeline(return_state=True)
        print(state.type.name)
        """,
        env={
            "STATEWARD_API_URL": "",
            "STATEWARD_HOME": str(tmp_path),
            "STATEWARD_MAX_RESULT_BYTES": "",
        },
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == ["COMPLETED 3000000 None", "FAILED ResultTooLarge", "COMPLETED"]
    assert done.stderr.count("it is kept in this process only") == 1, done.stderr


def test_a_result_over_the_server_s_message_limit_is_kept_like_one_over_the_limit(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """STATEWARD_MAX_RESULT_BYTES above the server's largest message (4 MiB by default): the
    server's limit is the limit. Kept in memory (not asked to persist), written to result
    storage, or (asked to persist) a failure naming the server's limit and its option; the
    runs never crash."""
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", str(8 * 1024 * 1024))
    huge = 5 * 1024 * 1024

    @task
    def plain() -> bytes:
        return b"h" * huge

    @task(persist_result=True)
    def persisted() -> bytes:
        return b"h" * huge

    @task(result_storage=tmp_path)
    def filed() -> bytes:
        return b"h" * huge

    @flow(name=unique("sdk-over-the-server-limit"))
    def pipeline() -> dict[str, State]:  # a dict: returned as it is, not judged by its states
        return {
            "kept": plain(return_state=True),
            "failed": persisted(return_state=True),
            "written": filed(return_state=True),
        }

    state = pipeline(return_state=True)
    assert state.is_completed() and state.data is None  # over the server's limit too: in memory
    kept, failed, written = state.result().values()
    assert kept.is_completed() and kept.data is None and len(kept.result()) == huge
    assert "4,194,304 bytes at most" in caplog.text and "--max-message-bytes" in caplog.text
    assert failed.is_failed() and "--max-message-bytes" in failed.message
    with pytest.raises(ResultTooLarge, match="4,194,304 bytes at most"):
        failed.result()
    assert written.is_completed() and written.result() == b"h" * huge
    path = Path(str(stored_reference(client, written.details.task_run_id)["path"]))
    assert path.parent == tmp_path and path.stat().st_size > huge


# --- result storage: a file, and a reference on the server --------------------------------------


def stored_reference(client, run_id: str, kind: str = "task") -> dict[str, object]:
    run = client.get_task_run(run_id) if kind == "task" else client.get_flow_run(run_id)
    assert run.state is not None and run.state.data is not None
    assert run.state.data.json is not None and len(run.state.data.json) < 1_000
    reference = json.loads(run.state.data.json)[RESULT_FILE_KEY]
    assert isinstance(reference, dict)
    return reference


def test_result_storage_writes_a_file_that_another_process_reads(client, tmp_path: Path) -> None:
    @task(result_storage=tmp_path / "results")
    def produce() -> str:
        return "s" * BIG

    @task(result_storage=str(tmp_path / "results"))
    def small() -> int:
        return 7

    @flow(name=unique("sdk-stored"))
    def pipeline() -> tuple[str, bool, int]:
        state = produce(return_state=True)
        return state.details.task_run_id, state.result() == "s" * BIG, small()

    run_id, same, seven = pipeline()
    assert same and seven == 7
    reference = stored_reference(client, run_id)
    path = Path(str(reference["path"]))
    assert path.parent == tmp_path / "results" and reference["serializer"] == "json"
    assert json.loads(path.read_text()) == "s" * BIG
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # small results stay inline
    assert read_in_another_process(run_id) == "value of length 50000: 'sss'"
    path.unlink()
    message = read_in_another_process(run_id)
    assert message.startswith("MissingResult: the result was written to")
    assert str(path) in message


def test_an_async_task_and_a_flow_store_their_results_the_same_way(client, tmp_path: Path) -> None:
    @task
    async def produce() -> bytes:
        return b"b" * BIG  # not JSON: pickled into the file

    @flow(name=unique("sdk-stored-async"), result_storage=LocalFileSystem(basepath=tmp_path))
    async def pipeline() -> bytes:
        return await produce()  # the task takes the flow's storage

    state = asyncio.run(pipeline(return_state=True))
    assert state.is_completed() and state.result() == b"b" * BIG
    reference = stored_reference(client, state.details.flow_run_id, "flow")
    assert reference["serializer"] == "pickle"
    assert pickle.loads(Path(str(reference["path"])).read_bytes()) == b"b" * BIG
    (task_run,) = client.list_task_runs(flow_run_ids=[state.details.flow_run_id])
    assert Path(str(stored_reference(client, task_run.id)["path"])).parent == tmp_path
    assert read_in_another_process(state.details.flow_run_id, "flow").startswith(
        "value of length 50000: b'bbb'"
    )


def test_the_storage_setting_is_the_default(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATEWARD_RESULTS_STORAGE_PATH", str(tmp_path / "default"))

    @task
    def produce() -> str:
        return "d" * BIG

    state = produce(return_state=True)
    assert state.is_completed()
    reference = stored_reference(client, state.details.task_run_id)
    assert Path(str(reference["path"])).parent == tmp_path / "default"


def test_a_cache_hit_reads_the_stored_file_in_any_process(client, tmp_path: Path) -> None:
    calls: list[int] = []
    key = unique("sdk-cached-big")

    @task(
        cache_key_fn=lambda context, arguments: f"{key}-{arguments['n']}", result_storage=tmp_path
    )
    def produce(n: int) -> str:
        calls.append(n)
        return "c" * n

    first = produce(BIG, return_state=True)
    second = produce(BIG, return_state=True)
    assert calls == [BIG] and second.name == "Cached"
    assert second.result() == "c" * BIG and second.data == first.data
    program = f"""
        from stateward import task
        @task(cache_key_fn=lambda context, arguments: f"{key}-{{arguments['n']}}")
        def produce(n: int) -> str:
            raise AssertionError("a cache hit does not run")
        state = produce({BIG}, return_state=True)
        try:
            print(state.name, len(state.result()))
        except Exception as error:
            print(state.name, type(error).__name__, error)
        """
    done = python(program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Cached", str(BIG)]
    (path,) = tmp_path.iterdir()
    path.unlink()
    done = python(program)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Cached MissingResult the result was written to")
    assert str(path) in done.stdout


def test_a_value_shaped_like_a_file_reference_is_returned_as_it_is() -> None:
    lookalike = {RESULT_FILE_KEY: {"path": "/etc/passwd", "serializer": "json", "bytes": 1}}

    @task
    def produce() -> dict[str, object]:
        return lookalike

    state = produce(return_state=True)
    assert state.data is not None and state.data.pickle is not None  # not taken for a reference
    assert pickle.loads(state.data.pickle) == lookalike


def test_result_storage_takes_folders_only() -> None:
    def f() -> None: ...

    with pytest.raises(ValueError, match="is a URL"):
        task(result_storage="s3://bucket/results")(f)
    with pytest.raises(TypeError, match="folder's path"):
        flow(result_storage=42)(f)
    assert task(result_storage="~/results")(f).result_folder == Path.home() / "results"


def test_a_task_on_a_process_pool_worker_takes_its_flow_s_storage(client, tmp_path: Path) -> None:
    @flow(
        name=unique("sdk-stored-on-a-worker"),
        task_runner=ProcessPoolTaskRunner(max_workers=1),
        result_storage=tmp_path,
    )
    def pipeline() -> tuple[str, int]:
        future = produce_on_a_worker.submit(BIG)
        return future.task_run_id, len(future.result())

    run_id, length = pipeline()
    assert length == BIG
    assert Path(str(stored_reference(client, run_id)["path"])).parent == tmp_path


def completed_task_with_result(client, result_json: str) -> str:
    """A task run whose Completed state carries `result_json` as another client could write it;
    returns its id."""
    flow_run = client.create_flow_run(unique("crafted"), state=State(StateType.RUNNING))
    run = client.create_task_run(
        unique("crafted"), flow_run_id=flow_run.id, state=State(StateType.RUNNING)
    )
    crafted = State(StateType.COMPLETED, data=ResultData(json=result_json))
    assert client.set_state(run.id, crafted).status is SetStateStatus.ACCEPT
    return run.id


def reference_to(path: object, serializer: str, size: int | None = None) -> str:
    fields: dict[str, object] = {"path": str(path), "serializer": serializer}
    if size is not None:
        fields["bytes"] = size
    return json.dumps({RESULT_FILE_KEY: fields})


def test_a_crafted_reference_never_reads_a_file_stateward_did_not_write(
    client, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('"the secret"')
    hex_named = tmp_path / f"{uuid.uuid4().hex}.json"
    hex_named.write_text('"hex named"')
    crafted = {
        "any file": reference_to(secret, "json"),
        "a relative path": reference_to(f"../{hex_named.name}", "json"),
        "a serializer not its suffix": reference_to(hex_named, "pickle"),
        "a device": reference_to("/dev/zero", "json"),
    }
    for what, result_json in crafted.items():
        run_id = completed_task_with_result(client, result_json)
        message = read_in_another_process(run_id)
        assert message.startswith("MissingResult: the result reference names"), (what, message)
        assert "is not a result file Stateward writes" in message, what
    fifo = tmp_path / f"{uuid.uuid4().hex}.json"
    os.mkfifo(fifo)
    run_id = completed_task_with_result(client, reference_to(fifo, "json"))
    assert read_in_another_process(run_id).startswith("MissingResult: the result file")


def test_a_damaged_result_file_is_a_missing_result(client, tmp_path: Path) -> None:
    truncated = tmp_path / f"{uuid.uuid4().hex}.json"
    truncated.write_text('"abc')
    not_pickle = tmp_path / f"{uuid.uuid4().hex}.pickle"
    not_pickle.write_bytes(b"not a pickle")
    run_id = completed_task_with_result(client, reference_to(truncated, "json"))
    message = read_in_another_process(run_id)
    assert message.startswith("MissingResult: the result file") and "decoded" in message
    run_id = completed_task_with_result(client, reference_to(not_pickle, "pickle"))
    assert "cannot be decoded" in read_in_another_process(run_id)
    run_id = completed_task_with_result(client, reference_to(truncated, "json", size=5000))
    assert "holds 4 bytes, not the 5,000 written" in read_in_another_process(run_id)


def test_result_settings_changed_between_runs_are_read_anew(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result settings are read once per flow run, not again for every task run in it; a
    value changed between runs is what the next run goes by, and so is the current folder a
    relative storage path is taken from. Tasks outside a flow read them at each run."""

    @task(persist_result=True)
    def produce() -> str:
        return "s" * BIG

    @flow
    def produces() -> tuple[str, str]:
        states = [produce(return_state=True) for _ in range(2)]
        assert all(state.is_completed() for state in states)
        return states[0].details.task_run_id, states[1].details.task_run_id

    monkeypatch.setenv("STATEWARD_RESULTS_STORAGE_PATH", "results")
    folders = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        for task_run_id in produces():
            folders.append(Path(str(stored_reference(client, task_run_id)["path"])).parent)
    first, second = tmp_path / "first" / "results", tmp_path / "second" / "results"
    assert folders == [first, first, second, second]
    monkeypatch.delenv("STATEWARD_RESULTS_STORAGE_PATH")
    refused = produce(return_state=True)
    assert refused.is_failed() and "STATEWARD_RESULTS_STORAGE_PATH" in refused.message
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", str(2 * BIG))
    inline = produce(return_state=True)
    assert inline.is_completed() and inline.data is not None
    assert inline.data.json == json.dumps("s" * BIG)  # stored as is: under the new limit
