"""On a machine with CUDA GPUs (marked ``gpu``: skipped where torch sees none): bf16 and fp16 training on a GPU,
the fp16 loss scaler in checkpoints, TF32 while training on Ampere and newer, and on the embedded GPU cluster
(dask-cuda, one worker per GPU) nccl DDP jobs whose ranks each train on their own GPU, and a failing nccl rank
named in one error with the workers left usable."""

from __future__ import annotations

import time

import pytest
import torch

from cluster import cluster_workers
from tests.helpers import poll_for
from tests.precision_probe import ProbedXor
from training import train
from training.ddp import DDPProgress, train_ddp
from training.errors import DDPJobFailed
from training.loop import Callback, read_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

FAST_XOR = {"lr": 2.0, "batch_size": 256}
PROBE = "tests.precision_probe:ProbedXor"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu_reaches_xors_threshold(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    trained = train(ProbedXor(), FAST_XOR, epochs=8, seed=0, device="cuda", precision=precision)
    assert trained.history[-1][f"val_{precision}"] == 1.0  # the forward pass ran in that dtype on the GPU
    assert trained.history[-1]["val_accuracy"] >= 0.95
    assert trained.evaluate()["test_accuracy"] >= 0.95


def test_digits_cnn_reaches_95_percent_in_bf16_on_a_gpu():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    trained = train("digits", {"arch": "cnn"}, seed=0, device="cuda", precision="bf16")
    assert trained.evaluate()["test_accuracy"] >= 0.95


def test_an_fp16_checkpoint_carries_the_loss_scaler_and_resumes(tmp_path):
    params = {"batch_size": 256}
    straight = train("xor", params, epochs=4, seed=5, device="cuda", precision="fp16")
    checkpoint = tmp_path / "ckpt.pt"
    train("xor", params, epochs=2, seed=5, device="cuda", precision="fp16", checkpoint=checkpoint)
    state = read_checkpoint(checkpoint)
    assert state["precision"] == "fp16" and state["scaler"]["scale"] > 0
    resumed = train("xor", params, epochs=4, seed=5, device="cuda", precision="fp16", checkpoint=checkpoint,
                    resume=True)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in straight.history], rel=1e-5)


def test_tf32_matmuls_while_training_on_ampere_or_newer_and_the_setting_restored_after():
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no TF32 tensor cores before compute capability 8.0")
    seen: list[str] = []

    class Spy(Callback):
        def on_epoch_end(self, record):
            seen.append(torch.get_float32_matmul_precision())

    before = torch.get_float32_matmul_precision()
    train("xor", FAST_XOR, epochs=1, device="cuda", callback=Spy())
    assert seen == ["high"] and torch.get_float32_matmul_precision() == before


@pytest.fixture(scope="module")
def gpu_client():
    pytest.importorskip("dask_cuda", reason="the embedded GPU cluster needs dask-cuda (the [gpu] extra)")
    from cluster import ClusterSpec, Target, open_client

    with open_client(Target(local=ClusterSpec(dashboard_address="127.0.0.1:0"), preload=("training.rank",))) as c:
        yield c


def _ranks(client) -> int:
    from cluster import require_slots

    count = len(require_slots(client))
    if count < 2:
        pytest.skip(f"nccl DDP across GPUs needs 2 or more GPUs; {count} here")
    return count


class _Backend(DDPProgress):
    def on_start(self, name, placements, backend, dashboard, resumed):
        self.backend = backend


def test_nccl_ddp_across_the_gpus_puts_each_rank_on_its_own_gpu(gpu_client, tmp_path):
    ranks = _ranks(gpu_client)
    shown = _Backend()
    result = train_ddp(gpu_client, PROBE, {"lr": 2.0, "batch_size": 256 * ranks}, epochs=8, workers=ranks,
                       precision="bf16", runs_dir=str(tmp_path), progress=shown)
    assert shown.backend == "nccl"
    devices = [outcome.device for outcome in result.rank_outputs]
    assert all(d.startswith("cuda:") for d in devices) and len(set(devices)) == ranks, devices  # distinct GPUs
    assert result.history[-1]["val_bf16"] == 1.0 and result.history[-1]["val_accuracy"] >= 0.95


def test_a_failing_nccl_rank_is_named_and_the_gpu_workers_stay_usable(gpu_client, tmp_path):
    ranks = _ranks(gpu_client)
    workers_before = set(cluster_workers(gpu_client))
    started = time.monotonic()
    with pytest.raises(DDPJobFailed, match=r"rank 1 on .*rank one broke on purpose"):
        train_ddp(gpu_client, "tests.integration.diverging:FailOnRankOne",
                  {"samples": 40_000, "batch_size": 1000 * ranks}, epochs=2, workers=ranks,
                  runs_dir=str(tmp_path), name="raise", timeout=30, progress=False)
    assert time.monotonic() - started < 120
    poll_for(lambda: not any(gpu_client.processing().values()), 120, what="the survivors to leave their ranks")
    # The survivors left their collectives with an error (TORCH_NCCL_ASYNC_ERROR_HANDLING=2): no worker died
    # (a restarted one would have a new address).
    assert set(cluster_workers(gpu_client)) == workers_before
    after = train_ddp(gpu_client, "xor", {"batch_size": 128 * ranks}, epochs=1, workers=ranks,
                      runs_dir=str(tmp_path), name="ok", progress=False)
    assert after.history[0]["epoch"] == 1
