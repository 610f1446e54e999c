"""The web view's JSON API over real HTTP, against a real server: listings with their filters
and pagination, a run's page, the actions, and refusals."""

from __future__ import annotations

import pickle
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from stateward.v1 import orchestration_pb2 as pb
from tests.support import (
    ST,
    ServerProcess,
    new_flow_run,
    new_task_run,
    propose,
    state,
    write_lines,
)


@pytest.fixture
def http(web_server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=web_server.ui_url, timeout=10) as client:
        yield client


@pytest.fixture
def grpc_stub(web_server: ServerProcess):  # type: ignore[no-untyped-def]
    return web_server.stub()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_the_page_loads_with_its_assets_and_allows_no_other_site(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert "<title>Stateward runs</title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert http.get(asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # no external reference


def test_flow_runs_are_listed_newest_first_with_what_the_list_shows(http, grpc_stub) -> None:
    flow = unique("listed")
    first = new_flow_run(grpc_stub, flow_name=flow, tags=["a", "b"], name="first-run")
    second = new_flow_run(grpc_stub, flow_name=flow, initial=ST.STATE_TYPE_PENDING)
    propose(grpc_stub, second.id, ST.STATE_TYPE_RUNNING)
    page = http.get("/api/flow-runs", params={"flow": flow}).json()
    assert [run["id"] for run in page["flow_runs"]] == [second.id, first.id]
    assert page["next_page_token"] == ""
    assert page["sequence"] >= 3
    newest, oldest = page["flow_runs"]
    assert newest["state"]["type"] == "RUNNING" and newest["state"]["name"] == "Running"
    assert newest["start_time"] and newest["end_time"] is None
    assert newest["run_count"] == 1
    assert oldest["name"] == "first-run" and oldest["flow_name"] == flow
    assert oldest["tags"] == ["a", "b"] and oldest["state"]["type"] == "PENDING"
    assert oldest["kind"] == "flow_run"
    assert "result" not in oldest["state"]  # results only on a run's own page


def test_filters_by_flow_state_type_tag_and_time(http, grpc_stub) -> None:
    tag = unique("tag")
    other = unique("other")
    pending = new_flow_run(grpc_stub, flow_name="filtered", tags=[tag])
    running = new_flow_run(grpc_stub, flow_name="filtered", tags=[tag, other])
    propose(grpc_stub, running.id, ST.STATE_TYPE_RUNNING)
    elsewhere = new_flow_run(grpc_stub, flow_name=unique("elsewhere"), tags=[tag])

    def ids(**params: object) -> list[str]:
        answer = http.get("/api/flow-runs", params={"tag": tag, **params})
        assert answer.status_code == 200, answer.text
        return [run["id"] for run in answer.json()["flow_runs"]]

    assert ids() == [elsewhere.id, running.id, pending.id]
    assert ids(flow="filtered") == [running.id, pending.id]
    assert ids(state="running") == [running.id]
    assert ids(state=["PENDING", "RUNNING"], flow="filtered") == [running.id, pending.id]
    assert (
        http.get("/api/flow-runs", params={"tag": [tag, other]}).json()["flow_runs"][0]["id"]
        == running.id
    )
    assert ids(id=pending.id) == [pending.id]

    created = {
        run["id"]: datetime.fromisoformat(run["created"])
        for run in http.get("/api/flow-runs", params={"tag": tag}).json()["flow_runs"]
    }
    since = created[running.id].isoformat()
    assert ids(since=since) == [elsewhere.id, running.id]
    assert ids(until=since) == [pending.id]
    assert ids(since=since, until=created[elsewhere.id].isoformat()) == [running.id]
    assert ids(since=(created[elsewhere.id] + timedelta(seconds=1)).isoformat()) == []
    # As `stateward flow-run ls --since` reads them: without a zone, the local time (the
    # server's, this machine's here); a span before now; a zone's "+" left unescaped.
    local = created[running.id].astimezone().replace(tzinfo=None).isoformat()
    assert ids(since=local) == [elsewhere.id, running.id]
    assert ids(since="1h") == [elsewhere.id, running.id, pending.id]
    assert ids(until="1h") == []
    assert ids(since=created[running.id].astimezone(UTC).isoformat().replace("+", " ")) == [
        elsewhere.id,
        running.id,
    ]


def test_pagination_walks_every_run_once_even_as_new_runs_arrive(http, grpc_stub) -> None:
    flow = unique("paged")
    made = [new_flow_run(grpc_stub, flow_name=flow).id for _ in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"flow": flow, "page_size": 3, **({"page_token": token} if token else {})}
        page = http.get("/api/flow-runs", params=params).json()
        seen += [run["id"] for run in page["flow_runs"]]
        pages += 1
        if pages == 1:
            new_flow_run(grpc_stub, flow_name=flow)  # keyset pages do not shift
        token = page["next_page_token"]
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(made))


def test_a_page_token_only_serves_the_filters_it_was_made_for(http, grpc_stub) -> None:
    flow = unique("token")
    for _ in range(3):
        new_flow_run(grpc_stub, flow_name=flow)
    token = http.get("/api/flow-runs", params={"flow": flow, "page_size": 1}).json()[
        "next_page_token"
    ]
    answer = http.get("/api/flow-runs", params={"flow": "another", "page_token": token})
    assert answer.status_code == 400
    assert "other filters" in answer.json()["error"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"state": "DONE"}, "not a state type"),
        ({"until": "yesterday"}, "'yesterday' is neither a date-time (2026-11-21, "),
        ({"since": "2026-13-01"}, "nor a span before now (30m, 2h, 1d, 1w)"),
        ({"page_size": "-1"}, "must not be negative"),
        ({"page_size": "many"}, "not a number"),
        ({"page_token": "garbage"}, "page token"),
        ({"id": "not-a-uuid"}, "is not a UUID"),
    ],
)
def test_bad_listing_input_is_refused_with_a_message(http, params, says) -> None:
    answer = http.get("/api/flow-runs", params=params)
    assert answer.status_code == 400
    assert says in answer.json()["error"]


def test_a_flow_run_page_has_its_history_and_json_result(http, grpc_stub) -> None:
    run = new_flow_run(grpc_stub, flow_name=unique("detail"), parameters={"x": 1})
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    done = state(ST.STATE_TYPE_COMPLETED, message="all good", result_json='{"rows": [1, 2]}')
    propose(grpc_stub, run.id, done)
    detail = http.get(f"/api/flow-runs/{run.id}").json()
    assert detail["flow_run"]["parameters"] == {"x": 1}
    assert detail["flow_run"]["state"]["result"] == {"kind": "json", "value": {"rows": [1, 2]}}
    assert [(s["type"], s["message"]) for s in detail["states"]] == [
        ("PENDING", ""),
        ("RUNNING", ""),
        ("COMPLETED", "all good"),
    ]
    times = [s["timestamp"] for s in detail["states"]]
    assert times == sorted(times)
    assert detail["flow_run"]["end_time"] == times[-1]


def test_a_pickled_result_is_named_not_shown(http, grpc_stub) -> None:
    run = new_flow_run(grpc_stub, flow_name=unique("pickled"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    propose(grpc_stub, run.id, state(ST.STATE_TYPE_COMPLETED, result_pickle=b"\x80\x04K\x01."))
    result = http.get(f"/api/flow-runs/{run.id}").json()["flow_run"]["state"]["result"]
    assert result == {"kind": "pickle", "bytes": 5}


class _Opens:
    """Unpickled, it opens (creates) a file: a witness that nobody unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_failed_runs_exception_is_shown_by_its_message_never_unpickled(
    http, grpc_stub, tmp_path: Path
) -> None:
    witness = tmp_path / "unpickled"
    blob = pickle.dumps(_Opens(witness))
    run = new_flow_run(grpc_stub, flow_name=unique("failed"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    failed = state(ST.STATE_TYPE_FAILED, message="ValueError: broken", result_pickle=blob)
    propose(grpc_stub, run.id, failed)
    result = http.get(f"/api/flow-runs/{run.id}").json()["flow_run"]["state"]["result"]
    assert result == {"kind": "exception", "message": "ValueError: broken", "bytes": len(blob)}
    assert not witness.exists()


def test_unknown_and_malformed_run_ids(http) -> None:
    missing = http.get(f"/api/flow-runs/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert "no flow run has id" in missing.json()["error"]
    assert http.get("/api/flow-runs/nope").status_code == 400


def test_task_runs_of_a_flow_run(http, grpc_stub) -> None:
    flow_run = new_flow_run(grpc_stub, flow_name=unique("tasks"))
    first = new_task_run(grpc_stub, flow_run.id, task_key="extract")
    second = new_task_run(grpc_stub, flow_run.id, task_key="load")
    new_task_run(grpc_stub, "", task_key="elsewhere")
    page = http.get("/api/task-runs", params={"flow_run_id": flow_run.id}).json()
    assert [run["id"] for run in page["task_runs"]] == [second.id, first.id]
    assert page["task_runs"][0]["task_key"] == "load"
    assert page["task_runs"][0]["flow_run_id"] == flow_run.id
    only = http.get("/api/task-runs", params={"flow_run_id": flow_run.id, "task": "extract"})
    assert [run["id"] for run in only.json()["task_runs"]] == [first.id]


def test_cancel_proposes_cancelling_through_the_rules(http, grpc_stub) -> None:
    running = new_flow_run(grpc_stub, flow_name=unique("cancel"))
    propose(grpc_stub, running.id, ST.STATE_TYPE_RUNNING)
    answer = http.post(f"/api/flow-runs/{running.id}/cancel", json={}).json()
    assert answer["status"] == "ACCEPT"
    assert answer["state"]["type"] == "CANCELLING"
    assert answer["state"]["message"] == "cancelled from the web view"
    # A run no process owns is cancelled at once (the rules replace Cancelling).
    scheduled = new_flow_run(grpc_stub, flow_name=unique("cancel"), initial=ST.STATE_TYPE_SCHEDULED)
    answer = http.post(f"/api/flow-runs/{scheduled.id}/cancel", json={}).json()
    assert answer["status"] == "REJECT" and answer["state"]["type"] == "CANCELLED"
    # A finished run cannot be cancelled: the rules abort, nothing changes.
    propose(grpc_stub, running.id, ST.STATE_TYPE_CANCELLED)
    answer = http.post(f"/api/flow-runs/{running.id}/cancel", json={}).json()
    assert answer["status"] == "ABORT" and answer["reason"]
    latest = grpc_stub.GetFlowRun(pb.GetFlowRunRequest(id=running.id)).flow_run
    assert latest.state.type == ST.STATE_TYPE_CANCELLED


def test_resume_moves_a_paused_run_back_to_running_and_nothing_else(http, grpc_stub) -> None:
    run = new_flow_run(grpc_stub, flow_name=unique("resume"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    refused = http.post(f"/api/flow-runs/{run.id}/resume", json={})
    assert refused.status_code == 409
    assert "not paused (it is Running)" in refused.json()["error"]
    propose(grpc_stub, run.id, ST.STATE_TYPE_PAUSED)
    answer = http.post(f"/api/flow-runs/{run.id}/resume", json={}).json()
    assert answer["status"] == "ACCEPT" and answer["state"]["type"] == "RUNNING"
    assert answer["state"]["message"] == "resumed from the web view"


def test_resume_carries_the_input_a_pause_waits_for(http, grpc_stub) -> None:
    run = new_flow_run(grpc_stub, flow_name=unique("resume-input"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    schema = '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}'
    propose(grpc_stub, run.id, state(ST.STATE_TYPE_PAUSED, run_input_schema=schema))
    missing = http.post(f"/api/flow-runs/{run.id}/resume", json={})
    assert missing.status_code == 400 and "waits for input" in missing.json()["error"]
    assert missing.json()["error"].endswith('give it as the JSON body\'s "run_input"')
    wrong = http.post(f"/api/flow-runs/{run.id}/resume", json={"run_input": {"ok": "yes"}})
    assert wrong.status_code == 400 and "ok" in wrong.json()["error"]
    answer = http.post(f"/api/flow-runs/{run.id}/resume", json={"run_input": {"ok": True}})
    assert answer.json()["status"] == "ACCEPT"
    latest = grpc_stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert latest.state.details.run_input == '{"ok": true}'


def test_changes_from_another_site_are_refused(http, grpc_stub) -> None:
    run = new_flow_run(grpc_stub, flow_name=unique("csrf"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    for headers in ({"Origin": "http://elsewhere.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = http.post(f"/api/flow-runs/{run.id}/cancel", json={}, headers=headers)
        assert answer.status_code == 403
    latest = grpc_stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run
    assert latest.state.type == ST.STATE_TYPE_RUNNING
    own = http.post(
        f"/api/flow-runs/{run.id}/cancel", json={}, headers={"Origin": str(http.base_url)[:-1]}
    )
    assert own.status_code == 200


def test_cancel_of_an_unknown_or_task_run_is_not_found(http, grpc_stub) -> None:
    assert http.post(f"/api/flow-runs/{uuid.uuid4()}/cancel", json={}).status_code == 404
    task_run = new_task_run(grpc_stub, "")
    assert http.post(f"/api/flow-runs/{task_run.id}/cancel", json={}).status_code == 404


def test_a_task_run_page_has_its_history_flow_run_and_exception_never_unpickled(
    http, grpc_stub, tmp_path: Path
) -> None:
    witness = tmp_path / "unpickled"
    blob = pickle.dumps(_Opens(witness))
    flow_run = new_flow_run(grpc_stub, flow_name=unique("task-page"), name="its-flow-run")
    propose(grpc_stub, flow_run.id, ST.STATE_TYPE_RUNNING)
    task_run = new_task_run(grpc_stub, flow_run.id, task_key="check_limits")
    propose(grpc_stub, task_run.id, ST.STATE_TYPE_RUNNING)
    failed = state(ST.STATE_TYPE_FAILED, message="ValueError: too many", result_pickle=blob)
    propose(grpc_stub, task_run.id, failed)
    page = http.get(f"/api/task-runs/{task_run.id}").json()
    run = page["task_run"]
    assert run["id"] == task_run.id and run["task_key"] == "check_limits"
    assert run["state"]["result"] == {
        "kind": "exception",
        "message": "ValueError: too many",
        "bytes": len(blob),
    }
    assert [s["type"] for s in page["states"]] == ["PENDING", "RUNNING", "FAILED"]
    assert page["states"][-1]["message"] == "ValueError: too many"
    assert page["flow_run"] == {
        "id": flow_run.id,
        "name": "its-flow-run",
        "flow_name": flow_run.flow_name,
    }
    assert page["sequence"] >= 3
    assert not witness.exists()


def test_task_run_pages_refuse_unknown_malformed_and_flow_run_ids(http, grpc_stub) -> None:
    flow_run = new_flow_run(grpc_stub, flow_name=unique("not-a-task"))
    missing = http.get(f"/api/task-runs/{uuid.uuid4()}")
    assert missing.status_code == 404 and "no task run has id" in missing.json()["error"]
    assert http.get(f"/api/task-runs/{flow_run.id}").status_code == 404
    assert http.get("/api/task-runs/nope").status_code == 400
    assert http.get(f"/api/task-runs/{uuid.uuid4()}/logs").status_code == 404
    assert http.get(f"/api/task-runs/{flow_run.id}/logs").status_code == 404
    assert http.get(f"/api/flow-runs/{uuid.uuid4()}/logs").status_code == 404
    assert http.get("/api/flow-runs/nope/logs").status_code == 400


def test_a_subflow_names_the_flow_run_of_its_parent_task_run(http, grpc_stub) -> None:
    parent = new_flow_run(grpc_stub, flow_name=unique("parent"))
    standing_for = new_task_run(grpc_stub, parent.id, task_key="child")
    child = new_flow_run(grpc_stub, flow_name=unique("child"), parent_task_run_id=standing_for.id)
    run = http.get(f"/api/flow-runs/{child.id}").json()["flow_run"]
    assert run["parent_task_run_id"] == standing_for.id
    assert run["parent_flow_run"] == {
        "id": parent.id,
        "name": parent.name,
        "flow_name": parent.flow_name,
    }
    top = http.get(f"/api/flow-runs/{parent.id}").json()["flow_run"]
    assert "parent_flow_run" not in top


def test_a_runs_logs_are_its_newest_lines_with_older_and_newer_ones_on_request(
    http, grpc_stub
) -> None:
    flow_run = new_flow_run(grpc_stub, flow_name=unique("logs"))
    task_run = new_task_run(grpc_stub, flow_run.id, task_key="chatty")
    write_lines(grpc_stub, flow_run.id, [f"flow line {i}" for i in range(5)], logger="my.flow")
    write_lines(grpc_stub, flow_run.id, ["<b>task</b> & line"], task_run_id=task_run.id, level=40)

    def messages(path: str, **params: object) -> tuple[list[str], bool]:
        answer = http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        return [line["message"] for line in page["logs"]], page["more"]

    logs = f"/api/flow-runs/{flow_run.id}/logs"
    assert messages(logs) == ([*(f"flow line {i}" for i in range(5)), "<b>task</b> & line"], False)
    assert messages(logs, limit=2) == (["flow line 4", "<b>task</b> & line"], True)
    lines = http.get(logs).json()["logs"]
    first, newest = lines[0], lines[-1]
    assert first["level"] == 20 and first["level_name"] == "INFO"
    assert first["logger"] == "my.flow" and first["task_run_id"] is None
    assert first["timestamp"].endswith("Z")
    assert newest["level_name"] == "ERROR" and newest["task_run_id"] == task_run.id
    assert messages(logs, before=lines[3]["id"], limit=2) == (["flow line 1", "flow line 2"], True)
    assert messages(logs, before=lines[2]["id"], limit=2) == (["flow line 0", "flow line 1"], False)
    assert messages(logs, after=lines[3]["id"], limit=1) == (["flow line 4"], True)
    assert messages(logs, after=lines[4]["id"]) == (["<b>task</b> & line"], False)
    assert messages(logs, after=newest["id"]) == ([], False)
    assert messages(f"/api/task-runs/{task_run.id}/logs") == (["<b>task</b> & line"], False)


def test_a_result_whose_json_holds_a_lone_surrogate_still_shows_its_run(http, grpc_stub) -> None:
    """JSON may escape a lone surrogate ("\\udc80", RFC 8259 allows it; a file name decoded with
    'surrogateescape', say): the run's page answers it escaped, as JSON can, instead of a 500
    that leaves the run without a page."""
    run = new_flow_run(grpc_stub, flow_name=unique("surrogate"))
    propose(grpc_stub, run.id, ST.STATE_TYPE_RUNNING)
    done = state(ST.STATE_TYPE_COMPLETED, result_json='{"path": "\\udc80.txt", "name": "café"}')
    propose(grpc_stub, run.id, done)
    answer = http.get(f"/api/flow-runs/{run.id}")
    assert answer.status_code == 200, answer.text
    value = answer.json()["flow_run"]["state"]["result"]["value"]
    assert value == {"path": "\udc80.txt", "name": "café"}


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"after": "-1"}, "after"),
        ({"before": "x"}, "before"),
        ({"after": "1", "before": "2"}, "not both"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"after": str(2**63)}, "after"),  # beyond SQLite's integers: was a 500
        ({"before": "99999999999999999999999"}, "before"),
    ],
)
def test_bad_log_input_is_refused_with_a_message(http, grpc_stub, params, says) -> None:
    flow_run = new_flow_run(grpc_stub, flow_name=unique("bad-logs"))
    answer = http.get(f"/api/flow-runs/{flow_run.id}/logs", params=params)
    assert answer.status_code == 400
    assert says in answer.json()["error"]
