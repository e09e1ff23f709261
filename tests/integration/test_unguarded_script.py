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


_SPAWNING_SCRIPT = """\
import multiprocessing
import sys

from cluster import ClusterSpec, start_local_cluster

if __name__ == "__main__":  # the parent: as LocalCUDACluster does per GPU, a worker process started by spawn
    worker = multiprocessing.get_context("spawn").Process(target=print, name="gpu-worker")
    worker.start()
    worker.join(120)
    print("WORKER EXIT", worker.exitcode)
    sys.exit(0)

# The unguarded top level, run again when the spawned worker imports this script (as __mp_main__):
cluster = start_local_cluster(ClusterSpec(workers=1, gpus="off", dashboard_address="127.0.0.1:0"))
print("A CLUSTER STARTED INSIDE THE WORKER")
cluster.close()
"""


def test_a_spawned_worker_that_imports_an_unguarded_script_stops_at_once_with_the_fix(tmp_path):
    """dask-cuda's LocalCUDACluster starts its workers by spawn, so they import an unguarded script again; there
    the cluster call must end that worker within seconds, in one line naming the main guard (shown here with a
    spawned process of our own: no GPU needed)."""
    script = tmp_path / "unguarded_gpu.py"
    script.write_text(_SPAWNING_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WORKER EXIT 1" in done.stdout, done.stdout + done.stderr
    assert "A CLUSTER STARTED INSIDE THE WORKER" not in done.stdout
    assert done.stderr.strip().splitlines() == [
        "Error: a worker process started by spawn (dask-cuda's LocalCUDACluster starts one per GPU from your "
        "process) imported your script again, and its top level starts a cluster. Put the code that trains under "
        '`if __name__ == "__main__":`.'], done.stderr
