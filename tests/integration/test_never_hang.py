"""Sweeps that never hang and never lose an epoch: trial and stall timeouts free the stuck worker, Ctrl-C
cancels and frees, and a trial whose worker or client is killed continues from its last finished epoch."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cluster import ClusterSpec, Target, cluster_workers, connect, open_client
from tests.helpers import (
    cannot_mount_namespaces,
    cli_command,
    cli_env,
    poll_for,
    run_cli,
    start_cli,
    stop_processes,
)
from training import Sweep
from training.protocol import EpochEnded, TrialState, parse_event
from training.sweep import SweepProgress

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

HANGING = "tests.integration.hanging:HangingXor"
SLOW_EPOCHS = {"train_size": 600_000}  # about 1.6 s an epoch on one thread here: room to act between epochs


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        yield c


def _addresses(client) -> dict[str, str]:
    """Worker name -> address."""
    return {str(info["name"]): address for address, info in cluster_workers(client).items()}


def _both_workers_take_work_at_once(client, gone: str | None = None) -> None:
    """A task pinned to each worker completes in seconds: no slot is held by a stuck thread. ``gone``: the
    address of the worker that was running the stuck trial, replaced by a fresh one."""
    def two_workers():
        workers = list(cluster_workers(client))
        return len(workers) == 2 and gone not in workers and workers
    workers = poll_for(two_workers, 60, what="2 workers, the stuck one replaced")
    futures = [client.submit(time.sleep, 0.1, workers=[w], allow_other_workers=False, pure=False,
                             resources={"training_slot": 1}) for w in workers]
    # A held slot would never run its task; a fresh worker still importing torch on a busy machine can take
    # a few seconds: the bound is generous, the figure is printed.
    started = time.monotonic()
    for future in futures:
        future.result(timeout=45)
    print(f"a task pinned to each worker ran within {time.monotonic() - started:.1f} s")


def _epochs_recorded(run_dir, trial) -> int:
    try:
        with sqlite3.connect(run_dir / "store.sqlite", timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM epochs WHERE trial = ?", (trial,)).fetchone()[0]
    except sqlite3.OperationalError:  # still being created
        return 0


@pytest.mark.parametrize(("hang_after", "limits"), [
    # Limits far above what a healthy trial needs (about 1 s) even on a loaded machine, where the healthy
    # trials of the same sweep must not time out.
    (1, {"trial_timeout": 20.0}),  # blocks in its first epoch and never reports one
    (45, {"stall_timeout": 12.0}),  # reports 2 epochs (20 steps each), then blocks: stops sending epochs
])
def test_a_stuck_trial_times_out_its_worker_is_freed_and_the_rest_complete(client, tmp_path, hang_after, limits):
    sweep = Sweep(HANGING, {"lr": [0.1, 0.2, 0.3]}, params={"hang_after": hang_after, "hang_on_lr": 0.2},
                  epochs=8, name="stuck", runs_dir=str(tmp_path), **limits)
    before = _addresses(client)
    started = time.monotonic()
    result = sweep.run(client)
    took = time.monotonic() - started
    limit = next(iter(limits.values()))
    print(f"sweep with a stuck trial ({limits}) ended in {took:.1f} s")
    assert took < limit + 60  # the timeout plus a bounded margin (restart, two short trials, a loaded machine)
    assert list(result.table["state"]) == ["completed", "timed_out", "completed"]
    [stuck] = result.failed
    assert stuck.state == TrialState.TIMED_OUT and stuck.error_type == "TrialTimeout"
    assert ("trial_timeout=20s" if hang_after == 1 else "stall_timeout=12s") in stuck.error
    assert stuck.epochs == (0 if hang_after == 1 else 2)  # its last metrics are kept
    if hang_after > 1:
        assert "val_accuracy" in stuck.metrics
    assert stuck.worker in before and f"its worker {stuck.worker} restarted" in stuck.error
    _both_workers_take_work_at_once(client, gone=before[stuck.worker])


class _Order(SweepProgress):
    """Progress hooks that keep the order of trial starts and ends, by worker."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []

    def on_trial_start(self, number, worker):
        self.seen.append(("start", number, worker))

    def on_trial_end(self, row, counts, best):
        self.seen.append(("end", row.number, row.worker))

    def check_one_at_a_time(self, trials: int) -> None:
        """Each trial started on a worker after the one before it there ended; all ``trials`` ended."""
        running: dict[str, int] = {}  # worker -> its trial the hooks saw start and not end
        for what, number, worker in self.seen:
            if what == "start":
                assert worker not in running, f"trial {number} started on {worker} before {running[worker]} ended"
                running[worker] = number
            else:
                assert running.pop(worker) == number
        assert sorted(n for what, n, _ in self.seen if what == "end") == list(range(trials))


def test_a_stuck_trial_in_a_task_of_several_times_out_and_the_trials_after_it_run_again(
        client, tmp_path, monkeypatch):
    """Short trials run several to a task. One that gets stuck there times out on its own clock (the trials
    of its task before it are recorded as they ended), and the trials after it, stopped with the task, run
    again in a task of their own: every other trial completes, each recorded once. Groups of four here
    (monkeypatched: the sizing from trial lengths is its own test), so the stuck trial (lr 0.6, trial 5) is
    the second of task 4-7. The progress hooks see each trial start after the one before it on its worker
    ended, as the trials ran."""
    from distributed import get_task_stream

    import training.coordinator as coordinator

    monkeypatch.setattr(coordinator._Groups, "size", lambda self, left, slots: min(4, max(1, left)))
    lrs = [0.1 * i for i in range(1, 13)]
    order = _Order()
    sweep = Sweep(HANGING, {"lr": lrs}, params={"hang_after": 1, "hang_on_lr": lrs[5]}, epochs=2,
                  name="grouped", runs_dir=str(tmp_path), trial_timeout=15.0)
    before = _addresses(client)
    with get_task_stream(client) as stream:
        result = sweep.run(client, progress=order)
    keys = sorted({re.sub(r"-[0-9a-f]{8}", "", str(task["key"])) for task in stream.data
                   if str(task["key"]).startswith("trial-grouped-")})
    print(f"trial tasks: {keys}")
    states = list(result.table["state"])
    assert states == ["completed"] * 5 + ["timed_out"] + ["completed"] * 6
    assert "trial-grouped-0000-0003" in keys and "trial-grouped-0008-0011" in keys
    assert "trial-grouped-0006-0007-again1" in keys  # put back after trial 5's task was stopped
    [stuck] = result.failed
    assert stuck.number == 5 and "trial_timeout=15s" in stuck.error and stuck.worker in before
    assert result.table.loc[4, "worker"] == stuck.worker  # its task's first trial ran there and was kept
    assert all(trial.epochs == 2 for trial in result.trials if trial.number != 5)
    order.check_one_at_a_time(12)
    _both_workers_take_work_at_once(client, gone=before[stuck.worker])


def test_a_trial_that_fails_in_a_task_of_several_ends_before_the_next_one_starts(client, tmp_path, monkeypatch):
    """A trial that raises in a task of four is recorded as it fails, not when its task ends: the progress
    hooks see it end before the next trial of its task starts, and every other trial completes."""
    import training.coordinator as coordinator

    monkeypatch.setattr(coordinator._Groups, "size", lambda self, left, slots: min(4, max(1, left)))
    lrs = [0.1 * i for i in range(1, 9)]
    order = _Order()
    result = Sweep("tests.integration.hanging:RaisingXor", {"lr": lrs}, params={"fail_on_lr": lrs[1]}, epochs=2,
                   name="raise", runs_dir=str(tmp_path)).run(client, progress=order)
    assert list(result.table["state"]) == ["completed", "failed"] + ["completed"] * 6
    assert result.failed[0].error_type == "RuntimeError" and "broken on purpose" in result.failed[0].error
    order.check_one_at_a_time(8)


def test_a_trial_that_kills_its_worker_fails_alone_in_a_task_of_several(client, tmp_path, monkeypatch):
    """A trial that kills its worker each time fails (Dask gives up on its task after the allowed worker
    deaths) without taking its task's other trials with it: the one that ended before it is recorded,
    those after it run again in a task of their own and complete. The task held its trials' events back,
    so which trial killed it is not known at first: its trials run again in a task that sends each one's
    events as it ends, and when that fails too, its running trial is the one."""
    from distributed import get_task_stream

    import training.coordinator as coordinator

    monkeypatch.setattr(coordinator._Groups, "size", lambda self, left, slots: min(4, max(1, left)))
    lrs = [0.1 * i for i in range(1, 9)]
    sweep = Sweep("tests.integration.hanging:CrashingXor", {"lr": lrs}, params={"crash_on_lr": lrs[1]},
                  epochs=2, name="crash", runs_dir=str(tmp_path))
    with get_task_stream(client) as stream:
        result = sweep.run(client)
    keys = sorted({re.sub(r"-[0-9a-f]{8}", "", str(task["key"])) for task in stream.data
                   if str(task["key"]).startswith("trial-crash-")})
    print(f"trial tasks: {keys}; trial 1: {result.failed[0].error if result.failed else None}")
    assert list(result.table["state"]) == ["completed", "failed"] + ["completed"] * 6
    [crashed] = result.failed
    assert crashed.number == 1 and crashed.error_type == "KilledWorker"
    assert crashed.error.startswith("The worker process running trial 1, or holding it queued, died each time")
    assert "trial-crash-0002-0003-again2" in keys
    # Trial 0 is recorded once: from its outcome event, or (when the worker died before sending it) from
    # its task's rerun on another worker.
    assert result.trials[0].model_dir == "trials/0000" and result.trials[0].epochs == 2
    _both_workers_take_work_at_once(client)


def test_ctrl_c_in_a_sweep_of_short_trials_leaves_none_running_and_a_rerun_ends_each_once(client, tmp_path):
    """Ctrl-C (a progress hook raising KeyboardInterrupt, as the signal does in the main thread) while tasks
    of several short trials run, their events held back: the workers running them are restarted, no trial
    is left running in the store (the tasks' late events change nothing), and a rerun ends every trial once."""
    from training.errors import Interrupted

    class CtrlC(SweepProgress):
        ended = 0

        def on_trial_end(self, row, counts, best):
            self.ended += 1
            if self.ended == 8:
                raise KeyboardInterrupt

    def sweep():
        return Sweep("xor", {"lr": [0.01 * i for i in range(1, 41)]}, params={"train_size": 6000}, epochs=2,
                     name="ctrlc", runs_dir=str(tmp_path))

    before = set(_addresses(client).values())
    with pytest.raises(Interrupted):
        sweep().run(client, progress=CtrlC())
    with sqlite3.connect(tmp_path / "ctrlc" / "store.sqlite") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    after = set(_addresses(client).values())
    print(f"after Ctrl-C: {states}; workers replaced: {len(before - after)}")
    assert "running" not in states and states.get("completed", 0) >= 7 and sum(states.values()) == 40
    assert before - after  # the workers whose threads ran the cancelled tasks were ended
    _both_workers_take_work_at_once(client)
    result = sweep().run(client, progress=False)
    assert list(result.table["state"]) == ["completed"] * 40
    assert all(t.epochs == 2 and t.model_dir == f"trials/{t.number:04d}" for t in result.trials)
    assert not list((tmp_path / "ctrlc" / "trials").glob("*/checkpoint.pt"))  # finished trials keep none


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_cancels_frees_the_worker_and_says_how_to_resume(client, tmp_path, sig, code):
    """SIGTERM (kill, a batch system's time limit) stops a sweep as Ctrl-C does; exit code 143, not 130."""
    sweep_file = tmp_path / "hang.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "hang", "workload": HANGING, "space": {"lr": [0.2]}, "params": {"hang_after": 1},
        "epochs": 4, "runs_dir": str(tmp_path / "runs")}))
    run_dir = tmp_path / "runs" / "hang"
    before = _addresses(client)
    proc = start_cli("sweep", str(sweep_file), "--address", client.scheduler.address, "--allow-workload", HANGING,
                     importable=True)
    try:
        def running():
            assert proc.poll() is None, proc.communicate()[0]
            if not (run_dir / "store.sqlite").exists():
                return False
            try:
                with sqlite3.connect(run_dir / "store.sqlite", timeout=10) as db:
                    row = db.execute("SELECT state FROM trials WHERE number = 0").fetchone()
            except sqlite3.OperationalError:  # the sweep is still creating its tables
                return False
            return row is not None and row[0] == "running"
        poll_for(running, 120, what="the trial running")
        time.sleep(1)  # let it block inside its first epoch
        os.kill(proc.pid, sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, output
    assert "Interrupted: sweep 'hang': 0 trials finished, 1 cancelled (trial 0) and their workers freed" in output
    assert (f"Resume with: dask-train sweep {sweep_file} --address {client.scheduler.address} --allow-workload "
            f"{HANGING}") in output
    assert "Traceback" not in output and "Aborted!" not in output, output
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        [(state, worker)] = db.execute("SELECT state, worker FROM trials").fetchall()
    assert state == "cancelled" and worker in before
    _both_workers_take_work_at_once(client, gone=before[worker])


def test_a_sweep_whose_output_is_closed_stops_as_ctrl_c_stops_it_and_says_so_on_stderr(client, tmp_path):
    """``dask-train sweep ... | head``: once the reader is gone the sweep cancels and records its running trial
    and frees its worker, says so where it is seen, and exits 141 (as SIGPIPE has it); a failed write ended it
    with exit 1, no line, and the trial left ``running``."""
    sweep_file = tmp_path / "long.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "long", "workload": "xor", "space": {"lr": [0.1]},
                                          "epochs": 100_000, "runs_dir": str(tmp_path / "runs")}))
    before = _addresses(client)
    command = ["sweep", str(sweep_file), "--address", client.scheduler.address]
    proc = subprocess.Popen(cli_command(*command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**cli_env(), "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        seen = []
        while not seen or "epoch 1/" not in seen[-1]:  # the trial trains: its epochs are printed
            line = proc.stdout.readline()
            assert line, "".join(seen) + proc.stderr.read()
            seen.append(line)
        proc.stdout.close()  # the reader goes away, as `| head -N` does
        proc.wait(timeout=60)  # what it says on standard error is a line or two: no pipe fills meanwhile
        said = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 141, said
    assert said.startswith("Interrupted: sweep 'long': 0 trials finished, 1 cancelled (trial 0) and their workers "
                           "freed;"), said
    assert f"Resume with: dask-train sweep {sweep_file} --address {client.scheduler.address}" in said
    assert "Traceback" not in said
    with sqlite3.connect(tmp_path / "runs" / "long" / "store.sqlite") as db:
        [(state, worker)] = db.execute("SELECT state, worker FROM trials").fetchall()
    assert state == "cancelled" and worker in before
    _both_workers_take_work_at_once(client, gone=before[worker])


def test_a_command_with_nothing_to_stop_ends_silently_when_its_output_is_closed():
    """``dask-train workloads | head -0``: exit 141, as SIGPIPE has it, and nothing said (click said nothing
    either, but exited 1, an error to ``set -o pipefail``)."""
    proc = subprocess.Popen(cli_command("workloads"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before it writes anything: its first write finds no reader
    proc.wait(timeout=60)
    assert (proc.returncode, proc.stderr.read()) == (141, "")


def _epoch_events(client, job: str, trial: int) -> list[EpochEnded]:
    events = []
    for _, message in client.get_events("dask-train"):  # an event, or several held back together
        events += [parse_event(m) for m in (message if isinstance(message, list | tuple) else [message])]
    return [e for e in events if isinstance(e, EpochEnded) and e.job == job and e.trial == trial]


def _assert_resumed(client, job, run_dir, rows_before_kill, killed_at, history):
    """After the kill the trial trained on from its last checkpoint: every epoch once in its history, and
    no more than one epoch reported twice."""
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    events = _epoch_events(client, job, 0)
    after = sorted(e.record["epoch"] for e in events if e.time > killed_at)
    before = {e.record["epoch"] for e in events if e.time <= killed_at}
    print(f"epochs reported before the kill {sorted(before)}, by the next attempt {after}")
    assert after and after[0] in (rows_before_kill + 1, rows_before_kill + 2)  # its checkpoint's next epoch
    assert len(before & set(after)) <= 1 and after == sorted(set(after))


def test_a_trial_whose_worker_is_killed_continues_from_its_last_epoch(tmp_path):
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        sweep = Sweep("xor", {"lr": [0.1]}, params=SLOW_EPOCHS, epochs=6, name="killw", runs_dir=str(tmp_path))
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(result=sweep.run(c)), daemon=True)
        thread.start()
        run_dir = tmp_path / "killw"
        recorded = poll_for(lambda: _epochs_recorded(run_dir, 0) >= 3 and _epochs_recorded(run_dir, 0), 120,
                            period=0.05, what="epoch 3 recorded")
        with sqlite3.connect(run_dir / "store.sqlite") as db:
            worker = db.execute("SELECT worker FROM trials WHERE number = 0").fetchone()[0]
        killed_at = time.time()
        os.kill(c.run(os.getpid)[_addresses(c)[worker]], signal.SIGKILL)
        thread.join(timeout=240)
        assert not thread.is_alive()
        result = outcome["result"]
        assert list(result.table["state"]) == ["completed"] and int(result.table["starts"][0]) == 2
        _assert_resumed(c, "killw", run_dir, recorded, killed_at, result.best.history)
    assert not (run_dir / "trials" / "0000" / "checkpoint.pt").exists()  # dropped once the trial finished
    assert (run_dir / "trials" / "0000" / "model.safetensors").is_file()


def test_a_trial_whose_client_is_killed_continues_from_its_last_epoch_on_rerun(client, tmp_path):
    sweep_file = tmp_path / "killc.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "killc", "workload": "xor", "space": {"lr": [0.1]},
                                          "params": SLOW_EPOCHS, "epochs": 6, "runs_dir": str(tmp_path / "runs")}))
    run_dir = tmp_path / "runs" / "killc"
    proc = start_cli("sweep", str(sweep_file), "--address", client.scheduler.address)
    try:
        recorded = poll_for(lambda: _epochs_recorded(run_dir, 0) >= 3 and _epochs_recorded(run_dir, 0), 120,
                            period=0.05, what="epoch 3 recorded")
        with sqlite3.connect(run_dir / "store.sqlite") as db:
            worker = _addresses(client)[db.execute("SELECT worker FROM trials WHERE number = 0").fetchone()[0]]
        killed_at = time.time()
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The scheduler restarts the worker that was training for the vanished client: its slot is free again.
    _both_workers_take_work_at_once(client, gone=worker)
    rerun = run_cli("sweep", str(sweep_file), "--address", client.scheduler.address, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        history = [yaml.safe_load(r[0]) for r in db.execute("SELECT record FROM epochs ORDER BY epoch")]
        starts = db.execute("SELECT starts FROM trials").fetchone()[0]
    assert starts == 2
    _assert_resumed(client, "killc", run_dir, recorded, killed_at, history)
    # The rerun shows the epochs it trained, in order; those of the run before (restored from the
    # checkpoint) are not shown again after them.
    shown = [int(e) for e in re.findall(r"epoch (\d)/6", rerun.stdout)]
    assert shown and shown == sorted(set(shown)) and shown[-1] == 6 and shown[0] > 1, rerun.stdout


def test_ctrl_c_during_a_ddp_job_frees_its_workers_and_the_printed_command_resumes_it(client, tmp_path):
    args = ["ddp", "xor", "--address", client.scheduler.address, "--workers", "2", "--epochs", "40",
            "--runs-dir", str(tmp_path), "--name", "stopme", "--train-size", "150000", "--batch-size", "512"]
    proc = start_cli(*args)
    checkpoint = tmp_path / "stopme" / "checkpoint.pt"
    try:
        poll_for(lambda: proc.poll() is None and checkpoint.is_file(), 120, what="a DDP checkpoint")
        os.kill(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "Interrupted: DDP job 'stopme' stopped and its 2 workers freed" in output, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    resume = output.split("Resume with: ", 1)[1].strip().split()
    assert resume[:2] == ["dask-train", "ddp"] and resume[-1] == "--resume"
    _both_workers_take_work_at_once(client)
    epoch = int(re.search(r"keeps epoch (\d+)", output).group(1))
    finished = run_cli(*resume[1:-1], "--epochs", str(epoch + 1), "--resume", timeout=240)  # one epoch more
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resuming from its checkpoint" in finished.stdout


@pytest.fixture
def workers_without_runs_dir(tmp_path) -> Iterator[tuple[str, Path]]:
    """A cluster whose two workers (each in its own mount namespace, an empty tmpfs over the runs
    directory) cannot see or write the client's runs directory, as on hosts without a shared filesystem.
    Yields the scheduler's address and the runs directory."""
    reason = cannot_mount_namespaces()
    if reason:
        pytest.skip(reason)
    runs = tmp_path / "runs"
    runs.mkdir()
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_TRAIN_SLOT_WORKERS": "2"}
    python = [sys.executable, "-m"]
    processes = [subprocess.Popen([*python, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        poll_for(scheduler_file.is_file, 60, what="the scheduler file")
        address = json.loads(poll_for(scheduler_file.read_text, 10, what="the scheduler address"))["address"]
        for i in range(2):
            worker = shlex.join([*python, "distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--resources", "training_slot=1", "--name", f"cpu-{i}", "--no-dashboard",
                                 "--local-directory", str(tmp_path / f"worker-{i}")])
            processes.append(subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount -t tmpfs none {shlex.quote(str(runs))} && exec {worker}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
        yield address, runs
    finally:
        stop_processes(processes)


def test_without_a_shared_disk_checkpoints_go_through_the_coordinator_and_a_killed_trial_continues(
        workers_without_runs_dir):
    address, runs = workers_without_runs_dir
    with connect(address, timeout=60, min_workers=2, preload=("training.trial",)) as c:
        run_dir = runs / "relay"
        sweep = Sweep("xor", {"lr": [0.1]}, params=SLOW_EPOCHS, epochs=6, name="relay", runs_dir=str(runs))
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(result=sweep.run(c, progress=False)), daemon=True)
        thread.start()
        checkpoint = run_dir / "trials" / "0000" / "checkpoint.pt"
        recorded = poll_for(lambda: checkpoint.is_file() and _epochs_recorded(run_dir, 0) >= 3
                            and _epochs_recorded(run_dir, 0), 120, period=0.05, what="epoch 3 and a checkpoint")
        assert not any(c.run(os.path.isdir, str(run_dir)).values())  # the workers really do not see it
        with sqlite3.connect(run_dir / "store.sqlite") as db:
            worker = db.execute("SELECT worker FROM trials WHERE number = 0").fetchone()[0]
        killed_at = time.time()
        os.kill(c.run(os.getpid)[_addresses(c)[worker]], signal.SIGKILL)  # its nanny starts a fresh one
        thread.join(timeout=240)
        assert not thread.is_alive()
        result = outcome["result"]
        assert list(result.table["state"]) == ["completed"] and int(result.table["starts"][0]) == 2
        _assert_resumed(c, "relay", run_dir, recorded, killed_at, result.best.history)
    assert not checkpoint.exists()  # dropped once the trial finished
    assert (run_dir / "trials" / "0000" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", [["runs"], ["cluster", "info"], ["sweep", "pets-quick"]])
def test_an_address_that_takes_the_connection_and_never_answers_ends_within_the_timeout(command):
    """A dashboard's port or another service: it accepts the TCP connection and says nothing. Dask's connect
    waits for its handshake without end (`runs --timeout 3` hung until killed); the command gives up after
    --timeout, in one line, exit code 1, naming the address."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    taken: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                taken.append(listener.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    try:
        result = run_cli(*command, "--address", address, "--timeout", "2", timeout=90)
    finally:
        listener.close()
        for connection in taken:
            connection.close()
    assert result.returncode == 1, result.stdout + result.stderr
    said = result.stderr.strip()
    assert said == (f"Error: {address} took the connection but did not answer as a Dask scheduler within 2s (is "
                    "it a dashboard's port, or another service?). Pass the scheduler's address (--address)."), said
