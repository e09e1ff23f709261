"""dask-train: PyTorch training on Dask: hyperparameter sweeps and DDP jobs, one worker per GPU."""

from __future__ import annotations

from .dashboard import enable_page
from .ddp import DDPResult, train_ddp
from .errors import ConfigError, DaskTrainError, DataError, DDPJobFailed, ModelFileError, TrainingDiverged
from .loop import Callback, Shard, Trainer, pick_device, shard_batches, train
from .model_file import TrainedModel, load_model, save_model
from .params import Param
from .space import choice, grid, loguniform, randint, uniform
from .sweep import Sweep, SweepProgress, SweepResult
from .workloads import BUILTIN, Workload, get_workload

__all__ = [
    "BUILTIN",
    "Callback",
    "ConfigError",
    "DDPJobFailed",
    "DDPResult",
    "DaskTrainError",
    "DataError",
    "ModelFileError",
    "Param",
    "Shard",
    "Sweep",
    "SweepProgress",
    "SweepResult",
    "TrainedModel",
    "Trainer",
    "TrainingDiverged",
    "Workload",
    "choice",
    "enable_page",
    "get_workload",
    "grid",
    "load_model",
    "loguniform",
    "pick_device",
    "randint",
    "save_model",
    "shard_batches",
    "train",
    "train_ddp",
    "uniform",
]
