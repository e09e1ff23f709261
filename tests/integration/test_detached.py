"""Detached sweeps: started with ``--detach`` (or ``Sweep.submit``), they run in the cluster's scheduler and
finish after the submitting process is SIGKILLed; ``attach`` from a new process shows the progress and the
final table; ``cancel`` stops one and frees its workers; ``runs`` lists them."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster import cluster_workers, connect
from tests.helpers import OutputLines, cli_env, poll_for, run_cli, start_cli

pytestmark = pytest.mark.timeout(300)

#: Submits a sweep detached from Python, says so, then waits to be killed.
_SUBMIT = """
import sys, time
from cluster import connect
from training import Sweep
client = connect(scheduler_file=sys.argv[1], timeout=60)
sweep = Sweep("xor", {"lr": [0.05, 0.1, 0.2, 0.3]}, epochs=4, name="outlives", runs_dir="runs")
handle = sweep.submit(client)
print("submitted", handle.name, handle.run_dir, flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """`dask-train cluster up` with 2 CPU workers, in its own folder (where relative run directories go)."""
    folder = tmp_path_factory.mktemp("detached")
    scheduler_file = folder / "scheduler.json"
    up = start_cli("cluster", "up", "--workers", "2", "--gpus", "off", "--dashboard-address", "127.0.0.1:0",
                   "--scheduler-file", str(scheduler_file), cwd=folder)
    try:
        poll_for(scheduler_file.is_file, 120, what="the cluster's scheduler file")
        yield folder, str(scheduler_file)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def test_a_detached_sweep_outlives_its_client_and_attach_shows_it(cluster):
    folder, scheduler_file = cluster
    submitter = subprocess.Popen([sys.executable, "-c", _SUBMIT, scheduler_file], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=cli_env(), cwd=folder)
    try:
        line = poll_for(lambda: submitter.stdout.readline(), 120, what="the submit")
        assert line.startswith("submitted outlives"), line + submitter.stdout.read()
        os.kill(submitter.pid, signal.SIGKILL)  # right after it returned
        submitter.wait(timeout=30)
    finally:
        if submitter.poll() is None:
            submitter.kill()
    attached = run_cli("attach", "outlives", "--scheduler-file", scheduler_file, timeout=240)
    output = attached.stdout + attached.stderr
    assert attached.returncode == 0, output
    assert "Sweep 'outlives': 4 trials of xor" in output  # from its start, whenever one attaches
    table_rows = [line for line in output.splitlines() if line.strip().split(" ")[0].isdigit()
                  and "completed" in line]
    assert len(table_rows) >= 4, output
    run_dir = folder / "runs" / "outlives"
    assert (run_dir / "results.csv").is_file() and (run_dir / "store.sqlite").is_file()
    listed = run_cli("runs", "--scheduler-file", scheduler_file)
    assert listed.returncode == 0 and "outlives" in listed.stdout and "finished" in listed.stdout, listed.stdout


def test_cancel_stops_a_detached_sweep_and_frees_its_workers(cluster):
    folder, scheduler_file = cluster
    sweep_file = folder / "slow.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "slow", "workload": "xor", "space": {"lr": [0.1, 0.2, 0.3]},
                                          "params": {"train_size": 150_000}, "epochs": 50}))
    started = run_cli("sweep", str(sweep_file), "--detach", "--scheduler-file", scheduler_file, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "dask-train attach slow --scheduler-file" in started.stdout
    with connect(scheduler_file=scheduler_file, timeout=60) as client:
        workers = list(cluster_workers(client))
        poll_for(lambda: _running(folder / "runs" / "slow") == 2, 120, what="both workers training for the sweep")
        cancelled = run_cli("cancel", "slow", "--scheduler-file", scheduler_file, timeout=180)
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert "Cancelled: sweep 'slow': 0 trials finished, 2 cancelled" in cancelled.stdout, cancelled.stdout
        assert "workers freed" in cancelled.stdout
        # Both slots take new work at once: the cancelled trials' threads are gone with their restarted workers.
        def fresh_workers():
            now = list(cluster_workers(client))
            return len(now) == 2 and not set(now) & set(workers) and now
        for address in poll_for(fresh_workers, 90, what="2 fresh workers"):
            client.submit(time.sleep, 0.1, workers=[address], allow_other_workers=False, pure=False,
                          resources={"training_slot": 1}).result(timeout=60)
    listed = run_cli("runs", "--scheduler-file", scheduler_file)
    assert "slow" in listed.stdout and "cancelled" in listed.stdout, listed.stdout
    again = run_cli("cancel", "slow", "--scheduler-file", scheduler_file)
    assert again.returncode == 2, again.stdout + again.stderr
    assert again.stderr.strip() == "Error: Sweep 'slow' is not running (cancelled): nothing to cancel."
    attached = run_cli("attach", "slow", "--scheduler-file", scheduler_file, timeout=120)
    assert attached.returncode == 1, attached.stdout + attached.stderr
    said = attached.stderr.strip()
    assert said.startswith("Error: Sweep 'slow' was cancelled: 0 trials finished, 2 cancelled") and \
        said.endswith("Submitting it again resumes it.") and said.count("'slow'") == 1, said
    # Submitted again changed, it is refused at once (it said "running", then failed in the scheduler); the
    # advice is one that goes with --detach.
    changed = run_cli("sweep", str(sweep_file), "--detach", "--epochs", "51", "--scheduler-file", scheduler_file)
    assert changed.returncode == 2, changed.stdout + changed.stderr
    assert "A different sweep named 'slow' is already in" in changed.stderr, changed.stderr
    assert "(changed: epochs)" in changed.stderr, changed.stderr
    assert "run it in the foreground with --new (new=True; not with --detach)" in changed.stderr, changed.stderr
    assert "is running" not in changed.stdout, changed.stdout


def _running(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "store.sqlite", timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'running'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_detach_needs_a_running_cluster():
    refused = run_cli("sweep", "pets-quick", "--detach")
    assert refused.returncode == 2 and "needs a running cluster" in refused.stdout + refused.stderr


def test_a_cluster_stopped_under_a_detached_sweep_cancels_it_keeping_its_epochs_and_a_rerun_resumes(tmp_path):
    """Ctrl-C of `cluster up` while a detached sweep trains: the sweep is cancelled first, as `cancel` does
    (its trials cancelled, their epochs and checkpoints kept, `cluster up` says so), not failed by the closing
    scheduler (which recorded every trial as failed and deleted their epochs); the same sweep run again
    resumes the cancelled trials after their last epoch."""
    scheduler_file, sweep_file, up = _own_cluster_and_sweep(tmp_path, "stopped")
    try:
        poll_for(scheduler_file.is_file, 120, what="the cluster's scheduler file")
        started = run_cli("sweep", str(sweep_file), "--detach", "--scheduler-file", str(scheduler_file),
                          cwd=tmp_path, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        again = run_cli("sweep", str(sweep_file), "--detach", "--scheduler-file", str(scheduler_file),
                        cwd=tmp_path)
        assert again.returncode == 2, again.stdout + again.stderr  # refused as the user's input, in one line
        said = again.stderr.strip()
        assert said == ("Error: A sweep named 'stopped' is already running on this cluster: attach to it, cancel "
                        "it, or give another --name (name=...)."), said
        store = tmp_path / "runs" / "stopped" / "store.sqlite"
        poll_for(lambda: _epochs(store) >= 2 and _running(store.parent) == 2, 180,
                 what="two epochs recorded while both trials train")
        # A follower sees the cancel (it said "Lost the cluster's scheduler" after its --timeout).
        follower = start_cli("attach", "stopped", "--scheduler-file", str(scheduler_file), cwd=tmp_path)
        lines = OutputLines(follower)
        lines.wait_for("epoch", 60)
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=120)
        followed = lines.rest(timeout=60)
    finally:
        for process in (up, *([follower] if "follower" in locals() else [])):
            if process.poll() is None:
                process.kill()
    assert follower.returncode == 1, followed
    assert "Error: Sweep 'stopped' was cancelled: " in followed and "Lost the cluster" not in followed, followed
    assert up.returncode == 0, out
    assert "Detached sweep 'stopped' cancelled: " in out and "submitting it again resumes it" in out, out
    assert "Traceback" not in out and "Run Failed" not in out, out  # the refusal was not logged as a crash
    with sqlite3.connect(store, timeout=10) as db:
        states = dict(db.execute("SELECT number, state FROM trials"))
        kept = dict(db.execute("SELECT trial, MAX(epoch) FROM epochs GROUP BY trial"))
    assert states == {0: "cancelled", 1: "cancelled"}, states
    assert sum(kept.values()) >= 2, kept
    rerun = run_cli("sweep", str(sweep_file), "--workers", "2", "--gpus", "off", cwd=tmp_path, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for number, last in kept.items():  # each goes on after its last recorded epoch, none trained again
        assert not re.search(rf"trial {number:04d} \S+ epoch [1-{last}]/{EPOCHS}", rerun.stdout), rerun.stdout
    with sqlite3.connect(store, timeout=10) as db:
        done = {n: (state, epochs, starts) for n, state, epochs, starts in
                db.execute("SELECT number, state, epochs, starts FROM trials")}
        epoch_rows = [count for (count,) in db.execute("SELECT COUNT(*) FROM epochs GROUP BY trial")]
    assert done == {0: ("completed", EPOCHS, 2), 1: ("completed", EPOCHS, 2)}, done
    assert epoch_rows == [EPOCHS, EPOCHS], epoch_rows


#: Epochs of the sweeps whose cluster stops under them: long enough that neither trial ends first.
EPOCHS = 8


def _own_cluster_and_sweep(folder: Path, name: str) -> tuple[Path, Path, subprocess.Popen]:
    """A `cluster up` of this test's own (it stops it), and a sweep file of two trials of ~1-4 s an epoch."""
    scheduler_file, sweep_file = folder / "scheduler.json", folder / f"{name}.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": name, "workload": "xor", "space": {"lr": [0.1, 0.2]},
                                          "params": {"train_size": 300_000}, "epochs": EPOCHS}))
    up = start_cli("cluster", "up", "--workers", "2", "--gpus", "off", "--dashboard-address", "127.0.0.1:0",
                   "--scheduler-file", str(scheduler_file), cwd=folder)
    return scheduler_file, sweep_file, up


def _epochs(store: Path) -> int:
    try:
        with sqlite3.connect(store, timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_foreground_sweep_whose_cluster_dies_stops_clearly_and_fails_no_trial(tmp_path):
    """The cluster of a sweep run from this terminal is killed under it: the sweep ends with one line saying its
    cluster is gone, exit code 1, and records no trial as failed (its client's futures were cancelled as the
    connection went: each trial was recorded failed and its epochs deleted); what finished stays."""
    scheduler_file, sweep_file, up = _own_cluster_and_sweep(tmp_path, "lost")
    sweep = None
    try:
        poll_for(scheduler_file.is_file, 120, what="the cluster's scheduler file")
        sweep = start_cli("sweep", str(sweep_file), "--scheduler-file", str(scheduler_file), "--timeout", "5",
                          cwd=tmp_path)
        store = tmp_path / "runs" / "lost" / "store.sqlite"
        poll_for(lambda: _epochs(store) >= 2, 180, what="two epochs recorded")
        os.killpg(up.pid, signal.SIGKILL)  # the whole cluster: scheduler and workers
        out, _ = sweep.communicate(timeout=120)
    finally:
        for process in (up, sweep):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert sweep.returncode == 1, out
    # Its client saw the connection go (the usual way), or the workers stay gone past the grace it gives them.
    assert re.search(r"^Error: (Lost the cluster's scheduler \(it stopped, or the network failed\): the sweep "
                     r"stopped|No worker with a training slot for \d+s: the sweep stopped)", out, re.M), out
    assert "Traceback" not in out, out
    with sqlite3.connect(store, timeout=10) as db:
        states = [state for (state,) in db.execute("SELECT state FROM trials")]
        recorded = db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    assert "failed" not in states and recorded >= 2, (states, recorded)


def test_a_detached_sweep_whose_trials_all_fail_ends_attach_as_a_foreground_sweep_ends(cluster):
    """attach of a detached sweep in which no trial completed said nothing more and exited 0 (its foreground
    twin: "No trial ... completed", exit 1): now it exits 1 naming the first failure."""
    folder, scheduler_file = cluster
    sweep_file = folder / "failing.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "failing", "workload": "charlm", "epochs": 1,
                                          "space": {"hidden": [8, 16]}, "params": {"data": "missing.txt"}}))
    started = run_cli("sweep", str(sweep_file), "--detach", "--scheduler-file", scheduler_file, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    attached = run_cli("attach", "failing", "--scheduler-file", scheduler_file, timeout=120)
    said = attached.stderr.strip()
    assert attached.returncode == 1, attached.stdout + said
    assert re.fullmatch(r"Error: No trial of sweep 'failing' completed \(trial 0: DataError: .*missing\.txt.*\)\.",
                        said), said


def test_runs_attach_and_cancel_need_only_the_scheduler_when_its_workers_are_gone(tmp_path):
    """A detached sweep whose workers are all gone waits for them in the scheduler: `runs`, `attach` and
    `cancel` talk to the scheduler alone (they refused: "Only 0 of 1 workers joined ... run without
    --address"), so it can be seen and cancelled then."""
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m"]
    scheduler = subprocess.Popen([*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), cwd=tmp_path,
                                 start_new_session=True)
    worker = None
    try:
        poll_for(scheduler_file.is_file, 60, what="the scheduler file")
        worker = subprocess.Popen([*dask, "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                                   "--nthreads", "1", "--resources", "training_slot=1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
                                  cwd=tmp_path, start_new_session=True)
        sweep_file = tmp_path / "orphan.yaml"
        sweep_file.write_text(yaml.safe_dump({"name": "orphan", "workload": "xor", "space": {"lr": [0.1, 0.2]},
                                              "params": {"train_size": 150_000}, "epochs": 50}))
        started = run_cli("sweep", str(sweep_file), "--detach", "--scheduler-file", str(scheduler_file),
                          timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        poll_for(lambda: _running(tmp_path / "runs" / "orphan") == 1, 120, what="a trial running")
        os.killpg(worker.pid, signal.SIGKILL)  # its nanny and its worker: the cluster has no worker now
        worker.wait(timeout=30)
        listed = run_cli("runs", "--scheduler-file", str(scheduler_file), "--timeout", "5")
        assert listed.returncode == 0 and "orphan" in listed.stdout and "running" in listed.stdout, listed
        followed = start_cli("attach", "orphan", "--scheduler-file", str(scheduler_file), "--timeout", "5",
                             cwd=tmp_path)
        lines = OutputLines(followed)
        try:
            lines.wait_for("Sweep 'orphan'", 30)
            cancelled = run_cli("cancel", "orphan", "--scheduler-file", str(scheduler_file), "--timeout", "5",
                                timeout=180)
            assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
            assert cancelled.stdout.startswith("Cancelled: sweep 'orphan'"), cancelled.stdout
            output = lines.rest(timeout=60)
        finally:
            if followed.poll() is None:
                followed.kill()
        assert followed.returncode == 1 and "Error: Sweep 'orphan' was cancelled" in output, output
    finally:
        for process in (worker, scheduler):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def test_a_detached_sweep_over_the_schedulers_trial_limit_is_refused_before_it_is_said_running(cluster):
    """The client's DASK_TRAIN_MAX_TRIALS passed the spec; the scheduler's own (the default 10,000) failed it
    after "Detached sweep ... is running" and exit 0: now the submit is refused, saying whose limit it is."""
    from tests.helpers import cli_command

    folder, scheduler_file = cluster
    sweep_file = folder / "over.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "over", "workload": "xor", "search": "random",
                                          "num_trials": 15000, "space": {"lr": {"loguniform": [0.001, 1.0]}}}))
    refused = subprocess.run(cli_command("sweep", str(sweep_file), "--detach", "--scheduler-file", scheduler_file),
                             capture_output=True, text=True, timeout=120,
                             env={**cli_env(), "DASK_TRAIN_MAX_TRIALS": "20000"})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip() == ("Error: The sweep makes 15,000 trials, more than the 10,000 the cluster's "
                                      "scheduler allows: make the space smaller, or start the scheduler with "
                                      "DASK_TRAIN_MAX_TRIALS=N in its environment."), refused.stderr
    assert "is running" not in refused.stdout and not (folder / "runs" / "over").exists()
