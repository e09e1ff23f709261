"""Workers on Slurm: a whole-cluster sbatch script, or dask-jobqueue's ``SLURMCluster`` with the same workers.

Either way every worker offers one ``training_slot``: on GPU nodes one ``dask cuda worker`` process per GPU
(dask-cuda pins each to its device), on CPU nodes ``workers_per_node`` plain ``dask worker`` processes.
The sbatch script also starts the scheduler (with the Training page) on the job's first node and writes a
scheduler file on the shared filesystem, which ``dask-train ... --scheduler-file`` reads from a login node.

A node's workers share the CPUs Slurm gives the node's task (``--cpus-per-task``, passed to ``srun`` too:
``srun`` does not inherit it from ``sbatch``), and are started with ``DASK_TRAIN_SLOT_WORKERS`` set to their
number, so each uses its share for torch (``cluster.cpus``). CPU workers are started with
``CUDA_VISIBLE_DEVICES`` empty: they never train on a GPU the node may have.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

import dask
from dask.utils import format_bytes, parse_bytes

from .cpus import thread_environ
from .devices import GPU_WORKER_ENVIRON
from .plugin import TRAINING_SLOT
from .security import TLSFiles
from .spec import QUIET_TIMERS, QUIET_TIMERS_ENVIRON, check_host_port

#: Slurm's time formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d{1,6}|\d{1,6}:\d{2}|\d{1,3}:\d{2}:\d{2}|\d{1,3}-\d{1,2}(:\d{2}(:\d{2})?)?)$")
#: Each count's bounds (the largest clusters and nodes there are, with room): (option, high).
_COUNTS = {"nodes": ("--nodes", 100_000), "gpus_per_node": ("--gpus-per-node", 64),
           "workers_per_node": ("--workers-per-node", 4096), "cpus_per_worker": ("--cpus-per-worker", 4096)}
_MAX_WORKER_MEMORY = 2**44  # 16 TiB
_WORD = re.compile(r"^[A-Za-z0-9_.:@+-]+$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
_HERE_DOCUMENT = re.compile(r"(?<!<)<<(?!<)")  # << or <<-, not the one-line <<< here-string
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.:\[\]-]*:\d{1,5}$")


@dataclass(frozen=True)
class SlurmSpec:
    """What to ask Slurm for. Validated on construction.

    Examples
    --------
    >>> SlurmSpec(nodes=2, gpus_per_node=4).slots
    8
    """

    nodes: int = 1
    gpus_per_node: int = 0
    workers_per_node: int = 1  # CPU nodes only: worker processes (training slots) per node
    cpus_per_worker: int = 4
    memory_per_worker: str = "16GB"
    walltime: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    job_name: str = "dask-train"
    python: str = "python"
    setup: tuple[str, ...] = ()  # shell lines run first: `module load ...`, `source .venv/bin/activate`
    interface: str | None = None  # network interface for scheduler and workers (e.g. ib0)
    scheduler_file: str = "dask-train-scheduler.json"
    dashboard_address: str = "127.0.0.1:8787"
    scheduler_port: int = 8786  # 0: any free port (the scheduler file says which)
    #: TLS for the scheduler, the workers and your clients: files on the shared filesystem (None: plain TCP).
    tls: TLSFiles | None = None

    def __post_init__(self) -> None:
        for name, (option, high) in _COUNTS.items():
            value, low = getattr(self, name), 0 if name == "gpus_per_node" else 1
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{option} ({name}={value!r}): expected a whole number from {low} to {high:,}"
                                 + (" (0: CPU nodes)." if name == "gpus_per_node" else "."))
        if not isinstance(self.walltime, str) or not _WALLTIME.fullmatch(self.walltime):
            raise ValueError(f"--time (walltime={self.walltime!r}): use a Slurm time limit: minutes, HH:MM:SS or "
                             "D-HH:MM:SS, e.g. 04:00:00.")
        try:
            memory = parse_bytes(self.memory_per_worker)
        except (ValueError, TypeError):
            memory = -1
        if not 0 < memory <= _MAX_WORKER_MEMORY:
            raise ValueError(f"--memory-per-worker (memory_per_worker={self.memory_per_worker!r}): use a size "
                             "up to 16TiB, such as 16GB.")
        check_host_port(self.dashboard_address, "--dashboard-address (dashboard_address=)")
        if not any(c not in "0:-" for c in self.walltime):  # Slurm reads a limit of 0 as no limit at all
            raise ValueError(f"--time (walltime={self.walltime!r}): a time limit above 0 (Slurm takes 0 as none), "
                             "e.g. 04:00:00.")
        for name in ("partition", "account", "job_name", "interface"):
            value = getattr(self, name)
            if value is not None and not _WORD.fullmatch(value):
                option = f"--{name.replace('_', '-')}"
                raise ValueError(f"{option} ({name}={value!r}): letters, digits and _.:@+- only.")
        self._check_shell_words()

    def _check_shell_words(self) -> None:
        """What goes into the script as it is given: the Python, the setup lines, file names. A control
        character (a newline most of all) would end the line it is on, in a comment too, and start a command
        of its own; a here-document would take the script's lines after it. (``dask-train cluster sbatch`` also
        has bash read the whole script: an open quote in a setup line, say.)"""
        if not isinstance(self.scheduler_file, str) or not _FILE_NAME.fullmatch(self.scheduler_file):
            raise ValueError(f"scheduler_file={self.scheduler_file!r}: a file name of letters, digits and _.+- "
                             "(it is written in the submit directory).")
        named = [("--python", self.python)]
        if self.tls is not None:
            tls = self.tls
            named += [("--tls-ca-file", tls.ca_file), ("--tls-cert", tls.cert), ("--tls-key", tls.key)]
        for option, value in named:
            if not isinstance(value, str) or not value or not value.isprintable():
                raise ValueError(f"{option} {value!r}: expected a non-empty name without control characters "
                                 "(newlines, tabs): it goes into the job script as it is.")
        for line in self.setup:
            if not isinstance(line, str) or not line.strip() or not line.isprintable():
                raise ValueError(f"--setup {line!r}: expected one shell line without control characters (give "
                                 "each line as its own --setup).")
            if _HERE_DOCUMENT.search(line):  # bash -n reads the rest of the script as its text: no error
                raise ValueError(f"--setup {line!r}: a here-document (<<) takes the lines after it, the rest of "
                                 "the job script here. Write what it holds to a file and use that.")

    @property
    def workers(self) -> int:
        """Worker processes per node: one per GPU, or ``workers_per_node`` on CPU nodes."""
        return self.gpus_per_node or self.workers_per_node

    @property
    def slots(self) -> int:
        return self.nodes * self.workers

    @property
    def cpus_per_node(self) -> int:
        """CPUs of the one task per node that runs all of the node's workers."""
        return self.cpus_per_worker * self.workers


#: ``python -m`` puts the current directory (the job's submit directory) first on ``sys.path``: a ``grp.py`` or
#: ``training/`` kept there would be imported by the scheduler and every worker in place of Python's or ours.
#: Python 3.11+ leaves it off with this set (older ones ignore it).
SAFE_PATH_ENVIRON = {"PYTHONSAFEPATH": "1"}


def sbatch_directives(spec: SlurmSpec) -> list[str]:
    """The ``#SBATCH`` lines: one task per node holding every CPU, GPU and byte its workers need.

    Examples
    --------
    >>> "#SBATCH --gres=gpu:4" in sbatch_directives(SlurmSpec(nodes=2, gpus_per_node=4))
    True
    """
    lines = [f"--job-name={spec.job_name}", f"--nodes={spec.nodes}", "--ntasks-per-node=1",
             f"--cpus-per-task={spec.cpus_per_node}",
             f"--mem={parse_bytes(spec.memory_per_worker) * spec.workers // 2**20}M",
             f"--time={spec.walltime}", "--output=%x_%j.out", "--error=%x_%j.err"]
    if spec.gpus_per_node:
        lines.append(f"--gres=gpu:{spec.gpus_per_node}")
    if spec.partition:
        lines.append(f"--partition={spec.partition}")
    if spec.account:
        lines.append(f"--account={spec.account}")
    return [f"#SBATCH {line}" for line in lines]


def scheduler_command(spec: SlurmSpec) -> list[str]:
    """``dask scheduler`` with the Training page, writing the scheduler file."""
    command = [spec.python, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", "$SCHEDULER_FILE",
               "--port", str(spec.scheduler_port), "--dashboard-address", spec.dashboard_address,
               "--preload", "training.dashboard"]
    if spec.tls is not None:
        command += ["--protocol", "tls", *_tls_args(spec.tls)]
    return command + (["--interface", spec.interface] if spec.interface else [])


def _tls_args(tls: TLSFiles) -> list[str]:
    return ["--tls-ca-file", str(tls.ca_file), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]


def worker_command(spec: SlurmSpec) -> list[str]:
    """One node's workers: ``dask cuda worker`` (a process per GPU) or ``dask worker --nworkers N``."""
    if spec.gpus_per_node:
        command = [spec.python, "-m", "dask", "cuda", "worker"]
    else:
        command = [spec.python, "-m", "distributed.cli.dask_worker", "--nworkers", str(spec.workers_per_node)]
    command += ["--scheduler-file", "$SCHEDULER_FILE", "--nthreads", "1", "--resources", f"{TRAINING_SLOT}=1",
                "--memory-limit", spec.memory_per_worker, "--death-timeout", "120"]
    if spec.tls is not None:
        command += _tls_args(spec.tls)
    return command + (["--interface", spec.interface] if spec.interface else [])


def worker_environ(spec: SlurmSpec) -> dict[str, str]:
    """What a node's workers are started with: how many share the node's CPUs; no GPU for CPU workers, NCCL
    errors raised in the failing rank for GPU workers (``cluster.devices.GPU_WORKER_ENVIRON``).

    Examples
    --------
    >>> worker_environ(SlurmSpec(workers_per_node=8))
    {'DASK_TRAIN_SLOT_WORKERS': '8', 'CUDA_VISIBLE_DEVICES': ''}
    >>> worker_environ(SlurmSpec(gpus_per_node=4))
    {'DASK_TRAIN_SLOT_WORKERS': '4', 'TORCH_NCCL_ASYNC_ERROR_HANDLING': '2'}
    """
    return {**thread_environ(spec.workers),
            **(GPU_WORKER_ENVIRON if spec.gpus_per_node else {"CUDA_VISIBLE_DEVICES": ""})}


def _export(environ: dict[str, str]) -> str:
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in environ.items())


def sbatch_script(spec: SlurmSpec, file_name: str | None = None) -> str:
    """The whole-cluster job script: ``sbatch`` it, then point dask-train at its scheduler file.
    ``file_name``: where it is written (its header says to submit that; default ``JOB_NAME.sbatch``).

    Examples
    --------
    >>> script = sbatch_script(SlurmSpec(nodes=2, gpus_per_node=4, partition="gpu"))
    >>> "#SBATCH --partition=gpu" in script and "dask cuda worker" in script
    True
    """
    kind = f"{spec.gpus_per_node} GPUs" if spec.gpus_per_node else f"{spec.workers_per_node} CPU workers"
    setup = "\n".join(spec.setup) or "# source ~/env/bin/activate    # the environment with dask-train installed"
    gpu_note = "" if spec.gpus_per_node else "\n# CPU workers: any GPU on the node is hidden from them."
    script = shlex.quote(file_name if file_name and file_name.isprintable() else f"{spec.job_name}.sbatch")
    return f"""#!/usr/bin/env bash
# dask-train cluster: {spec.nodes} node(s) x {kind}, one training slot per worker ({spec.slots} in all).
# Submit with `sbatch {script}`; when {spec.scheduler_file} appears, from a login node:
#   dask-train sweep SWEEP.yaml --scheduler-file {spec.scheduler_file}{_client_tls(spec)}
# The dashboard listens on {spec.dashboard_address} of the first node (ssh -L 8787:localhost:8787 NODE).
{chr(10).join(sbatch_directives(spec))}
set -euo pipefail
{setup}
# Dask's timers, slowed for training (the scheduler's and the workers'): see cluster.spec.QUIET_TIMERS.
{_export(QUIET_TIMERS_ENVIRON)}
# Nothing is imported from the submit directory (see cluster.slurm.SAFE_PATH_ENVIRON).
{_export(SAFE_PATH_ENVIRON)}

# On the shared filesystem: the workers and your dask-train commands read it.
SCHEDULER_FILE="$SLURM_SUBMIT_DIR/{spec.scheduler_file}"
rm -f "$SCHEDULER_FILE"
{_shell(scheduler_command(spec))} &
SCHEDULER_PID=$!
for _ in $(seq 120); do [ -s "$SCHEDULER_FILE" ] && break; sleep 1; done
[ -s "$SCHEDULER_FILE" ] || {{ echo "The scheduler did not write $SCHEDULER_FILE within 120 s" >&2; exit 1; }}

# One task per node starts that node's workers with all its CPUs: torch threads per worker = those CPUs
# divided among its {spec.workers} slot workers (--setup 'export DASK_TRAIN_TORCH_THREADS=N' overrides).{gpu_note}
{_export(worker_environ(spec))}
srun --ntasks-per-node=1 --cpus-per-task={spec.cpus_per_node} --kill-on-bad-exit=1 {_shell(worker_command(spec))} &
WORKERS_PID=$!
# Until the time limit or scancel; if the scheduler or the workers stop, the job ends.
wait -n "$SCHEDULER_PID" "$WORKERS_PID"
"""


def _client_tls(spec: SlurmSpec) -> str:
    if spec.tls is None:
        return ""
    return (" " + shlex.join(_tls_args(spec.tls))
            + "\n# TLS covers the scheduler, workers and clients; DDP rank-to-rank traffic is not encrypted.")


def _shell(command: list[str]) -> str:
    """A command line with its words quoted, except the ``$SCHEDULER_FILE`` variable (quoted for the shell)."""
    return " ".join('"$SCHEDULER_FILE"' if word == "$SCHEDULER_FILE" else shlex.quote(word) for word in command)


def slurm_cluster(spec: SlurmSpec, **kwargs: Any):
    """dask-jobqueue's ``SLURMCluster`` with one job per node and this spec's workers (call ``scale(jobs=N)``).

    The scheduler runs in this process (as dask-jobqueue does); the workers are Slurm jobs.

    Examples
    --------
    >>> cluster = slurm_cluster(SlurmSpec(gpus_per_node=4, partition="gpu"))  # doctest: +SKIP
    >>> cluster.scale(jobs=2)  # doctest: +SKIP
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ImportError("Slurm clusters need dask-jobqueue: pip install 'dask-train[slurm]'") from None
    gpu = bool(spec.gpus_per_node)
    with dask.config.set(QUIET_TIMERS):  # the scheduler's, created here; the workers' come with the prologue
        return SLURMCluster(
            cores=spec.workers, processes=spec.workers,
            memory=format_bytes(parse_bytes(spec.memory_per_worker) * spec.workers),
            job_cpu=spec.cpus_per_worker * spec.workers, walltime=spec.walltime, queue=spec.partition,
            account=spec.account, job_name=spec.job_name, python=spec.python, interface=spec.interface,
            job_script_prologue=[*spec.setup, _export(QUIET_TIMERS_ENVIRON), _export(SAFE_PATH_ENVIRON),
                                 _export(worker_environ(spec))],
            job_extra_directives=[f"--gres=gpu:{spec.gpus_per_node}"] if gpu else [],
            worker_command="dask cuda worker" if gpu else "distributed.cli.dask_worker",
            worker_extra_args=["--resources", f"{TRAINING_SLOT}=1"],
            scheduler_options={"dashboard_address": spec.dashboard_address, "preload": ["training.dashboard"]},
            **kwargs,
        )
