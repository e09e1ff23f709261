"""Mixed precision on the CPU (bf16 autocast reaches the workloads' accuracy thresholds; fp16 refused with one
line), the precision in checkpoints, sweep files and the CLI, and CUDA RNG states restored on fewer GPUs."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from tests.helpers import run_cli
from tests.precision_probe import ProbedXor
from training import train
from training.errors import ConfigError
from training.loop import Trainer, read_checkpoint, restorable_cuda_states
from training.params import resolve
from training.rank import rank_cuda_index
from training.sweep_spec import NOT_FINGERPRINTED, SweepSpec, load_sweep_file
from training.workloads import get_workload

#: Few epochs, steps large enough to learn: seconds per test, thresholds as for fp32 (tests/unit/test_loop.py).
FAST_XOR = {"lr": 2.0, "batch_size": 256}
FAST_DIGITS = {"arch": "mlp", "batch_size": 32, "lr": 2.0}


def test_xor_reaches_95_percent_with_bf16_autocast_on_the_cpu():
    trained = train(ProbedXor(), FAST_XOR, epochs=8, seed=0, device="cpu", precision="bf16")
    assert trained.history[-1]["val_bf16"] == 1.0  # the forward pass really ran in bfloat16
    assert trained.history[-1]["val_accuracy"] >= 0.95
    assert trained.evaluate()["test_accuracy"] >= 0.95
    assert {v.dtype for v in trained.model.state_dict().values()} == {torch.float32}  # weights stay fp32


def test_digits_reach_95_percent_with_bf16_autocast_on_the_cpu():
    trained = train("digits", FAST_DIGITS, epochs=4, seed=0, device="cpu", precision="bf16")
    assert trained.evaluate()["test_accuracy"] >= 0.95


def test_fp32_is_the_default_and_autocasts_nothing():
    trained = train(ProbedXor(), FAST_XOR, epochs=1, seed=0)
    assert trained.history[0]["val_bf16"] == 0.0 and trained.history[0]["val_fp16"] == 0.0


@pytest.mark.parametrize("bad", ["fp8", "FP16", "", 16, None])
def test_an_unknown_precision_is_bad_input_naming_the_value(bad):
    shown = repr(bad) if isinstance(bad, str) else str(bad)
    with pytest.raises(ConfigError, match=f"^precision={shown} is not known: use fp32, bf16 or fp16"):
        train("xor", epochs=1, precision=bad)
    with pytest.raises(ConfigError, match=f"^precision={shown} is not known"):
        SweepSpec.create(workload="xor", space={"lr": [0.1]}, precision=bad)


def test_fp16_on_the_cpu_is_refused_in_one_line_that_names_bf16():
    with pytest.raises(ConfigError, match=r"^precision='fp16' needs a CUDA GPU but this process trains on the "
                                          r"CPU; use --precision bf16 \(precision='bf16'\) there\.$"):
        train("xor", epochs=1, device="cpu", precision="fp16")
    work = get_workload("xor")
    params = resolve(work.params, {}, owner="xor")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        Trainer(work, params, work.load_data(params, 0), device=torch.device("cpu"), precision="fp16")


def test_a_bf16_checkpoint_resumes_exactly_and_records_its_precision(tmp_path):
    params = {"batch_size": 256}
    straight = train("xor", params, epochs=4, seed=5, precision="bf16")
    checkpoint = tmp_path / "ckpt.pt"
    train("xor", params, epochs=2, seed=5, checkpoint=checkpoint, precision="bf16")
    state = read_checkpoint(checkpoint)
    assert state["precision"] == "bf16" and state["scaler"] is None  # bf16 needs no loss scaling
    with pytest.raises(ConfigError, match=re.escape("trained with --precision bf16 (precision='bf16'), not fp32")):
        train("xor", params, epochs=4, seed=5, checkpoint=checkpoint, resume=True)  # fp32: its epochs would differ
    assert read_checkpoint(checkpoint)["epoch"] == 2  # refused before anything was trained or written
    resumed = train("xor", params, epochs=4, seed=5, checkpoint=checkpoint, resume=True, precision="bf16")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_cuda_rng_states_of_gpus_this_machine_lacks_are_left_out(tmp_path):
    """A checkpoint written where 4 GPUs were visible (faked: four CUDA RNG states) resumes where fewer are."""
    checkpoint = tmp_path / "ckpt.pt"
    train("xor", {"batch_size": 256}, epochs=1, seed=2, checkpoint=checkpoint)
    state = read_checkpoint(checkpoint)
    fake = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # a CUDA generator's state is 16 bytes
    torch.save({**state, "rng_cuda": fake}, checkpoint)
    saved = read_checkpoint(checkpoint)["rng_cuda"]
    assert [int(s[0]) for s in restorable_cuda_states(saved, 1)] == [0]  # one GPU here: the first device's
    assert [int(s[0]) for s in restorable_cuda_states(saved, 8)] == [0, 1, 2, 3]  # more GPUs: all saved ones
    assert restorable_cuda_states(saved, 0) == []
    resumed = train("xor", {"batch_size": 256}, epochs=2, seed=2, checkpoint=checkpoint, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]  # the CPU resume ignores the CUDA states


def test_two_workers_that_see_every_gpu_of_their_host_take_different_ones():
    assert [rank_cuda_index(r, 2, None) for r in range(2)] == [0, 1]
    assert [rank_cuda_index(r, 4, f"{r},0,1,2,3") for r in range(2)] == [0, 0]  # dask-cuda: own GPU first


def test_sweep_files_take_precision_and_check_it(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("workload: xor\nspace: {lr: [0.1]}\nprecision: bf16\n")
    assert load_sweep_file(good).precision == "bf16"
    assert load_sweep_file(good, precision="fp32").precision == "fp32"  # the CLI's --precision wins
    number = tmp_path / "number.yaml"
    number.write_text("workload: xor\nspace: {lr: [0.1]}\nprecision: 16\n")
    with pytest.raises(ConfigError, match=r"precision=16 is not fp32, bf16 or fp16"):
        load_sweep_file(number)


def test_precision_changes_a_sweeps_fingerprint_but_fp32_keeps_the_old_one():
    spec = SweepSpec.create(workload="xor", space={"lr": [0.1]})
    content = {k: v for k, v in spec.to_json().items() if k not in (*NOT_FINGERPRINTED, "precision")}
    before_the_field = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    assert spec.fingerprint() == before_the_field  # runs recorded before precision existed still resume
    bf16 = SweepSpec.create(workload="xor", space={"lr": [0.1]}, precision="bf16")
    assert bf16.fingerprint() != spec.fingerprint()


def test_the_cli_trains_in_bf16_and_refuses_unknown_precisions(tmp_path):
    out = tmp_path / "m"
    result = run_cli("train", "xor", "--epochs", "2", "--precision", "bf16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(out / "checkpoint.pt")["precision"] == "bf16" and "val_accuracy" in result.stdout
    bad = run_cli("train", "xor", "--precision", "fp8")
    assert bad.returncode == 2 and "'fp8'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
