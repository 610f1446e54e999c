"""Takes the README's screenshots of the web view (docs/web-view-list.png, docs/web-view-run.png,
docs/web-view-task-run.png)
from real flows run by the SDK against a real server, in Debian's Chromium through Playwright.

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser.conftest import CHROMIUM_ARGS, find_chromium
from tests.support import ROOT, ServerProcess

FLOWS = """
import pathlib, sys, time
from stateward import flow, get_run_logger, task

@task(retries=1, retry_delay_seconds=0.2)
def extract(day: int) -> list[int]:
    get_run_logger().info("reading day %d from the orders table", day)
    time.sleep(0.3)
    return list(range(day + 3))

@task
def transform(rows: list[int]) -> list[int]:
    time.sleep(0.2)
    return [row * 2 for row in rows]

@task
def load(rows: list[int]) -> int:
    get_run_logger().info("loading %d rows", len(rows))
    time.sleep(0.4)
    if len(rows) > 6:
        raise ValueError("the warehouse refused the batch: quota exceeded")
    return len(rows)

@flow(name="report")
def report(rows: int) -> dict:
    time.sleep(0.2)
    return {"rows": rows, "pages": 3, "sent_to": ["ops@example.com"]}

@flow(name="nightly-etl", tags=["nightly"])
def nightly_etl(day: int = 1) -> dict:
    return report(load(transform(extract(day))))

@flow(name="backfill", tags=["adhoc", "team-data"])
def backfill(gate: str) -> None:
    while not pathlib.Path(gate).exists():
        time.sleep(0.1)

if sys.argv[1] == "batch":
    for day in (1, 2, 3):
        nightly_etl(day)
    try:
        nightly_etl(5)
    except ValueError:
        pass
    nightly_etl(2)
else:
    backfill(sys.argv[2])
"""


def main() -> None:
    executable = find_chromium()
    if executable is None:
        sys.exit("needs Chromium: apt-get install chromium")
    from playwright.sync_api import expect, sync_playwright

    docs = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "docs.db", ui=True).start()
        env = {**os.environ, "STATEWARD_API_URL": server.target, "STATEWARD_HOME": folder}
        gate = Path(folder) / "gate"
        try:
            subprocess.run([sys.executable, "-c", FLOWS, "batch"], env=env, cwd=ROOT, check=True)
            running = subprocess.Popen([sys.executable, "-c", FLOWS, "gate", str(gate)], env=env)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=executable, headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1200, "height": 640})
                page.goto(server.ui_url)
                expect(page.locator('#runs tr[data-state="RUNNING"]')).to_have_count(1)
                page.screenshot(path=docs / "web-view-list.png")
                etl = page.locator('#runs tr[data-state="COMPLETED"]', has_text="nightly-etl")
                etl.first.get_by_role("link").click()
                expect(page.locator("#task-runs tbody tr")).to_have_count(4)
                page.screenshot(path=docs / "web-view-run.png", full_page=True)
                page.goto(server.ui_url)
                failed = page.locator('#runs tr[data-state="FAILED"]', has_text="nightly-etl")
                failed.first.get_by_role("link").click()
                page.locator("#task-runs tbody tr", has_text="load").get_by_role("link").click()
                expect(page.locator("#result")).to_contain_text("ValueError")
                expect(page.locator("#log-lines tr")).to_have_count(2)
                page.screenshot(path=docs / "web-view-task-run.png", full_page=True)
                browser.close()
            gate.touch()
            running.wait(30)
        finally:
            server.stop()
    names = ("web-view-list.png", "web-view-run.png", "web-view-task-run.png")
    print("wrote " + ", ".join(str(docs / name) for name in names))


if __name__ == "__main__":
    main()
