"""The dashboard's Training page on a real embedded cluster: over HTTP and in a real headless Chromium,
while a sweep runs and after it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from cluster import ClusterSpec, Target, open_client
from tests.browser import Browser, find_chromium
from tests.helpers import poll_for, run_cli
from training import Sweep, train_ddp
from training.dashboard import NAME, enable_page, page_url
from training.space import choice


def need_chromium() -> None:
    if find_chromium() is None:
        if os.environ.get("DASK_TRAIN_REQUIRE_BROWSER"):
            pytest.fail("DASK_TRAIN_REQUIRE_BROWSER is set but there is no chromium on PATH")
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")


SCRIPT = "<script>window.__owned = 1</script><b>bold</b>"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    target = Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                    preload=("training.trial",))
    with open_client(target) as client:
        yield client


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def data(page: str) -> dict[str, Any]:
    return json.loads(get(page + "/data.json")[2])


def job_named(page: str, name: str) -> dict[str, Any] | None:
    return next((j for j in data(page)["jobs"] if j["name"] == name), None)


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class Background:
    """A sweep running in a thread, so the test can look at the page while it trains."""

    def __init__(self, sweep: Sweep, client: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(sweep, client), daemon=True)
        self.thread.start()

    def _run(self, sweep: Sweep, client: Any) -> None:
        try:
            self.result = sweep.run(client, new=True)
        except BaseException as exc:  # re-raised in the test by join()
            self.error = exc

    def join(self, timeout: float = 120) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"sweep still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def test_training_page_and_data_over_http_during_and_after_a_sweep(client, tmp_path):
    page = enable_page(client)
    assert page is not None and page.startswith("http://127.0.0.1:") and page.endswith("/training")
    sweep = Sweep("xor", {"lr": choice([0.05, 0.2, 0.5, 1.0])}, epochs=60, name="http-page",
                  runs_dir=str(tmp_path))
    running = Background(sweep, client)

    def live_epochs():
        job = job_named(page, "http-page")
        if job and job["state"] == "running" and any((t["epoch"] or 0) >= 2 for t in job["trials"]):
            return job
        return None

    during = poll_for(live_epochs, timeout=90, what="a running trial with 2 epochs on /training/data.json")
    assert {t["number"] for t in during["trials"]} == {0, 1, 2, 3}
    assert {t["params"]["lr"] for t in during["trials"]} == {0.05, 0.2, 0.5, 1.0}
    live = [t for t in during["trials"] if t["state"] == "running"]
    assert live and all(t["worker"].startswith("tcp://127.0.0.1:") for t in live)
    assert any("val_accuracy" in t["metrics"] and t["curve"] for t in live)
    status, headers, html = get(page)
    assert status == 200 and b"<title>Training" in html and "text/html" in headers["Content-Type"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    # Served only where the dashboard is: loopback. The machine's other addresses do not answer.
    outside = _non_loopback_address()
    if outside is not None:
        with pytest.raises(urllib.error.URLError):
            get(page.replace("127.0.0.1", outside))

    result = running.join()
    after = poll_for(lambda: (j := job_named(page, "http-page")) and j["state"] == "finished" and j,
                     timeout=30, what="the sweep shown as finished")
    assert after["counts"] == {"completed": 4}
    for trial in after["trials"]:
        row = result.table.set_index("trial").loc[trial["number"]]
        assert trial["epoch"] == 60 and len(trial["curve"]) == 60
        assert trial["metrics"]["val_accuracy"] == pytest.approx(row["final_val_accuracy"])
        assert trial["worker_name"] in ("cpu-0", "cpu-1")
    assert after["best"] == result.best_trial
    # A trailing slash lands on the page; unknown paths under it are not served.
    assert get(page + "/")[2] == html
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(page + "/nothing-here")
    assert missing.value.code == 404


def test_ddp_job_shows_its_ranks_and_curve(client, tmp_path):
    page = enable_page(client)
    train_ddp(client, "xor", {"batch_size": 64}, epochs=3, workers=2, name="ddp-page", runs_dir=str(tmp_path))
    job = poll_for(lambda: (j := job_named(page, "ddp-page")) and j["state"] == "finished" and j,
                   timeout=30, what="the DDP job shown as finished")
    assert job["type"] == "ddp" and [t["number"] for t in job["trials"]] == [0, 1]
    assert len({t["worker"] for t in job["trials"]}) == 2
    assert [p[0] for p in job["trials"][0]["curve"]] == [1, 2, 3] and job["trials"][0]["epoch"] == 3


def test_ddp_command_prints_the_dashboard_and_training_page_at_start(client, tmp_path):
    address = client.scheduler.address
    done = run_cli("ddp", "xor", "--epochs", "2", "--workers", "2", "--address", address, "--name", "cli-page",
                   "--runs-dir", str(tmp_path), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    dashboard = next(i for i, line in enumerate(lines) if line.startswith("Dashboard: http://127.0.0.1:"))
    assert re.fullmatch(r"Training page: http://127\.0\.0\.1:\d+/training", lines[dashboard + 1])
    first_epoch = next(i for i, line in enumerate(lines) if line.split()[:1] == ["1"])
    assert dashboard < first_epoch  # at start, before training output
    page = lines[dashboard + 1].split()[-1]
    poll_for(lambda: (job_named(page, "cli-page") or {}).get("state") == "finished", timeout=30,
             what="the CLI's DDP job shown as finished")


def test_page_in_headless_chromium_during_a_sweep(client, tmp_path):
    need_chromium()
    page = enable_page(client)
    sweep = Sweep("tests.integration.tagged:TaggedXor", {"lr": choice([0.1, 0.5, 1.0])},
                  params={"tag": SCRIPT}, epochs=80, name="browser-page", runs_dir=str(tmp_path / "runs"))
    running = Background(sweep, client)
    with Browser(tmp_path) as browser:
        browser.open(page)
        newest = "document.querySelector('section.job')"  # jobs are listed newest first
        browser.wait_for(f"{newest} && {newest}.querySelector('.name').textContent === 'browser-page' && "
                         f"{newest}.querySelector('.badge').textContent === 'running' && "
                         f"{newest}.querySelectorAll('svg.chart polyline').length >= 1",
                         timeout=90, what="the running sweep with a drawn curve")
        rows = browser.evaluate(f"[...{newest}.querySelectorAll('tr.trial')]"
                                ".map(r => [...r.cells].map(c => c.textContent))")
        assert [r[0] for r in rows] == ["0", "1", "2"]
        assert "running" in {r[1] for r in rows}
        # The tag is the same in every trial, so it is not a column; lr is, and states and workers are there.
        header = browser.evaluate(f"[...{newest}.querySelector('thead tr').cells].map(c => c.textContent)")
        assert header[:4] == ["trial", "state", "worker", "lr"]
        points = browser.evaluate(f"{newest}.querySelector('svg.chart polyline').getAttribute('points')")
        assert len(points.split()) >= 1
        browser.screenshot(tmp_path / "training-running.png")

        running.join()
        newest = "document.querySelector('section.job')"  # jobs are listed newest first
        browser.wait_for(f"{newest}.querySelector('.badge').textContent === 'finished' && "
                         f"{newest}.querySelectorAll('svg.chart polyline.best').length === 1",
                         timeout=30, what="the finished sweep with its best trial highlighted")
        assert browser.evaluate(f"{newest}.querySelectorAll('svg.chart polyline').length") == 3
        shot = browser.screenshot(tmp_path / "training.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert browser.evaluate("1") == 1  # flush the events that arrived after the last command
        assert browser.errors == []


def test_page_shows_markup_in_parameters_as_text(client, tmp_path):
    need_chromium()
    page = enable_page(client)
    Sweep("tests.integration.tagged:TaggedXor", {"tag": choice([SCRIPT, "plain"])}, epochs=2,
          name="markup-page", runs_dir=str(tmp_path / "runs")).run(client)
    raw = get(page + "/data.json")[2]
    assert SCRIPT.encode() not in raw and b"\\u003cscript>" in raw  # "<" escaped even inside the JSON
    with Browser(tmp_path) as browser:
        browser.open(page)
        browser.wait_for("[...document.querySelectorAll('section.job .name')].some(n => n.textContent === "
                         "'markup-page')", timeout=30, what="the markup-page sweep")
        texts = browser.evaluate("[...[...document.querySelectorAll('section.job')].find(s => "
                                 "s.querySelector('.name').textContent === 'markup-page')"
                                 ".querySelectorAll('tbody td')].map(c => c.textContent)")
        assert SCRIPT in texts
        assert browser.evaluate("document.querySelectorAll('main script, main b').length") == 0
        assert browser.evaluate("window.__owned === undefined")
        assert browser.evaluate("1") == 1
        assert browser.errors == []


def _plugins(dask_scheduler) -> list[str]:
    return sorted(dask_scheduler.plugins)


def test_scheduler_started_with_the_preload_serves_the_page_from_the_start(tmp_path):
    """The README's line for a scheduler users start themselves: `dask scheduler --preload training.dashboard`."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    process = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                                str(scheduler_file), "--preload", "training.dashboard"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll_for(scheduler_file.exists, timeout=60, what="the scheduler file")
        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            assert NAME in client.run_on_scheduler(_plugins)  # installed by the preload, no client asked
            page = page_url(client.dashboard_link)
            assert json.loads(get(page + "/data.json")[2])["jobs"] == []
            status, _, html = get(page)
            assert status == 200 and b"No sweep or DDP job has run" in html
    finally:
        process.terminate()
        process.wait(timeout=30)
