"""Getting workers: the embedded local cluster (GPU or CPU), connecting to a running one, TLS, worker setup
(including how many torch threads each worker uses: ``cluster.cpus``).

Names are imported on first use (PEP 562): ``from cluster import Target`` costs a dataclass, not Dask, so
the CLI parses its options and answers ``--help`` without importing ``distributed``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_WHERE = {
    "Target": "target", "check_address": "target",
    "check_client": "target", "cluster_workers": "client", "connect": "client", "dashboard_url": "client",
    "describe_workers": "client",
    "open_client": "client", "prepare_workers": "client", "require_slots": "client",
    "SLOT_WORKERS_VARIABLE": "cpus", "TORCH_THREADS_VARIABLE": "cpus", "cpu_cores": "cpus",
    "torch_threads": "cpus",
    "cuda_visible_devices": "devices", "dask_cuda_problem": "devices", "detect_gpus": "devices",
    "visible_gpus": "devices",
    "ClusterConnectError": "errors", "ClusterError": "errors", "NoTrainingSlots": "errors",
    "ClusterSpec": "spec", "start_local_cluster": "local", "start_early": "worker_host",
    "TRAINING_SLOT": "plugin", "TrainingWorkerPlugin": "plugin", "prepare_task_thread": "plugin",
    "TLSFiles": "security", "check_scheduler_file_path": "security", "make_tls_files": "security",
    "read_scheduler_file": "security", "remove_tls_files": "security", "write_scheduler_file": "security",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .client import (  # noqa: F401
        cluster_workers,
        connect,
        dashboard_url,
        describe_workers,
        open_client,
        prepare_workers,
        require_slots,
    )
    from .cpus import SLOT_WORKERS_VARIABLE, TORCH_THREADS_VARIABLE, cpu_cores, torch_threads  # noqa: F401
    from .devices import cuda_visible_devices, dask_cuda_problem, detect_gpus, visible_gpus  # noqa: F401
    from .errors import ClusterConnectError, ClusterError, NoTrainingSlots  # noqa: F401
    from .local import start_local_cluster  # noqa: F401
    from .plugin import TRAINING_SLOT, TrainingWorkerPlugin, prepare_task_thread  # noqa: F401
    from .security import (  # noqa: F401
        TLSFiles,
        check_scheduler_file_path,
        make_tls_files,
        read_scheduler_file,
        remove_tls_files,
        write_scheduler_file,
    )
    from .spec import ClusterSpec  # noqa: F401
    from .target import Target, check_address  # noqa: F401
    from .worker_host import start_early  # noqa: F401
