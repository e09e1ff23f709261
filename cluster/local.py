"""The embedded cluster: one worker process per GPU (dask-cuda), or per CPU training slot without GPUs.

Every worker offers one ``training_slot`` resource, so trials and DDP ranks are pinned the same way on GPU
and CPU. Two Dask defaults that cost torch throughput are switched off for these workers: the nanny's
``MALLOC_TRIM_THRESHOLD_=65536`` (~13% slower torch) and the worker's statistical profiler. Dask also writes
``OMP_NUM_THREADS=1`` and friends into the *creating* process's environment; this module passes thread
settings to the workers only, and leaves the caller's environment as it found it.

CPU workers are started in a program of their own (:mod:`cluster.worker_process`, as ``dask worker`` is), so
they never re-import the caller's ``__main__``: a client script needs no ``__main__`` guard. That program
starts first, and its one fork server imports torch for all the workers while the scheduler starts.
CPU workers are started with ``CUDA_VISIBLE_DEVICES`` empty, so none of them trains on a GPU this machine
may have (``--gpus off``, or dask-cuda missing); their torch threads follow ``cluster.cpus``' rule.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import os
import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

import dask
from distributed import LocalCluster
from distributed.deploy.cluster import Cluster

from .cpus import cpu_cores, thread_environ
from .devices import GPU_WORKER_ENVIRON, dask_cuda_problem, detect_gpus
from .errors import ClusterError
from .plugin import TRAINING_SLOT
from .spec import QUIET_TIMERS, WORKER_MEMORY, WORKERS_PER_CPU, ClusterSpec, max_local_workers  # noqa: F401  (re-exported)
from .worker_host import THREAD_VARIABLES, WorkerHost, cpu_worker_environ, openmp_environ, take_early
from .worker_process import WorkerProcess

log = logging.getLogger(__name__)

_WORKER_START_TIMEOUT = 120.0  # seconds for the worker processes to start and join
_JOIN_POLL = 0.02  # seconds between looks at who joined (the scheduler's news, in this process: no message)


def start_local_cluster(spec: ClusterSpec | None = None) -> Cluster:
    """Start the embedded cluster described by ``spec`` and return it (a context manager too).

    With GPUs visible and dask-cuda importable: ``LocalCUDACluster``, one process per GPU, one thread each.
    Otherwise a process-based ``LocalCluster`` with one worker per core (or ``spec.workers``), each with
    a one-thread Dask executor, its share of the cores for torch, and no GPU in sight (started with
    ``CUDA_VISIBLE_DEVICES`` empty). GPUs left unused because of dask-cuda are logged with the reason.

    Examples
    --------
    >>> with start_local_cluster(ClusterSpec(workers=1, gpus="off", dashboard_address=":0")) as cluster:
    ...     len(cluster.scheduler_info["workers"])
    1
    """
    refuse_in_a_spawned_child()
    spec = spec or ClusterSpec()
    gpus = detect_gpus() if spec.gpus == "auto" else []
    problem = dask_cuda_problem() if gpus else None
    with _known_warnings_as_one_line():
        if gpus and problem is None:
            return _start_gpu_cluster(spec, gpus)
        if gpus:
            log.warning("GPUs %s are visible but %s Starting CPU workers, with the GPUs hidden from them.",
                        gpus, problem)
        return _start_cpu_cluster(spec)


#: What a worker process started by spawn says when the script it imports again starts a cluster at its top level.
UNGUARDED_SCRIPT = ("Error: a worker process started by spawn (dask-cuda's LocalCUDACluster starts one per GPU "
                    "from your process) imported your script again, and its top level starts a cluster. Put the "
                    "code that trains under `if __name__ == \"__main__\":`.")


def refuse_in_a_spawned_child() -> None:
    """Stop a process started by spawn that is importing the parent's ``__main__`` (Python runs an unguarded
    script's top level again there) before it starts a cluster of its own: at once, with one line naming the
    fix, instead of every GPU worker trying to start a cluster and the parent waiting for workers that never
    come. ``multiprocessing`` marks a spawned child as "inheriting" until that import is done."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(UNGUARDED_SCRIPT)


_PORT_IN_USE = re.compile(r"Port (\d+) is already in use.*on port (\d+) instead", re.S)


@contextlib.contextmanager
def _known_warnings_as_one_line() -> Iterator[None]:
    """Dask's three-line ``UserWarning`` about a dashboard port in use becomes one line of ours; any other
    warning is shown as it was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        found = _PORT_IN_USE.search(str(warning.message))
        if found:
            log.warning("Dashboard port %s is in use (another cluster?): this cluster's dashboard is on port %s.",
                        *found.groups())
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


class _NanniesRestart:
    """For the embedded clusters (SpecClusters): a worker whose process ended is restarted by its nanny.

    dask-train ends a worker's process to free a slot held by a stuck training thread. SpecCluster closes the
    nanny of a worker name that is absent ``lost-worker-timeout`` after a removal, and when the same worker
    is ended twice within that time its nanny can be closed just while it restarts the worker: the cluster
    then has one worker fewer for good. The nanny restarts its worker on its own: leave it be.
    """

    def _update_worker_status(self, op: str, msg: Any) -> None:
        if op == "remove":
            Cluster._update_worker_status(self, op, msg)  # type: ignore[arg-type]  # not SpecCluster's
        else:
            super()._update_worker_status(op, msg)  # type: ignore[misc]


class _CpuCluster(_NanniesRestart, LocalCluster):
    """The embedded CPU cluster: its nannies run in one program (``worker_host``), which ends with it."""

    worker_host: WorkerHost | None = None

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            if self.worker_host is not None:
                await self.worker_host.close()


def _start_cpu_cluster(spec: ClusterSpec) -> Cluster:
    workers = spec.workers or cpu_cores()
    # First (unless a command line started it earlier), so that its fork server imports torch while the
    # scheduler starts.
    environ = cpu_worker_environ(workers, spec.torch_threads)
    host = take_early(environ) or WorkerHost(environ)
    try:
        with _environ_preserved(), dask.config.set(QUIET_TIMERS):  # the scheduler's timers
            cluster = _CpuCluster(
                n_workers=0, threads_per_worker=1, processes=True, resources={TRAINING_SLOT: 1},
                host=spec.host, scheduler_port=spec.scheduler_port, dashboard_address=spec.dashboard_address,
                **_security_kwargs(spec),
            )
    except BaseException:
        host.close_now()
        raise
    cluster.worker_host = host
    try:
        _start_named_workers(cluster, _worker_process_spec(spec, host), workers, "cpu")
    except BaseException:  # e.g. Ctrl-C while the workers start
        host.close_now()  # first: a nanny still joining must not see its scheduler go (it would say so)
        cluster.close()
        raise
    return cluster


def _worker_process_spec(spec: ClusterSpec, host: WorkerHost) -> dict[str, Any]:
    """Each worker's nanny in the cluster's worker program (``cluster.worker_main``): it never re-imports
    the caller's ``__main__``, so client scripts need no ``if __name__ == "__main__":`` guard."""
    nanny = {"nthreads": 1, "resources": {TRAINING_SLOT: 1}, "host": spec.host,
             "env": host.environ}  # outranks the nanny's own variables
    if spec.tls is not None:
        nanny["protocol"] = "tls://"
    tls = None if spec.tls is None else {"ca_file": spec.tls.ca_file, "cert": spec.tls.cert, "key": spec.tls.key}
    return {"cls": WorkerProcess, "options": {"host": host, "nanny": nanny, "config": _worker_config_values({}),
                                              "tls": tls}}


def _start_named_workers(cluster: LocalCluster, worker_spec: dict[str, Any], count: int, prefix: str) -> None:
    """Workers named ``cpu-0``, ``cpu-1``...: what the dashboard's pages and the Training page show."""
    for i in range(count):
        cluster.worker_spec[f"{prefix}-{i}"] = copy.deepcopy(worker_spec)
    cluster.new_spec = copy.deepcopy(worker_spec)
    cluster.scale(count)
    _wait_for_worker_processes(cluster, count, _WORKER_START_TIMEOUT)


def _wait_for_worker_processes(cluster: LocalCluster, count: int, timeout: float) -> None:
    """Wait for ``count`` workers to join; fail at once, naming the worker, when a worker process exits."""
    deadline = time.monotonic() + timeout
    while len(cluster.scheduler_info.get("workers", {})) < count:
        exited = {name: w.exit_code for name, w in cluster.workers.items()
                  if isinstance(w, WorkerProcess) and w.exit_code is not None}
        if exited:
            raise ClusterError(f"Worker process(es) {exited} (name: exit code) exited before joining the "
                               "embedded cluster; their error is printed above. Check that `python -m "
                               "cluster.worker_main` can import dask-train in this environment.")
        if time.monotonic() > deadline:
            raise ClusterError(f"Only {len(cluster.scheduler_info.get('workers', {}))} of {count} workers "
                               f"joined the embedded cluster within {timeout:g}s. The machine may be "
                               "overloaded: retry, or start fewer workers (--workers).")
        time.sleep(_JOIN_POLL)


def _start_gpu_cluster(spec: ClusterSpec, gpus: list[str]) -> Cluster:
    from dask_cuda import LocalCUDACluster

    chosen = gpus[: spec.workers] if spec.workers else gpus
    # dask-cuda replaces the nanny's env= with CUDA_VISIBLE_DEVICES: the rest travels as Dask config.
    environ = thread_environ(len(chosen), spec.torch_threads)
    cuda_cluster = type("_CudaCluster", (_NanniesRestart, LocalCUDACluster), {})
    with _worker_config({**environ, **openmp_environ(environ), **GPU_WORKER_ENVIRON}), _environ_preserved():
        return cuda_cluster(
            CUDA_VISIBLE_DEVICES=",".join(chosen), n_workers=len(chosen), threads_per_worker=1,
            resources={TRAINING_SLOT: 1}, host=spec.host, scheduler_port=spec.scheduler_port,
            dashboard_address=spec.dashboard_address, **_security_kwargs(spec),
        )


def _security_kwargs(spec: ClusterSpec) -> dict:
    if spec.tls is None:
        return {}
    return {"security": spec.tls.security(), "protocol": "tls://"}


@contextlib.contextmanager
def _worker_config(worker_environ: dict[str, str]) -> Iterator[None]:
    """Dask config for the scheduler and nannies created in this context (the quiet timers); the nannies
    also hand it to their worker processes."""
    with dask.config.set(_worker_config_values(worker_environ)):
        yield


def _worker_config_values(worker_environ: dict[str, str]) -> dict[str, Any]:
    """No malloc trim or one-thread pools from the nanny, ``worker_environ`` for the worker, no profiler,
    quiet timers."""
    unset = {f"distributed.nanny.pre-spawn-environ.{name}": None
             for name in ("MALLOC_TRIM_THRESHOLD_", *THREAD_VARIABLES)}
    child_env = {f"distributed.nanny.environ.{name}": value for name, value in worker_environ.items()}
    return {**unset, **child_env, "distributed.worker.profile.enabled": False, **QUIET_TIMERS}


@contextlib.contextmanager
def _environ_preserved() -> Iterator[None]:
    """Undo what starting a cluster writes into this process's environment (e.g. ``PYTHONHASHSEED``)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
