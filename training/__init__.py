"""dask-train: PyTorch training on Dask: hyperparameter sweeps and DDP jobs, one worker per GPU.

Names are imported on first use (PEP 562), so ``import training`` costs nothing and a worker running a
trial, or a scheduler serving the Training page, imports only the modules it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_WHERE = {
    "enable_page": "dashboard",
    "DDPResult": "ddp", "train_ddp": "ddp",
    "ConfigError": "errors", "DaskTrainError": "errors", "DataError": "errors", "DDPJobFailed": "errors",
    "ModelFileError": "errors", "TrainingDiverged": "errors",
    "Callback": "loop", "Shard": "loop", "Trainer": "loop", "pick_device": "loop", "shard_batches": "loop",
    "train": "loop",
    "TrainedModel": "model_file", "load_model": "model_file", "save_model": "model_file",
    "Param": "params",
    "JobState": "protocol", "TrialRecord": "protocol", "TrialState": "protocol",
    "choice": "space", "grid": "space", "loguniform": "space", "randint": "space", "uniform": "space",
    "Sweep": "sweep", "SweepProgress": "sweep", "SweepResult": "sweep",
    "BUILTIN": "workloads", "Workload": "workloads", "get_workload": "workloads",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .dashboard import enable_page  # noqa: F401
    from .ddp import DDPResult, train_ddp  # noqa: F401
    from .errors import ConfigError, DaskTrainError, DataError, DDPJobFailed, ModelFileError, TrainingDiverged  # noqa: F401
    from .loop import Callback, Shard, Trainer, pick_device, shard_batches, train  # noqa: F401
    from .model_file import TrainedModel, load_model, save_model  # noqa: F401
    from .params import Param  # noqa: F401
    from .protocol import JobState, TrialRecord, TrialState  # noqa: F401
    from .space import choice, grid, loguniform, randint, uniform  # noqa: F401
    from .sweep import Sweep, SweepProgress, SweepResult  # noqa: F401
    from .workloads import BUILTIN, Workload, get_workload  # noqa: F401
