"""The `dask-train` console script, run as a user runs it (a subprocess), exit codes included."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

EXE = shutil.which("dask-train") or ""


def run(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [EXE, *args] if EXE else [sys.executable, "-m", "training.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_train_then_evaluate_xor(tmp_path):
    out = tmp_path / "xor-model"
    result = run("train", "xor", "--epochs", "60", "--lr", "0.2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "val_accuracy" in result.stdout and f"Saved model to {out}" in result.stdout
    assert json.loads((out / "model.json").read_text())["params"]["lr"] == 0.2
    evaluated = run("evaluate", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy = float(next(line.split()[1] for line in evaluated.stdout.splitlines()
                          if line.startswith("test_accuracy")))
    assert accuracy >= 0.95


def test_train_then_generate_names(tmp_path):
    out = tmp_path / "names-model"
    result = run("train", "names", "--corpus", "first", "--max-names", "800", "--hidden", "32",
                 "--layers", "2", "--batch-size", "256", "--epochs", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Generated:" in result.stdout
    generated = run("generate", str(out), "-n", "7", "--seed", "3")
    assert generated.returncode == 0, generated.stderr
    assert len(generated.stdout.split("\n")) >= 7


def test_train_resume_continues_the_epoch_count(tmp_path):
    out = tmp_path / "m"
    assert run("train", "xor", "--epochs", "2", "--out", str(out)).returncode == 0
    resumed = run("train", "xor", "--epochs", "4", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2, 3, 4]
    best = json.loads((out / "model.json").read_text())["best_epoch"]  # the epoch the weights are from, said
    assert re.search(rf"Saved model to {re.escape(str(out))}: its best epoch by val_accuracy, {best} of 4 "
                     r"\(val_accuracy=[0-9.]+\); resumed after epoch 2$", resumed.stdout, re.M), resumed.stdout


def test_workloads_lists_every_workload_and_its_hyperparameters():
    result = run("workloads")
    assert result.returncode == 0
    for text in ("names", "charlm", "digits", "xor", "linreg", "batch_size", "'mlp', 'cnn'"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "xorr"], "Unknown workload 'xorr'. Did you mean 'xor'?"),
        (["train", "xor", "--lrr", "3"], "Unknown hyperparameter 'lrr' for workload 'xor'. Did you mean 'lr'?"),
        (["train", "xor", "--lr", "-1"], "Invalid value -1.0 for hyperparameter 'lr'"),
        (["train", "xor", "--batch-size", "big"], "Invalid value 'big' for hyperparameter 'batch_size'"),
        (["train", "xor", "--lr"], "--lr needs a value"),
        (["train", "names", "--data", "/no/such/file.json"], "does not exist"),
        (["train", "xor", "--epochs", "0"], "Invalid epochs 0"),
        (["train", "digits", "--epoch", "3"], "Unknown option --epoch. Did you mean --epochs?"),
        (["ddp", "xor", "--epoch", "3"], "Unknown option --epoch. Did you mean --epochs?"),
        (["train", "xor", "--lr", "0.1", "--lr", "0.2"], "Hyperparameter --lr is given twice ('0.1' and '0.2')"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args, message):
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cuda_asked_for_without_a_gpu_names_the_option():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    result = run("train", "xor", "--device", "cuda")
    assert result.returncode == 2 and "use --device auto (device='auto')" in result.stderr, result.stderr


def test_empty_data_file_and_non_model_directories_exit_2(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run("train", "charlm", "--data", str(tmp_path / "empty.txt"))
    assert result.returncode == 2 and "is empty" in result.stderr
    result = run("generate", str(tmp_path))
    assert result.returncode == 2 and "is not a dask-train model directory" in result.stderr
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("")
    result = run("evaluate", str(tmp_path))
    assert result.returncode == 2 and "is not dask-train model metadata" in result.stderr


def test_model_files_load_without_pickle(tmp_path):
    """The weights are safetensors; a pickle dropped in their place is refused, never executed."""
    out = tmp_path / "m"
    assert run("train", "xor", "--epochs", "1", "--out", str(out)).returncode == 0
    # Every file of it as the umask says (safetensors' own save_file made the weights 0600), none left over.
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1 and "model.safetensors" in modes, modes
    assert not [name for name in modes if name.endswith(".tmp")], modes
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    result = run("evaluate", str(out))
    assert result.returncode == 2 and "damaged or mismatched weights" in result.stderr
    assert not marker.exists()


def test_a_workload_of_your_own_may_define_neither_evaluate_nor_generate(tmp_path):
    """Putting a trained model to use is the workload's option: `train` of one that defines neither ends
    with its metrics and saved model, exit 0 (it used to end with a NotImplementedError)."""
    from tests.helpers import ROOT, cli_command, cli_env

    out = tmp_path / "busy-model"
    done = subprocess.run(cli_command("train", "tests.benchmarks.busy:Busy", "--steps", "1", "--epochs", "1",
                                      "--out", str(out)), capture_output=True, text=True, timeout=120,
                          env={**cli_env(), "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Saved model to {out}" in done.stdout and "NotImplementedError" not in done.stdout + done.stderr
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("debug", [False, True])
def test_a_ctrl_c_no_command_summed_up_is_one_line_and_exit_130(debug):
    """A KeyboardInterrupt that leaves a command (e.g. while its cluster starts): "Interrupted (Ctrl-C).",
    exit 130; with --debug its traceback first. Never click's "Aborted!" and exit 1."""
    import click
    from click.testing import CliRunner

    from training.cli import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    cli.add_command(click.Command("interrupted-here", callback=interrupted))
    try:
        result = CliRunner().invoke(cli, [*(["--debug"] if debug else []), "interrupted-here"])
    finally:
        cli.commands.pop("interrupted-here")
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "Interrupted (Ctrl-C)."
    assert "Aborted!" not in result.output
    assert ("Traceback (most recent call last)" in result.output) is debug


@pytest.mark.parametrize(("args", "commands"), [((), ("sweep", "results", "ddp")), (("cluster",), ("up", "info"))])
def test_a_group_given_no_command_shows_its_help_as_it_is(args, commands):
    """`dask-train` and `dask-train cluster` alone print their help, line by line, and exit 0 (click 8.2 on
    made it an error, which came out flattened into one cut-off line with exit code 2)."""
    shown = run(*args)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"Usage: dask-train {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND")
    assert all(any(line.split()[:1] == [name] for line in lines) for name in commands), shown.stdout


@pytest.mark.parametrize("args", [("runs",), ("attach", "NAME"), ("cancel", "NAME")])
def test_commands_that_need_a_running_cluster_offer_no_embedded_one(args):
    """`runs`, `attach` and `cancel` look at a running cluster's scheduler: their help offers neither the
    embedded cluster's --workers/--gpus nor to start one, and those options are refused by name."""
    shown = run(args[0], "--help")
    assert shown.returncode == 0 and "--address" in shown.stdout and "--scheduler-file" in shown.stdout
    assert "--workers" not in shown.stdout and "--gpus" not in shown.stdout and "embedded" not in shown.stdout
    refused = run(*args, "--workers", "2")
    assert refused.returncode == 2 and "No such option '--workers'" in refused.stderr, refused.stderr


def test_trainings_started_in_the_same_second_each_get_a_model_directory(tmp_path, monkeypatch):
    """The default --out is runs/<workload>-<time to the second>: a second run that second gets its own folder
    (-2), made at once, so neither writes over the other; a run refused before training leaves no folder."""
    from click.testing import CliRunner

    from training.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda *_: "20261207-120000")
    outputs = [CliRunner().invoke(cli, ["train", "xor", "--epochs", "1", "--lr", lr]) for lr in ("0.1", "0.3")]
    assert [r.exit_code for r in outputs] == [0, 0], [r.output for r in outputs]
    assert "Saved model to runs/xor-20261207-120000:" in outputs[0].output
    assert "Saved model to runs/xor-20261207-120000-2:" in outputs[1].output
    lrs = [json.loads((tmp_path / "runs" / name / "model.json").read_text())["params"]["lr"]
           for name in ("xor-20261207-120000", "xor-20261207-120000-2")]
    assert lrs == [0.1, 0.3]
    refused = CliRunner().invoke(cli, ["train", "charlm", "--data", str(tmp_path / "empty.txt")])
    assert refused.exit_code == 2 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "xor-20261207-120000", "xor-20261207-120000-2"]


def test_a_trained_model_is_continued_with_resume_never_replaced(tmp_path):
    out = tmp_path / "m"
    assert run("train", "xor", "--epochs", "1", "--out", str(out)).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    again = run("train", "xor", "--epochs", "2", "--out", str(out))
    assert again.returncode == 2 and "already holds a trained model" in again.stderr, again.stderr
    assert (out / "model.safetensors").read_bytes() == before
    other_seed = run("train", "xor", "--epochs", "2", "--seed", "7", "--out", str(out), "--resume")
    assert other_seed.returncode == 2 and "trained with seed 0, not 7" in other_seed.stderr, other_seed.stderr
    assert other_seed.stdout == ""  # refused before the run is announced: one line
    other_precision = run("train", "xor", "--epochs", "2", "--precision", "bf16", "--out", str(out), "--resume")
    assert other_precision.returncode == 2, other_precision.stderr
    assert "trained with --precision fp32 (precision='fp32'), not bf16" in other_precision.stderr
    resumed = run("train", "xor", "--epochs", "2", "--out", str(out), "--resume")
    assert resumed.returncode == 0 and "resumed after epoch 1" in resumed.stdout, resumed.stderr


def test_debug_adds_the_traceback_and_keeps_the_line_and_exit_code():
    from click.testing import CliRunner

    from training.cli import cli

    result = CliRunner().invoke(cli, ["--debug", "train", "xor", "--arch", "cnn"])
    assert result.exit_code == 2, result.output
    assert "Traceback" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: Unknown hyperparameter 'arch'")


def test_an_interrupted_training_says_how_to_resume_and_that_command_resumes(tmp_path):
    """SIGTERM (as Ctrl-C) after an epoch: exit 143, one line naming what is kept and the command that resumes
    (the default --out named in it); that command continues after the saved epoch."""
    import shlex
    import signal
    import time

    from tests.helpers import ROOT, cli_env

    # Busy: one step of fixed torch work an epoch (~2 s here), so the signal lands mid-epoch 2, however late
    # this test sees epoch 1's checkpoint, and the resumed run is short.
    command = [EXE, "train", "tests.benchmarks.busy:Busy", "--steps", "9000", "--epochs", "4"] if EXE else []
    if not command:
        pytest.skip("the dask-train command is not installed here")
    env = {**cli_env(), "PYTHONPATH": ROOT}
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    deadline = time.monotonic() + 120
    saved = lambda: list(tmp_path.glob("runs/*/checkpoint.pt"))  # noqa: E731
    while process.poll() is None and time.monotonic() < deadline and not saved():
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, (out, err)
    line = next(x for x in out.splitlines() if x.startswith("Interrupted: "))
    assert "keeps the checkpoint of its last finished epoch" in line
    resume = shlex.split(line.split("Resume with: ", 1)[1])
    assert resume[:2] == ["dask-train", "train"] and resume[-1] == "--resume" and "--out" in resume
    resumed = subprocess.run([EXE, *resume[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0 and "resumed after epoch" in resumed.stdout, resumed.stderr


def test_cluster_up_names_a_port_in_use_or_a_host_not_of_this_machine_before_starting(tmp_path):
    """Both failed as "RuntimeError: Cluster failed to start: Scheduler failed to start", exit 1, the cause
    only in --debug's traceback: now one line naming the option, exit 2, and no scheduler file written."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run("cluster", "up", "--port", str(port), "--workers", "1", cwd=tmp_path)
    assert busy.returncode == 2, busy.stdout + busy.stderr
    assert busy.stderr.startswith(f"Error: --port {port} on 127.0.0.1 is in use (another cluster or service?): "
                                  "pick another port, or 0 for any free one."), busy.stderr
    foreign = run("cluster", "up", "--host", "192.0.2.1", "--workers", "1", cwd=tmp_path)  # TEST-NET-1
    assert foreign.returncode == 2, foreign.stdout + foreign.stderr
    assert foreign.stderr.startswith("Error: --host 192.0.2.1 is not an address of this machine"), foreign.stderr
    assert "Traceback" not in busy.stderr + foreign.stderr and list(tmp_path.iterdir()) == []
