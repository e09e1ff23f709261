"""The generated Slurm job script, run for real on this machine: ``srun`` is replaced by a shim that runs
its command once (one node), everything else is the script as users submit it. The job runs on two CPUs
(``taskset``, as Slurm binds a job to the CPUs it holds), and its workers train with their share of them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from distributed import Client

from cluster import TRAINING_SLOT, cluster_workers, connect, require_slots
from cluster.slurm import SlurmSpec, sbatch_script
from tests.helpers import poll_for

pytestmark = [
    pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs"),
]

SRUN = """#!/bin/sh
# One "node": drop srun's own options and run the command.
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""
TWO_CPUS = ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))


@contextlib.contextmanager
def submitted(tmp_path, spec: SlurmSpec) -> Iterator[tuple[subprocess.Popen, Client]]:
    """The job script started as Slurm would on one node holding two CPUs; a client once its workers joined."""
    script = tmp_path / "dask-train.sbatch"
    script.write_text(sbatch_script(spec))
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(SRUN)
    (shims / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path)}
    job = subprocess.Popen(["taskset", "-c", TWO_CPUS, "bash", str(script)], env=env, cwd=tmp_path,
                           start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    scheduler_file = tmp_path / spec.scheduler_file
    try:
        def started() -> bool:
            return (scheduler_file.exists() and scheduler_file.stat().st_size > 0) or job.poll() is not None

        poll_for(started, timeout=60, what="the job's scheduler file")
        assert job.poll() is None, job.stdout.read() if job.stdout else ""
        with connect(scheduler_file=str(scheduler_file), timeout=60, min_workers=spec.slots) as client:
            yield job, client
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)


def torch_threads_per_worker(client: Client) -> list[int]:
    """What a trial on each worker sees: its task thread prepared as trials and DDP ranks prepare theirs."""

    def torch_threads_in_a_training_task() -> int:  # local: travels by value (the job cannot import tests/)
        import torch

        from cluster.plugin import prepare_task_thread

        prepare_task_thread()
        return torch.get_num_threads()

    futures = [client.submit(torch_threads_in_a_training_task, workers=[address], resources={TRAINING_SLOT: 1},
                             pure=False) for address in require_slots(client)]
    return [future.result(timeout=120) for future in futures]


def test_cpu_job_script_starts_a_scheduler_and_slot_workers(tmp_path):
    """... and imports nothing from the submit directory (a ``grp.py``, which torch's import reaches, or a
    ``training/`` of the user's own), where ``python -m`` would look first."""
    (tmp_path / "training").mkdir()
    for planted in (tmp_path / "grp.py", tmp_path / "training" / "__init__.py"):
        planted.write_text("raise SystemExit('planted module imported')\n")
    spec = SlurmSpec(workers_per_node=2, cpus_per_worker=1, memory_per_worker="2GB", python=sys.executable,
                     dashboard_address="127.0.0.1:0", scheduler_port=0, job_name="dt-test")
    with submitted(tmp_path, spec) as (_, client):
        assert len(require_slots(client, 2)) == 2  # --nworkers 2, one training slot each
        port = client.scheduler_info()["services"]["dashboard"]  # on the node's loopback, as the script says
        page = f"http://127.0.0.1:{port}/training/data.json"
        with urllib.request.urlopen(page, timeout=10) as response:  # served: --preload training.dashboard
            assert json.load(response)["jobs"] == []
        info = cluster_workers(client).values()
        assert {w["nthreads"] for w in info} == {1}
        assert {round(w["memory_limit"] / 1e9) for w in info} == {2}
        assert torch_threads_per_worker(client) == [1, 1]  # the node's 2 CPUs shared by its 2 slot workers


def test_a_worker_alone_on_two_cpus_trains_with_two_torch_threads(tmp_path):
    spec = SlurmSpec(workers_per_node=1, cpus_per_worker=2, memory_per_worker="2GB", python=sys.executable,
                     dashboard_address="127.0.0.1:0", scheduler_port=0, job_name="dt-test")
    with submitted(tmp_path, spec) as (_, client):
        assert torch_threads_per_worker(client) == [2]
