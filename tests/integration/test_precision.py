"""Precision travels to the workers: a bf16 sweep's trials and a bf16 DDP job's ranks run their forward pass in
bfloat16 on a real 2-worker CPU LocalCluster (seen in their histories), and fp16, which needs GPUs, is
refused before anything is submitted."""

from __future__ import annotations

import pytest

from cluster import ClusterSpec, Target, open_client
from training.ddp import train_ddp
from training.errors import ConfigError
from training.loop import read_checkpoint
from training.sweep import Sweep

pytestmark = pytest.mark.timeout(300)

PROBE = "tests.precision_probe:ProbedXor"  # xor whose history says which dtype its logits had


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                            preload=("training.trial", "training.rank"))) as c:
        yield c


def test_a_bf16_sweep_trains_every_trial_in_bf16(client, tmp_path):
    result = Sweep(PROBE, {"lr": [1.0, 2.0]}, params={"batch_size": 256}, epochs=6, precision="bf16",
                   runs_dir=str(tmp_path), name="bf16").run(client, progress=False)
    assert [t.state.value for t in result.trials] == ["completed", "completed"]
    assert all(t.metrics["val_bf16"] == 1.0 for t in result.trials)  # on the workers, not only here
    assert result.table["best_val_accuracy"].max() >= 0.95


def test_a_bf16_ddp_job_trains_every_rank_in_bf16(client, tmp_path):
    result = train_ddp(client, PROBE, {"lr": 2.0, "batch_size": 256}, epochs=6, workers=2, precision="bf16",
                       runs_dir=str(tmp_path), progress=False)
    assert result.history[-1]["val_bf16"] == 1.0  # validation sums over both ranks: both ran in bf16
    assert result.history[-1]["val_accuracy"] >= 0.95
    assert read_checkpoint(result.run_dir / "checkpoint.pt")["precision"] == "bf16"


def test_fp16_on_cpu_workers_is_refused_before_anything_runs(client, tmp_path):
    with pytest.raises(ConfigError, match=r"precision='fp16' needs a CUDA GPU but 2 of the 2 slot workers .* "
                                          r"train on the CPU; use --precision bf16 \(precision='bf16'\) there"):
        Sweep("xor", {"lr": [0.1]}, epochs=1, precision="fp16", runs_dir=str(tmp_path), name="fp16").run(
            client, progress=False)
    assert not (tmp_path / "fp16" / "trials").exists()  # no trial ran
    with pytest.raises(ConfigError, match=r"precision='fp16' needs a CUDA GPU but the job's 2 ranks \(gloo\) "
                                          r"train on the CPU"):
        train_ddp(client, "xor", epochs=1, workers=2, precision="fp16", runs_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "xor-ddp" / "checkpoint.pt").exists()
