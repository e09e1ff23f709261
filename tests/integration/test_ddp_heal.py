"""DDP jobs that heal: a hung (SIGSTOPped) rank is named within its timeout and the workers stay usable, a
killed rank's job restarts from its checkpoint by itself (on fewer ranks when its worker never comes back),
and a job whose workers cannot write the client's runs directory still brings its model and checkpoint home
and resumes. Real LocalClusters, real gloo, real signals."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import TRAINING_SLOT, ClusterSpec, Target, cluster_workers, open_client
from tests.helpers import ROOT, poll_for
from training.ddp import DDPProgress, train_ddp
from training.ddp_run import Placement, _outcomes
from training.ddp_watch import Attempt
from training.errors import DDPJobFailed
from training.loop import read_checkpoint

pytestmark = pytest.mark.timeout(300)

SLOW_EPOCHS = {"train_size": 300_000, "batch_size": 1000}  # ~0.6 s an epoch on 2 ranks here: room to act mid-job
CLUSTER = ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0")


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=CLUSTER, preload=("training.rank",))) as c:
        yield c


def _free_slots(client) -> int:
    workers = cluster_workers(client)
    busy = client.processing()
    return sum(1 for a, w in workers.items() if w.get("resources", {}).get(TRAINING_SLOT) and not busy.get(a))


def _wait_for_free_slots(client, count=2):
    poll_for(lambda: _free_slots(client) >= count, 90, what=f"{count} free slot workers")


def _pid(client, worker, nanny=False) -> int:
    return client.run(os.getpid, workers=[worker], nanny=nanny)[worker]


class _AfterEpochOne(DDPProgress):
    """Does ``act(placements)`` once rank 0 reported epoch 1; records every epoch and restart it is told."""

    def __init__(self, act):
        self.act, self.placements, self.epochs, self.restarts, self.acted_at = act, [], [], [], None

    def on_start(self, name, placements, backend, dashboard, resumed):
        self.placements = placements

    def on_epoch(self, record):
        self.epochs.append(record["epoch"])
        if record["epoch"] == 1 and self.acted_at is None:
            self.act(self.placements)
            self.acted_at = time.monotonic()

    def on_restart(self, attempt, max_restarts, reason, placements, epoch):
        self.restarts.append((attempt, max_restarts, reason, len(placements), epoch))


def test_a_stopped_rank_is_named_within_its_timeout_and_the_workers_run_the_next_job(client, tmp_path):
    _wait_for_free_slots(client)
    stopped = {}

    def stop_rank_one(placements):
        worker = placements[1].worker
        stopped.update(worker=worker, pid=_pid(client, worker))
        os.kill(stopped["pid"], signal.SIGSTOP)

    progress = _AfterEpochOne(stop_rank_one)
    try:
        with pytest.raises(DDPJobFailed) as info:
            train_ddp(client, "xor", SLOW_EPOCHS, epochs=8, workers=2, runs_dir=str(tmp_path), name="stop",
                      timeout=10, progress=progress)
        took = time.monotonic() - progress.acted_at
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended already: its nanny started a fresh one
            os.kill(stopped["pid"], signal.SIGCONT)
    message = str(info.value)
    print(f"the stopped rank was reported {took:.1f} s after SIGSTOP: {message}")
    assert took <= 10 + 10
    assert info.value.rank == 1 and info.value.worker == stopped["worker"]
    assert f"rank 1 on {stopped['worker']}" in message and "sent nothing for" in message
    # SIGSTOP follows epoch 1's report: it lands in epoch 2, or later on a loaded machine; the checkpoint
    # holds the last epoch finished before it.
    held = re.search(r"holds epoch (\d+)", message)
    assert "last: epoch" in message and held is not None and 1 <= int(held.group(1)) <= progress.epochs[-1]
    _wait_for_free_slots(client)
    after = train_ddp(client, "xor", {"batch_size": 128}, epochs=1, workers=2, runs_dir=str(tmp_path), name="next",
                      progress=False)
    assert [r["epoch"] for r in after.history] == [1]


def test_a_rank_stuck_in_its_thread_is_named_and_its_worker_restarted(client, tmp_path):
    _wait_for_free_slots(client)
    before = {p: w["name"] for p, w in cluster_workers(client).items()}
    started = time.monotonic()
    with pytest.raises(DDPJobFailed) as info:
        train_ddp(client, "tests.integration.hanging:HangOnRankOne", {"batch_size": 128}, epochs=2, workers=2,
                  runs_dir=str(tmp_path), name="stuck", timeout=10, progress=False)
    took = time.monotonic() - started
    message = str(info.value)
    print(f"the stuck rank was reported after {took:.1f} s: {message}")
    assert info.value.rank == 1 and f"rank 1 on {info.value.worker} ({before[info.value.worker]})" in message
    assert "never left its step (last: epoch 1 step 2/" in message and "its worker was restarted" in message
    assert info.value.worker not in cluster_workers(client)  # a fresh process took over
    _wait_for_free_slots(client)
    after = train_ddp(client, "xor", {"batch_size": 128}, epochs=1, workers=2, runs_dir=str(tmp_path), name="next",
                      progress=False)
    assert [r["epoch"] for r in after.history] == [1]


def test_a_killed_rank_restarts_from_its_checkpoint_by_itself(client, tmp_path):
    _wait_for_free_slots(client)

    def kill_rank_one(placements):
        os.kill(_pid(client, placements[1].worker), signal.SIGKILL)

    progress = _AfterEpochOne(kill_rank_one)
    result = train_ddp(client, "xor", SLOW_EPOCHS, epochs=6, workers=2, runs_dir=str(tmp_path), name="heal",
                       timeout=30, progress=progress, max_restarts=1)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert progress.epochs == [1, 2, 3, 4, 5, 6]  # every epoch shown once, none trained twice
    assert len(result.restarts) == 1 and "its worker left the cluster" in result.restarts[0]
    [(attempt, limit, _, ranks, epoch)] = progress.restarts
    # The kill follows epoch 1's report: it lands in epoch 2, or later on a loaded machine. The job goes on
    # from the last epoch it finished, whichever that was.
    assert (attempt, limit, ranks) == (1, 1, 2) and 1 <= epoch < 6
    assert result.rank_outputs[0].resumed_from == epoch and len(result.placements) == 2
    assert read_checkpoint(tmp_path / "heal" / "checkpoint.pt")["epoch"] == 6


def _never_restart(dask_worker):
    """Run in a nanny: its worker, killed next, is not started again, as when its machine is gone. (The
    embedded cluster's nannies share one process: killing the nanny would kill them all.)"""
    async def machine_gone():
        return dask_worker.status

    dask_worker.instantiate = machine_gone


def test_with_min_workers_a_restart_goes_on_with_the_workers_left(tmp_path):
    with open_client(Target(local=CLUSTER, preload=("training.rank",))) as c:
        def close_rank_one_for_good(placements):
            worker = placements[1].worker
            process = _pid(c, worker)
            os.kill(process, signal.SIGSTOP)  # at once: the rank cannot end before it is killed
            c.run(_never_restart, workers=[worker], nanny=True)
            os.kill(process, signal.SIGKILL)

        progress = _AfterEpochOne(close_rank_one_for_good)
        result = train_ddp(c, "xor", SLOW_EPOCHS, epochs=6, workers=2, runs_dir=str(tmp_path), name="elastic",
                           timeout=10, progress=progress, max_restarts=1, min_workers=1)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert len(result.placements) == 1 and result.trained.extra["world_size"] == 1
    [(ranks, epoch)] = [(r[3], r[4]) for r in progress.restarts]
    assert ranks == 1 and 1 <= epoch < 6  # one rank, from the last epoch finished before the kill
    assert result.rank_outputs[0].resumed_from == epoch


def test_an_outcome_lost_with_its_worker_after_its_rank_ended_fails_the_attempt(tmp_path):
    """Pinned to a worker that is gone, a finished rank's outcome would be waited for for ever."""
    with open_client(Target(local=CLUSTER)) as c:
        workers = sorted(cluster_workers(c))
        futures = [c.submit(os.getpid, key=f"ddp-lost-rank{r}", workers=[w], allow_other_workers=False, pure=False)
                   for r, w in enumerate(workers)]
        pid = futures[1].result(timeout=60)
        c.run(_never_restart, workers=[workers[1]], nanny=True)
        os.kill(pid, signal.SIGKILL)
        poll_for(lambda: not futures[1].done(), 60, what="the scheduler to see rank 1's outcome lost")
        placements = [Placement(r, r, w, "127.0.0.1") for r, w in enumerate(workers)]
        attempt = Attempt("lost", "t0", 0, 2.0, futures, placements, 0)
        with pytest.raises(DDPJobFailed, match=r"rank 1 on .* \(cpu-1\): its worker left the cluster just after"):
            _outcomes(attempt, lambda rank: f"cpu-{rank}")
        assert futures[0].result(timeout=5) != pid  # the other rank's outcome is still there


# ------------------------------------------------------------------------------------- no shared filesystem
def _cannot_hide_dirs() -> str | None:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a mount namespace here: {probe.stderr.strip()}"


def _start_worker_without(runs: Path, scheduler: str, name: str, log: Path) -> subprocess.Popen:
    """A ``dask worker`` in its own mount namespace where ``runs`` is an empty read-only tmpfs."""
    hide = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    command = ["unshare", "-m", "sh", "-c", hide, str(runs), sys.executable, "-m", "distributed.cli.dask_worker",
               scheduler, "--nthreads", "1", "--resources", f"{TRAINING_SLOT}=1", "--preload", "training.rank",
               "--name", name, "--no-dashboard"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "CUDA_VISIBLE_DEVICES": "", "DASK_TRAIN_SLOT_WORKERS": "2"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _try_write(folder: str) -> str:
    try:
        (Path(folder) / "probe").write_text("x")
    except OSError as exc:
        return type(exc).__name__
    return "written"


def test_a_job_whose_workers_cannot_write_the_runs_dir_brings_model_and_checkpoint_home(tmp_path):
    reason = _cannot_hide_dirs()
    if reason:
        pytest.skip(reason)
    from distributed import LocalCluster

    runs = tmp_path / "runs"
    runs.mkdir()
    workers: list[subprocess.Popen] = []
    with LocalCluster(n_workers=0, dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster:
        try:
            workers += [_start_worker_without(runs, cluster.scheduler_address, f"ro-{i}", tmp_path / f"w{i}.log")
                        for i in range(2)]
            poll_for(lambda: len(cluster.scheduler_info["workers"]) == 2, 120, what="2 workers joined")
            with open_client(Target(address=cluster.scheduler_address)) as c:
                first, more = _train_and_resume(c, runs)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
    assert [r["epoch"] for r in first.history] == [1, 2]
    assert [r["epoch"] for r in more.history] == [1, 2, 3]
    assert more.rank_outputs[0].resumed_from == 2
    assert read_checkpoint(runs / "ro" / "checkpoint.pt")["epoch"] == 3
    assert not (runs / "probe").exists()


def _train_and_resume(c, runs: Path):
    """Two epochs, then a resume to three, with workers that cannot write ``runs``."""
    assert list(c.run(_try_write, str(runs)).values()) == ["OSError", "OSError"]  # read-only for the workers
    first = train_ddp(c, "xor", {"batch_size": 128}, epochs=2, workers=2, runs_dir=str(runs), name="ro",
                      progress=False)
    assert (runs / "ro" / "model" / "model.safetensors").is_file()
    assert read_checkpoint(runs / "ro" / "checkpoint.pt")["epoch"] == 2
    more = train_ddp(c, "xor", {"batch_size": 128}, epochs=3, workers=2, runs_dir=str(runs), name="ro",
                     resume=True, progress=False)
    return first, more
