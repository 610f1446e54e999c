"""Quickstart: a flow with tasks, a retry, a failure caught by a hook and a cache hit, then every
run's state history as the server recorded it.

    make run        (or: .venv/bin/python examples/quickstart.py)

No server to start: without STATEWARD_API_URL the SDK runs one inside this process, on
$STATEWARD_HOME/stateward.db (~/.stateward by default). Look at the runs afterwards with
`.venv/bin/stateward flow-run ls` and `.venv/bin/stateward flow-run inspect <id>`.
"""

from __future__ import annotations

from datetime import timedelta

from stateward import flow, get_client, task, task_input_hash

calls = {"fetch": 0, "score": 0}


@task(retries=2, retry_delay_seconds=0.2)
def fetch_orders() -> list[dict[str, int]]:
    """Fails on its first attempt, like a flaky network call, then succeeds on the retry."""
    calls["fetch"] += 1
    if calls["fetch"] == 1:
        raise ConnectionError("the orders service timed out")
    return [{"id": 1, "amount": 30}, {"id": 2, "amount": 12}]


def report_failure(task, task_run, state) -> None:
    print(f"  on_failure hook: task run {task_run.name!r} failed: {state.message}")


@task(on_failure=[report_failure])
def check_limits(orders: list[dict[str, int]]) -> None:
    too_large = [order["id"] for order in orders if order["amount"] > 25]
    if too_large:
        raise ValueError(f"orders {too_large} are over the limit")


@task(cache_key_fn=task_input_hash, cache_expiration=timedelta(hours=1))
def score(orders: list[dict[str, int]]) -> int:
    calls["score"] += 1
    return sum(order["amount"] for order in orders)


@flow(name="quickstart")
def quickstart() -> int:
    orders = fetch_orders()
    check_limits(orders, return_state=True)  # keep going: the hook reported the failure
    first = score(orders)
    second = score(orders)  # same inputs: served from the cache, not computed again
    return first + second


def main() -> None:
    print("Running the flow:")
    total = quickstart()
    print(
        f"  result: {total} (score computed {calls['score']} time(s), fetch tried {calls['fetch']})"
    )
    client = get_client()
    flow_run = next(client.list_flow_runs(flow_names=["quickstart"], limit=1))
    print(f"\nState histories (flow run {flow_run.name}, id {flow_run.id}):")
    runs = [(f"flow run {flow_run.name}", flow_run.id)]
    for task_run in reversed(list(client.list_task_runs(flow_run_ids=[flow_run.id]))):
        runs.append((f"task run {task_run.name} ({task_run.task_key})", task_run.id))
    for label, run_id in runs:
        history = " -> ".join(state.name for state in client.list_states(run_id))
        print(f"  {label:<40} {history}")


if __name__ == "__main__":
    main()
