"""The web view, measured in a real browser: how long after a SetState answer the runs page shows
the new state, and how long the page takes to load with many runs in the database.

    .venv/bin/python bench/web_view.py [--transitions 100] [--runs 10000]

A real server (subprocess) with its web view; Debian's Chromium, headless, through Playwright.
Latency: one flow run alternates Running and Paused; after each SetState is answered, the page
is watched (a MutationObserver on the run's row) until the row shows the new state. Both sides
read the same wall clock. The baseline, measured in the same run, is a bare HTTP round trip from
the page to the server (GET /api/flow-runs?page_size=1). Load: `--runs` flow runs are created
(in batches), then the page is opened afresh a few times; the figure is the time from the
navigation's start to the first page of rows on screen, with no filter and with a tag filter
that matches none (the whole table is scanned).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.browser.conftest import CHROMIUM_ARGS, find_chromium
from tests.support import ST, ServerProcess, new_flow_run, propose, state

WATCH_ROW = """
runId => {
  window.seen = [];
  const row = document.querySelector(`tr[data-run-id="${runId}"]`);
  let last = row.dataset.state;
  new MutationObserver(() => {
    if (row.dataset.state !== last) {
      last = row.dataset.state;
      window.seen.push([last, performance.timeOrigin + performance.now()]);
    }
  }).observe(row, { attributes: true, attributeFilter: ["data-state"] });
}
"""

ROWS_SHOWN = """
() => {
  new MutationObserver((_, observer) => {
    const rows = document.querySelectorAll("#runs tr").length;
    const summary = document.getElementById("summary");
    if (rows >= 50 || (summary && summary.textContent.startsWith("No flow runs"))) {
      window.rowsShownAt = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true, characterData: true });
}
"""

ROUND_TRIP = """
async () => {
  const start = performance.now();
  await fetch("/api/flow-runs?page_size=1", { cache: "no-store" }).then((r) => r.json());
  return performance.now() - start;
}
"""


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure_latency(
    server: ServerProcess, page, transitions: int
) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    stub = server.stub()
    run = new_flow_run(stub, flow_name="web-latency")
    propose(stub, run.id, ST.STATE_TYPE_RUNNING)
    page.goto(server.ui_url)
    page.wait_for_selector(f'tr[data-run-id="{run.id}"][data-state="RUNNING"]')
    page.wait_for_selector('#live[data-status="live"]')
    page.evaluate(WATCH_ROW, run.id)
    latencies: list[float] = []
    for index in range(transitions):
        wanted = ST.STATE_TYPE_PAUSED if index % 2 == 0 else ST.STATE_TYPE_RUNNING
        answer = propose(stub, run.id, wanted)
        answered = time.time() * 1000
        assert answer.status == pb.SET_STATE_STATUS_ACCEPT, answer
        page.wait_for_function("n => window.seen.length >= n", arg=index + 1, polling=5)
        shown = page.evaluate("i => window.seen[i][1]", index)
        latencies.append(shown - answered)
    baseline = [page.evaluate(ROUND_TRIP) for _ in range(transitions)]
    return latencies, baseline


def seed(server: ServerProcess, runs: int) -> None:
    stub = server.stub()
    tags = ["nightly", "adhoc", "team-a", "team-b"]
    for start in range(0, runs, 100):
        request = pb.ExecuteBatchRequest()
        for index in range(start, min(start + 100, runs)):
            flow_run = runs_pb2.FlowRun(
                flow_name=f"flow-{index % 20}", tags=[tags[index % 4]], parameters={"i": index}
            )
            flow_run.state.CopyFrom(state(ST.STATE_TYPE_PENDING))
            request.operations.add().create_flow_run.flow_run.CopyFrom(flow_run)
        for result in stub.ExecuteBatch(request).results:
            assert not result.HasField("error"), result.error


def measure_load(server: ServerProcess, browser, query: str, times: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
    figures = []
    for _ in range(times):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.add_init_script(f"({ROWS_SHOWN})()")
        page.goto(server.ui_url + query)
        page.wait_for_function("() => window.rowsShownAt !== undefined", polling=10)
        figures.append(page.evaluate("() => window.rowsShownAt"))
        context.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    executable = find_chromium()
    if executable is None:
        sys.exit("needs Chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        server = ServerProcess(Path(folder) / "bench.db", ui=True).start()
        try:
            page = browser.new_page()
            latencies, baseline = measure_latency(server, page, args.transitions)
            page.close()
            print(
                f"SetState answered -> shown in the runs page, over {len(latencies)} transitions:"
            )
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            print(f"  p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   max {max(latencies):6.1f} ms")
            b50, b99 = percentile(baseline, 50), percentile(baseline, 99)
            print(f"  baseline, an HTTP round trip of the page: p50 {b50:.1f} ms  p99 {b99:.1f} ms")
            started = time.monotonic()
            seed(server, args.runs)
            print(f"\n{args.runs:,} flow runs created in {time.monotonic() - started:.1f} s")
            for label, query in (
                ("the runs page, newest 50", ""),
                ("with a tag filter matching none", "#/?tag=no-such-tag"),
            ):
                figures = measure_load(server, browser, query)
                print(
                    f"  {label}: first rows on screen {statistics.median(figures):6.1f} ms "
                    f"after navigation (median of {len(figures)}, min {min(figures):.1f})"
                )
        finally:
            server.stop()
            browser.close()


if __name__ == "__main__":
    main()
