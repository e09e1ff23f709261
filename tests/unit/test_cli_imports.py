"""The CLI answers ``--help`` and argument errors without importing the training stack: torch, pandas,
distributed and optuna load only when a command runs; a sweep file is checked, and its trials submitted,
without torch (only workers train). Checked on ``sys.modules`` in a fresh interpreter (a property of the
code, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "distributed", "optuna", "matplotlib")

# Runs the CLI in-process through click's CliRunner, then prints which heavy modules got imported.
_PROBE = """
import json, sys
from click.testing import CliRunner
from training.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"exit": result.exit_code, "output": result.output,
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def _probe(*args: str, cwd: str | None = None) -> dict:
    code = f"HEAVY = {HEAVY!r}\n{_PROBE}"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_imports_no_training_stack():
    code = f"import sys, training.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("args, code, shown", [
    (["--help"], 0, "sweep"),
    (["sweep", "--help"], 0, "--trial-timeout"),
    (["train", "--help"], 0, "--resume"),
    (["ddp", "--help"], 0, "--rank-timeout"),
    (["cluster", "up", "--help"], 0, "--tls"),
    (["cluster", "sbatch", "--help"], 0, "--gpus-per-node"),
    (["sweep", "pets-quick", "--epochs", "x"], 2, "'x' is not a valid integer"),
    (["sweep", "pets-quick", "--workers", "0"], 2, "--workers"),
    (["ddp", "xor", "--address", "http://h:1"], 2, "scheme 'http'"),
    (["no-such-command"], 2, "No such command"),
])
def test_help_and_argument_errors_import_no_training_stack(args, code, shown):
    result = _probe(*args)
    assert result["exit"] == code, result["output"]
    assert shown in result["output"]
    assert result["heavy"] == [], f"dask-train {' '.join(args)} imported {result['heavy']}"


@pytest.mark.parametrize("body, shown", [
    ("workload: xor\nspace:\n  lr: [0.1, x]\n", "Invalid value 'x' for hyperparameter 'lr'"),
    ("workload: names\nspace:\n  lrr: [0.1]\n", "Did you mean 'lr'?"),
    ("workload: digits\nspace:\n  arch: [mlp, rnn]\n", "'rnn'"),
])
def test_a_bad_sweep_file_is_refused_without_torch(tmp_path, body, shown):
    (tmp_path / "bad.yaml").write_text(body)
    result = _probe("sweep", "bad.yaml", cwd=str(tmp_path))
    assert result["exit"] == 2, result["output"]
    assert shown in result["output"]
    assert result["heavy"] == [], result["heavy"]
    assert not (tmp_path / "runs").exists()


def test_a_sweeps_client_checks_and_submits_without_importing_torch():
    """What a sweep's client runs before its trials end (the checks, the coordinator, the trial runner it
    submits by reference) leaves torch to the workers: seconds less before the first trial starts."""
    code = """
import sys
from training.cli.sweep_cmd import resolve_sweep_file
from training.sweep_spec import load_sweep_file
from training.params import check_data_paths
from training.workloads import BUILTIN
import training.coordinator, training.trial, training.sweep
spec = load_sweep_file(resolve_sweep_file("pets-quick"))
for work in BUILTIN.values():
    check_data_paths(work.params, [{}], here=True)
print(len(spec.trials()), "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, imported = done.stdout.split()
    assert int(count) > 0 and imported == "False"


@pytest.mark.parametrize("command", [["sweep", "pets-quick"], ["ddp", "xor", "--epochs", "2"]])
def test_a_sweep_or_ddp_job_starts_its_worker_program_before_importing_dask_or_torch(tmp_path, command):
    """`dask-train sweep` and `ddp` check what they were given and start the worker program (whose fork
    server then imports torch, seconds) before they import Dask, numpy or torch themselves: those load on the
    other core meanwhile, not before the workers' imports begin."""
    result = _early_start(tmp_path, *command)
    assert result["started"] == [], result


@pytest.mark.parametrize("command", [["ddp", "xor", "--lr", "x"], ["ddp", "nosuch"],
                                     ["ddp", "xor", "--epochs", "0"], ["ddp", "xor", "--name", "../up"],
                                     ["ddp", "xor", "--resume"],
                                     ["sweep", "pets-quick", "--epochs", "0"]])
def test_bad_input_starts_no_worker_program(tmp_path, command):
    result = _early_start(tmp_path, *command)
    assert result["started"] is None and result["exit"] == 2, result


def _early_start(tmp_path, *command: str) -> dict:
    """Run the command line in-process, its start_early recording which heavy modules were loaded when it
    was called (None: not called) and ending the run there."""
    code = """
import json, sys
import cluster, cluster.worker_host
seen = {"started": None}
def start_early(target):
    seen["started"] = sorted(m for m in ("dask", "distributed", "numpy", "torch", "pandas") if m in sys.modules)
    raise SystemExit(0)
cluster.start_early = cluster.worker_host.start_early = start_early
from training.cli import cli
try:
    cli.main(sys.argv[2:] + ["--runs-dir", sys.argv[1]], prog_name="dask-train")
except SystemExit as exit:
    seen["exit"] = exit.code
print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs"), *command], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])
