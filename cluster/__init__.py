"""Getting workers: the embedded local cluster (GPU or CPU), connecting to a running one, TLS, worker setup
(including how many torch threads each worker uses: ``cluster.cpus``)."""

from __future__ import annotations

from .connect import Target, connect, dashboard_url, describe_workers, open_client, prepare_workers, require_slots
from .cpus import SLOT_WORKERS_VARIABLE, TORCH_THREADS_VARIABLE, cpu_cores, torch_threads
from .devices import cuda_visible_devices, dask_cuda_problem, detect_gpus, visible_gpus
from .errors import ClusterConnectError, ClusterError, NoTrainingSlots
from .local import ClusterSpec, start_local_cluster
from .plugin import TRAINING_SLOT, TrainingWorkerPlugin, prepare_task_thread
from .security import (
    TLSFiles,
    check_scheduler_file_path,
    make_tls_files,
    read_scheduler_file,
    remove_tls_files,
    write_scheduler_file,
)

__all__ = [
    "SLOT_WORKERS_VARIABLE",
    "TORCH_THREADS_VARIABLE",
    "TRAINING_SLOT",
    "ClusterConnectError",
    "ClusterError",
    "ClusterSpec",
    "NoTrainingSlots",
    "TLSFiles",
    "Target",
    "TrainingWorkerPlugin",
    "check_scheduler_file_path",
    "connect",
    "cpu_cores",
    "cuda_visible_devices",
    "dashboard_url",
    "dask_cuda_problem",
    "describe_workers",
    "detect_gpus",
    "make_tls_files",
    "open_client",
    "prepare_task_thread",
    "prepare_workers",
    "read_scheduler_file",
    "remove_tls_files",
    "require_slots",
    "start_local_cluster",
    "torch_threads",
    "visible_gpus",
    "write_scheduler_file",
]
