"""Every CPU a worker was given is used, and no more: real ``dask worker`` processes, started with the Compose
file's command line and environment under a CPU affinity (``taskset``, as Slurm binds a task), train with
their share of those CPUs as torch threads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distributed import Client

from cluster import TRAINING_SLOT, cluster_workers, prepare_workers
from tests.helpers import poll_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs"),
]

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "compose.yaml"
TWO_CPUS = sorted(os.sched_getaffinity(0))[:2]


def on_cpus(cpus: list[int], command: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus)), *command]


def compose_worker(service: str, scheduler: str) -> tuple[list[str], dict[str, str]]:
    """The service's command (``dask`` run by this Python) and the environment Compose gives it."""
    spec = yaml.safe_load(COMPOSE.read_text())["services"][service]
    command = [word.replace("tcp://scheduler:8786", scheduler) for word in spec["command"]]
    assert command[0] == "dask"
    return [sys.executable, "-m", "dask", *command[1:]], {**os.environ, **spec.get("environment", {})}


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def scheduler(tmp_path) -> Iterator[str]:
    """A scheduler process of its own, as on a cluster; its address."""
    scheduler_file = tmp_path / "scheduler.json"
    proc = start([sys.executable, "-m", "dask", "scheduler", "--scheduler-file", str(scheduler_file),
                  "--host", "127.0.0.1", "--port", "0", "--no-dashboard"], dict(os.environ))
    try:
        def started() -> bool:
            return (scheduler_file.exists() and scheduler_file.stat().st_size > 0) or proc.poll() is not None

        poll_for(started, timeout=60, what="the scheduler file")
        assert proc.poll() is None, "the scheduler exited"
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        stop([proc])


def threads_by_worker_name(client: Client, names: list[str]) -> dict[str, int]:
    """What a trial on each worker sees: its task thread prepared as trials and DDP ranks prepare theirs."""

    def torch_threads_in_a_training_task() -> int:  # local: travels by value (workers need not import tests/)
        import torch

        from cluster.plugin import prepare_task_thread

        prepare_task_thread()
        return torch.get_num_threads()

    client.wait_for_workers(len(names), timeout=120)
    prepare_workers(client)
    workers = {w["name"]: address for address, w in cluster_workers(client).items()}
    futures = {name: client.submit(torch_threads_in_a_training_task, workers=[workers[name]],
                                   resources={TRAINING_SLOT: 1}, pure=False, key=f"threads-{name}")
               for name in names}
    return {name: future.result(timeout=120) for name, future in futures.items()}


def test_compose_workers_use_their_share_of_the_cpus_they_are_given(scheduler):
    """Compose's two workers share the host's CPUs; a worker alone on its CPUs (a pod, a hand-started
    ``dask worker``) uses them all; DASK_TRAIN_TORCH_THREADS overrides."""
    shared, shared_env = compose_worker("worker-1", scheduler)
    alone_env = {k: v for k, v in shared_env.items() if k != "DASK_TRAIN_SLOT_WORKERS"}
    named = {name: [w if w != "worker-1" else name for w in shared] for name in ("alone-2", "alone-1", "forced")}
    processes = [
        start(on_cpus(TWO_CPUS, shared), shared_env),  # worker-1 as Compose starts it: 2 CPUs / 2 workers
        start(on_cpus(TWO_CPUS, named["alone-2"]), alone_env),
        start(on_cpus(TWO_CPUS[:1], named["alone-1"]), alone_env),
        start(on_cpus(TWO_CPUS[:1], named["forced"]), {**alone_env, "DASK_TRAIN_TORCH_THREADS": "3"}),
    ]
    try:
        with Client(scheduler, timeout=30) as client:
            threads = threads_by_worker_name(client, ["worker-1", "alone-2", "alone-1", "forced"])
    finally:
        stop(processes)
    assert threads == {"worker-1": 1, "alone-2": 2, "alone-1": 1, "forced": 3}
