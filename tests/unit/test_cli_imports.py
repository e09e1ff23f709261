"""The CLI answers ``--help`` and argument errors without importing the training stack: torch, pandas,
distributed and optuna load only when a command runs. Checked on ``sys.modules`` in a fresh interpreter
(a property of the code, not a timing)."""

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


def _probe(*args: str) -> dict:
    code = f"HEAVY = {HEAVY!r}\n{_PROBE}"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
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
