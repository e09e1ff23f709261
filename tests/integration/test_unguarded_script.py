"""A client script with no ``if __name__ == "__main__":`` guard runs a sweep on the embedded cluster.

The embedded cluster's workers are started as their own programs (``cluster.worker_main``), so they never
re-import the user's script: the script's top level runs once, and the sweep completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

_SCRIPT = """\
from pathlib import Path

from training import Sweep

with open(Path(__file__).with_name("imports.log"), "a") as log:  # one line per import of this script
    log.write("imported\\n")

sweep = Sweep("xor", {{"lr": [0.05, 0.2]}}, epochs=2, name="unguarded", runs_dir={runs!r})
result = sweep.run(progress=False)
print("TRIALS", len(result.table), "BEST", result.best_trial)
"""


def test_an_unguarded_script_completes_and_is_imported_once(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(runs=str(tmp_path / "runs"))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "TRIALS 2 BEST" in done.stdout, output
    assert "Traceback" not in output
    assert (tmp_path / "imports.log").read_text().splitlines() == ["imported"]  # never re-imported by a worker
