"""Cold start: `import stateward` loads no gRPC, protobuf or server code (they cost most of a
cold import); they load when a flow first runs or a client is first looked up. Each check runs in
a fresh interpreter, whose `sys.modules` is the truth."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import stateward
from tests.sdk.conftest import python

# Modules a script that only imports stateward (and defines flows) must not pay for.
HEAVY = (
    "stateward_service",  # the server
    "sqlite_utils",
    "sqlite3",
    "prometheus_client",
    "grpc",
    "grpc_health.v1",  # the health service's messages
    "grpc_reflection.v1alpha",
    "google.protobuf",
    "stateward.v1",  # generated code
    "pydantic",
)

REPORT = """
import json, sys
heavy = {heavy!r}
print(json.dumps(sorted(
    m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)
)))
"""


def loaded_heavy_modules(setup: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The modules of `heavy` (and their submodules) loaded after running `setup` cold."""
    code = textwrap.dedent(setup) + REPORT.format(heavy=heavy)
    done = python(code, env={"STATEWARD_API_URL": ""})
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_import_stateward_loads_no_grpc_protobuf_or_server_code():
    assert loaded_heavy_modules("import stateward") == []


def test_import_stateward_loads_only_its_own_init():
    # Every public name is lazy: the decorators, the engine, asyncio and the rest load on use.
    heavy = ("stateward", "asyncio", "concurrent.futures", "uuid", "tempfile", "logging")
    assert loaded_heavy_modules("import stateward", heavy) == ["stateward"]


def test_defining_flows_and_tasks_loads_none_of_it_either():
    setup = """
    from stateward import flow, task, get_run_logger
    @task(retries=2)
    def add(x: int) -> int:
        return x + 1
    @flow(log_prints=True)
    def main(n: int = 1) -> int:
        return add(n)
    """
    assert loaded_heavy_modules(setup) == []


def test_a_first_flow_on_the_embedded_default_loads_only_what_it_needs(tmp_path):
    # The server's settings are validated by pydantic only when some are given; the schema is
    # plain SQL; jsonschema waits for a pause with a schema; the web view, metrics and health
    # service for a server that serves them. The calls of a flow, its run logs included, go to
    # the orchestrator in the vocabulary: no gRPC, no protobuf, no generated code.
    setup = """
    from stateward import flow, task, get_run_logger
    from stateward.runtime import flow_run
    @task
    def one() -> int:
        get_run_logger().info("one is one")
        return 1
    @flow(log_prints=True)
    def first() -> str:
        print("first got", one())
        return flow_run.id
    first_run_id = first()
    """
    heavy = (
        "pydantic",
        "sqlite_utils",
        "jsonschema",
        "referencing",
        "prometheus_client",
        "grpc",
        "grpc_health.v1",
        "google.protobuf",
        "stateward.v1",  # generated code
        "stateward.wire",
        "stateward._transport",
        "starlette",
        "uvicorn",
        "typer",
        "psycopg",
    )
    # Then, with the verdict printed, the lines read back (this read may load anything).
    read_back = """
    from stateward import get_client
    print(json.dumps([entry.message for entry in get_client().list_logs(first_run_id)]))
    """
    code = textwrap.dedent(setup) + REPORT.format(heavy=heavy) + textwrap.dedent(read_back)
    done = python(code, env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    *_, loaded, logged = done.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    messages = json.loads(logged)
    assert any(message.endswith(" - one is one") for message in messages), messages
    assert any(message.endswith(" - first got 1") for message in messages), messages


def test_renewed_leases_and_held_back_cache_entries_load_no_protocol_either(tmp_path):
    # A task that runs past a third of its lease has it renewed; a cached task called in a
    # task hands its cache entry to the outer one, which writes it when it completes: both
    # calls go to the orchestrator in the vocabulary too.
    setup = """
    import time
    from stateward import flow, get_client, task
    from stateward.cache_policies import INPUTS
    from stateward.runtime import task_run

    @task(cache_policy=INPUTS)
    def inner(x: int) -> int:
        return x

    @task
    def outer(x: int) -> bool:
        lease = lambda: get_client().get_task_run(task_run.id).lease_expires
        first, deadline = lease(), time.monotonic() + 30
        while lease() == first and time.monotonic() < deadline:
            time.sleep(0.05)
        inner(x)
        return lease() != first

    @flow
    def main() -> bool:
        return outer(1)

    assert main(), "the lease was never renewed"
    again = main(return_state=True)
    assert again.is_completed()
    """
    heavy = ("grpc", "google.protobuf", "stateward.v1", "stateward.wire", "stateward._transport")
    code = (
        textwrap.dedent(setup)
        + REPORT.format(heavy=heavy)
        + textwrap.dedent(
            """
        from stateward import get_client
        runs = get_client().list_task_runs(task_keys=[inner.task_key])
        print(json.dumps(sorted(run.state.name for run in runs)))
        """
        )
    )
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path), "STATEWARD_LEASE_SECONDS": "3"}
    done = python(code, env=env)
    assert done.returncode == 0, done.stderr
    *_, loaded, names = done.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    assert json.loads(names) == ["Cached", "Completed"]  # the second found the entry written


def test_watching_on_the_embedded_default_loads_no_protocol_either(tmp_path):
    # The stream of this process's broadcaster, in the vocabulary: a replay from a cursor,
    # then live with no gap and no duplicate, filtered; refusals as the RPC's.
    setup = """
    import threading
    from stateward import flow, get_client
    from stateward.exceptions import FailedPrecondition, InvalidArgument
    from stateward.states import StateType

    @flow
    def hello() -> int:
        return 1

    hello()  # Pending, Running, Completed: sequences 1 to 3
    client = get_client()
    seen, completed, replayed = [], [], threading.Event()

    def follow(into, count, **filters):
        for transition in client.watch(after_sequence=0, **filters):
            into.append(transition)
            if len(into) == 3:
                replayed.set()
            if len(into) == count:
                return

    only_completed = {"state_types": [StateType.COMPLETED]}
    threads = [
        threading.Thread(target=follow, args=(seen, 6)),
        threading.Thread(target=follow, args=(completed, 2), kwargs=only_completed),
    ]
    for thread in threads:
        thread.start()
    assert replayed.wait(30)
    hello()  # live: 4 to 6
    for thread in threads:
        thread.join(30)
    assert [t.sequence for t in seen] == [1, 2, 3, 4, 5, 6], seen
    assert [t.to_state.name for t in seen[:3]] == ["Pending", "Running", "Completed"]
    assert [t.sequence for t in completed] == [3, 6]
    # Each reader's states are its own (a result read from one stays with that reader).
    assert completed[0].to_state == seen[2].to_state
    assert completed[0].to_state is not seen[2].to_state
    for bad, refusal in (
        ({"after_sequence": 10**6}, FailedPrecondition),
        ({"run_ids": ["x"]}, InvalidArgument),
    ):
        try:
            next(iter(client.watch(**bad)))
        except refusal as error:
            print(type(error).__name__, error)
        else:
            raise AssertionError(bad)
    """
    heavy = ("grpc", "google.protobuf", "stateward.v1", "stateward.wire", "stateward._transport")
    code = textwrap.dedent(setup) + REPORT.format(heavy=heavy)
    done = python(code, env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    *_, ahead, not_an_id, loaded = done.stdout.strip().splitlines()
    assert json.loads(loaded) == []
    assert ahead.startswith("FailedPrecondition after_sequence 1000000 is beyond the newest")
    assert not_an_id.startswith("InvalidArgument run_ids[0]: 'x' is not a UUID")


def test_a_remote_client_loads_no_server_metrics_or_health_code():
    # The client needs gRPC and protobuf; the health messages load only for a reachability check.
    setup = "from stateward import Client\nClient('127.0.0.1:9')"
    heavy = (
        "stateward_service",
        "sqlite_utils",
        "prometheus_client",
        "grpc_health.v1",
        "grpc_reflection.v1alpha",
    )
    assert loaded_heavy_modules(setup, heavy) == []


def test_the_lazy_names_agree_with_what_type_checkers_are_told():
    # The TYPE_CHECKING imports of stateward/__init__.py and its table of lazy names must say
    # the same thing, name by name, and cover __all__ exactly.
    source = Path(stateward.__file__).read_text()
    checked: dict[str, str | None] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                for alias in statement.names:
                    module = None if statement.module == "stateward" else statement.module
                    checked[alias.asname or alias.name] = module
    assert checked == stateward._LAZY
    assert set(stateward.__all__) == set(checked)


def test_the_lazy_names_are_the_modules_own_objects():
    done = python(
        """
        import stateward, stateward.client, stateward._embedded
        assert stateward.Client is stateward.client.Client
        assert stateward.AsyncClient is stateward.client.AsyncClient
        assert stateward.get_client is stateward._embedded.get_client
        assert {"Client", "AsyncClient", "get_client"} <= set(dir(stateward))
        try:
            stateward.no_such_name
        except AttributeError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "module 'stateward' has no attribute 'no_such_name'" in done.stdout
