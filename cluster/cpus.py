"""How many torch threads a training worker uses: every CPU it was given, shared among the slot workers given
the same CPUs.

The rule, applied on each worker (by the worker plugin) and by the embedded cluster for its workers' OpenMP
variables::

    threads = DASK_TRAIN_TORCH_THREADS                     when set in the worker's environment (the override)
            = max(1, cpus // DASK_TRAIN_SLOT_WORKERS)      otherwise

``cpus`` is what the worker process may really run on: its CPU affinity (``taskset``, Slurm's binding),
capped by its cgroup CPU quota (a Kubernetes CPU limit, ``docker run --cpus``), rounded up, read where
``dask.system.cpu_count`` reads them. Read here, not by importing Dask: a command line counts the CPUs to
start its worker program before it has imported Dask (a tenth of a second it spends while that program
imports torch). ``DASK_TRAIN_SLOT_WORKERS`` is how many slot workers were started on
those same CPUs (``dask worker --nworkers N`` starts N; default 1): whoever starts the workers sets it in
the environment they start with (the generated Slurm scripts, dask-jobqueue jobs, the Compose file and
the embedded cluster do), never a running worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

#: Torch threads for every training task on a worker; overrides the rule. Set where the worker is started.
TORCH_THREADS_VARIABLE = "DASK_TRAIN_TORCH_THREADS"
#: Slot workers started on the same CPUs as this one (``--nworkers``); the CPUs are divided among them.
SLOT_WORKERS_VARIABLE = "DASK_TRAIN_SLOT_WORKERS"


def cpu_cores() -> int:
    """CPUs this process may use: its CPU affinity capped by its cgroup CPU quota (rounded up), at least 1."""
    if not hasattr(os, "sched_getaffinity"):  # macOS, Windows: no cgroups; Dask reads their affinity
        from dask.system import cpu_count

        return max(1, cpu_count())
    process_cpu_count = getattr(os, "process_cpu_count", None)  # 3.13+: the affinity, or PYTHON_CPU_COUNT
    count = (process_cpu_count() or 1) if process_cpu_count else len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota)) if quota else count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """This process's cgroup CPU quota in CPUs (``1.5``: one and a half), None without one: cgroup v1's
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` (``-1``: none), else v2's ``cpu.max`` of this process's group
    (``max 100000``: none). Files that are missing or unreadable mean no quota.
    """
    for folder in ("cpuacct,cpu", "cpu,cpuacct"):  # v1: the name differs across distributions
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text())
            period = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    try:  # v2: the group this process is in (the last field of its one line)
        group = own.read_text().strip().split(":")[-1].strip("/")
        quota_text, period_text = (root / group / "cpu.max").read_text().split()
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):  # no such files, or "max PERIOD": no quota
        return None
    return quota / period if quota > 0 and period > 0 else None


def threads_per_worker(cpus: int, slot_workers: int) -> int:
    """Each slot worker's share of ``cpus``, at least one thread.

    Examples
    --------
    >>> threads_per_worker(32, 8)
    4
    >>> threads_per_worker(2, 1), threads_per_worker(2, 3)
    (2, 1)
    """
    if slot_workers < 1:
        raise ValueError(f"slot_workers={slot_workers!r}: at least 1 worker shares the CPUs.")
    return max(1, cpus // slot_workers)


def torch_threads(environ: Mapping[str, str] | None = None, cpus: Callable[[], int] = cpu_cores) -> int:
    """Torch threads for a worker with this environment: the override, else its share of ``cpus()``.

    Raises
    ------
    ValueError
        One of the two variables is set to something other than a whole number of at least 1.

    Examples
    --------
    >>> torch_threads({SLOT_WORKERS_VARIABLE: "8"}, cpus=lambda: 32)
    4
    >>> torch_threads({TORCH_THREADS_VARIABLE: "3", SLOT_WORKERS_VARIABLE: "8"}, cpus=lambda: 32)
    3
    >>> torch_threads({}, cpus=lambda: 6)
    6
    """
    environ = os.environ if environ is None else environ
    override = _whole_number(environ, TORCH_THREADS_VARIABLE, "unset it to use the worker's share of its CPUs")
    if override is not None:
        return override
    sharing = _whole_number(environ, SLOT_WORKERS_VARIABLE, "set it to the --nworkers of the command that "
                            "started the workers, or unset it for 1")
    return threads_per_worker(cpus(), sharing or 1)


def thread_environ(slot_workers: int, torch_threads: int | None = None) -> dict[str, str]:
    """The variables a starter gives the ``slot_workers`` worker processes it starts on one set of CPUs.

    Examples
    --------
    >>> thread_environ(8)
    {'DASK_TRAIN_SLOT_WORKERS': '8'}
    >>> thread_environ(2, torch_threads=4)
    {'DASK_TRAIN_SLOT_WORKERS': '2', 'DASK_TRAIN_TORCH_THREADS': '4'}
    """
    if slot_workers < 1:
        raise ValueError(f"slot_workers={slot_workers!r}: a starter starts at least 1 worker.")
    environ = {SLOT_WORKERS_VARIABLE: str(slot_workers)}
    if torch_threads is not None:
        if torch_threads < 1:
            raise ValueError(f"torch_threads={torch_threads!r}: need at least 1 (or None for the worker's share "
                             "of its CPUs).")
        environ[TORCH_THREADS_VARIABLE] = str(torch_threads)
    return environ


def _whole_number(environ: Mapping[str, str], name: str, otherwise: str) -> int | None:
    """The variable's value as a whole number >= 1, None when unset or empty; a clear error otherwise."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r} in the workers' environment: need a whole number of at least 1 "
                         f"(e.g. {name}=4), or {otherwise}.")
    return int(raw)
