"""DDP over Dask on a real 2-worker LocalCluster with gloo: equivalence with one process, names, shards,
a killed rank worker and --resume, a raising rank, concurrent jobs, and requests refused up front."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from cluster import TRAINING_SLOT, ClusterSpec, Target, cluster_workers, open_client, require_slots
from tests.helpers import poll_for
from training import train
from training.ddp import DDPProgress, assign_ranks, train_ddp
from training.errors import ConfigError, DDPJobFailed
from training.loop import Trainer, read_checkpoint
from training.model_file import load_model
from training.protocol import best_epoch
from training.workloads import get_workload

pytestmark = pytest.mark.timeout(300)

SMALL_NAMES = {"corpus": "first", "max_names": 1500, "hidden": 32, "layers": 2, "batch_size": 256, "lr": 3e-3}


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                            preload=("training.rank",))) as c:
        yield c


def _free_slots(client) -> int:
    """Slot workers with nothing to do; 0 (not an error) while a restarted worker is still rejoining."""
    workers = cluster_workers(client)
    busy = client.processing()
    return sum(1 for a, w in workers.items() if w.get("resources", {}).get(TRAINING_SLOT) and not busy.get(a))


def _wait_for_free_slots(client, count=2):
    poll_for(lambda: _free_slots(client) >= count, 60, what=f"{count} free slot workers")


@pytest.mark.parametrize("workload", ["xor", "linreg"])
def test_two_ranks_follow_the_single_process_loss_trajectory(client, tmp_path, workload):
    params = ({"train_size": 2560, "batch_size": 128} if workload == "xor"
              else {"samples": 40_000, "batch_size": 4000})
    ddp = train_ddp(client, workload, params, epochs=3, workers=2, seed=7, runs_dir=str(tmp_path))
    single = train(workload, params, epochs=3, seed=7)
    assert len(ddp.history) == 3
    for a, b in zip(ddp.history, single.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for (key, x), y in zip(ddp.model.state_dict().items(), single.model.state_dict().values(), strict=True):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), key


def test_names_ddp_trains_and_returns_a_model_that_generates(client, tmp_path):
    result = train_ddp(client, "names", SMALL_NAMES, epochs=3, workers=2, runs_dir=str(tmp_path), name="pets")
    assert {p.worker for p in result.placements} == set(require_slots(client))
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] < 3.43
    names = result.trained.generate(10, seed=1)
    assert len(names) == 10
    assert sorted(p.name for p in result.model_dir.iterdir()) == [
        "artifacts.json", "history.json", "model.json", "model.safetensors"]
    assert (tmp_path / "pets" / "checkpoint.pt").is_file()


def test_the_job_model_is_its_best_epoch_and_the_checkpoint_its_last(client, tmp_path):
    params = {"train_size": 40, "noise": 0.5, "hidden": 64, "batch_size": 8, "lr": 2.0}  # overfits: peaks early
    result = train_ddp(client, "xor", params, epochs=20, workers=2, runs_dir=str(tmp_path), name="peak")
    epoch, value = best_epoch(result.history, "val_accuracy", "max")
    assert result.trained.best_epoch == epoch and result.trained.metrics["val_accuracy"] == value
    saved = json.loads((result.model_dir / "model.json").read_text())
    assert saved["best_epoch"] == epoch and saved["epochs"] == 20
    assert read_checkpoint(tmp_path / "peak" / "checkpoint.pt")["epoch"] == 20  # resume goes on from the last
    work = get_workload("xor")
    trainer = Trainer(work, result.trained.params, work.load_data(result.trained.params, 0))
    trainer.model.load_state_dict(load_model(result.model_dir).model.state_dict())
    assert trainer.evaluate()["val_accuracy"] == pytest.approx(value)


def test_a_real_run_gives_ranks_disjoint_shards_covering_the_epoch(client, tmp_path):
    params = {"train_size": 1000, "batch_size": 100}
    result = train_ddp(client, "xor", params, epochs=2, workers=2, runs_dir=str(tmp_path), record_samples=True)
    shards = [set(out.samples.tolist()) for out in result.rank_outputs]
    assert len(shards[0]) == len(shards[1]) == 500
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(range(1000))


def test_rank_placement_groups_by_host():
    placements = assign_ranks({"tcp://10.0.0.2:1": "10.0.0.2", "tcp://10.0.0.1:2": "10.0.0.1",
                               "tcp://10.0.0.1:1": "10.0.0.1"})
    assert [(p.rank, p.local_rank, p.worker) for p in placements] == [
        (0, 0, "tcp://10.0.0.1:1"), (1, 1, "tcp://10.0.0.1:2"), (2, 0, "tcp://10.0.0.2:1")]


class _KillAfterFirstEpoch(DDPProgress):
    def __init__(self, client):
        self.client, self.killed, self.placements, self.epochs = client, None, [], []

    def on_start(self, name, placements, backend, dashboard, resumed):
        self.placements = placements

    def on_epoch(self, record):
        self.epochs.append(record["epoch"])
        if record["epoch"] == 1 and self.killed is None:
            victim = self.placements[1].worker
            os.kill(self.client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
            self.killed = (victim, time.monotonic())


def test_a_killed_rank_worker_ends_the_job_clearly_and_resume_finishes_it(client, tmp_path):
    params = {**SMALL_NAMES, "max_names": 4000, "batch_size": 128}
    killer = _KillAfterFirstEpoch(client)
    with pytest.raises(DDPJobFailed) as info:
        train_ddp(client, "names", params, epochs=4, workers=2, runs_dir=str(tmp_path), name="kill",
                  timeout=30, progress=killer)
    victim, killed_at = killer.killed
    assert time.monotonic() - killed_at <= 60
    message = str(info.value)
    assert f"rank 1 on {victim}" in message and "--resume" in message
    assert info.value.rank == 1
    _wait_for_free_slots(client)
    resumed = train_ddp(client, "names", params, epochs=4, workers=2, runs_dir=str(tmp_path), name="kill",
                        resume=True, timeout=30)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.rank_outputs[0].resumed_from >= 1  # continued from the checkpoint, not epoch 0


def test_a_raising_rank_ends_the_job_and_leaves_the_workers_usable(client, tmp_path):
    _wait_for_free_slots(client)
    started = time.monotonic()
    with pytest.raises(DDPJobFailed, match=r"rank 1 on tcp://.*rank one broke on purpose") as info:
        train_ddp(client, "tests.integration.diverging:FailOnRankOne", {"samples": 40_000, "batch_size": 1000},
                  epochs=2, workers=2, runs_dir=str(tmp_path), name="raise", timeout=20)
    assert time.monotonic() - started < 60
    assert "All other ranks ended" in str(info.value)
    after = train_ddp(client, "xor", {"batch_size": 128}, epochs=1, workers=2, runs_dir=str(tmp_path), name="ok")
    assert after.history[0]["epoch"] == 1


def test_a_rank_refusing_its_data_is_one_clear_error_not_restarted_nor_logged_as_a_crash(client, tmp_path):
    """Data every rank reads and none can use (here one name: nothing to validate on) is the user's to fix: a
    ConfigError naming the rank and what its data lacks, without the restarts a crash gets, and without the
    workers' "Compute Failed" tracebacks in the log."""
    _wait_for_free_slots(client)
    data = tmp_path / "one-name.txt"
    data.write_text("x\n\n")
    said = (r"DDP job 'refused': rank \d on tcp://\S+ \(.*\) refused its input: Need at least 2 names to train "
            r"and validate, found 1\. No epoch had finished")
    with pytest.raises(ConfigError, match=said):
        train_ddp(client, "names", {"data": str(data)}, epochs=1, workers=2, runs_dir=str(tmp_path),
                  name="refused", max_restarts=3)
    logs = client.get_worker_logs()
    crashes = [m for records in logs.values() for _, m in records if "Compute Failed" in m and "RankRefused(" in m]
    assert not crashes, crashes
    after = train_ddp(client, "xor", {"batch_size": 128}, epochs=1, workers=2, runs_dir=str(tmp_path), name="ok")
    assert after.history[0]["epoch"] == 1


def test_two_jobs_run_at_once_on_different_workers(client, tmp_path):
    _wait_for_free_slots(client)
    first, second = require_slots(client)
    results, epochs = {}, {"a": [], "b": []}

    class Epochs(DDPProgress):
        def __init__(self, name):
            self.name = name

        def on_epoch(self, record):
            epochs[self.name].append(record["epoch"])

    def job(name, worker):
        results[name] = train_ddp(client, "xor", {"train_size": 20_000}, epochs=5, workers=[worker],
                                  runs_dir=str(tmp_path), name=name, progress=Epochs(name))

    threads = [threading.Thread(target=job, args=(n, w)) for n, w in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {"a", "b"}
    assert results["a"].placements[0].worker != results["b"].placements[0].worker
    # One client, two jobs at once: each received exactly its own epoch events.
    assert epochs == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3, 4, 5]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 3}, "Asked for 3 DDP ranks but only 2 of the 2 workers with a training slot are free"),
        ({"workload": "nmaes"}, "Unknown workload 'nmaes'"),
        ({"params": {"lr": -1}}, "Invalid value -1.0 for hyperparameter 'lr'"),
        ({"params": {"batch_size": 127}}, "batch_size=127 does not split evenly over 2 ranks"),
        ({"resume": True}, "Nothing to resume"),
        ({"workers": ["tcp://127.0.0.1:1"]}, "are not free workers with a training slot"),
    ],
)
def test_bad_requests_fail_before_anything_starts(client, tmp_path, kwargs, message):
    _wait_for_free_slots(client)
    args = {"workload": "xor", "params": {}, "epochs": 1, "runs_dir": str(tmp_path), **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        train_ddp(client, args.pop("workload"), args.pop("params"), **args)
    assert not any(tmp_path.rglob("checkpoint.pt"))
