"""A workload of fixed CPU work (``steps`` 256x256 matmuls on one thread), for measuring sweep overhead, and
the trial itself as a bare Dask map or a process pool runs it (:func:`train_busy`)."""

from __future__ import annotations

import torch
from torch import nn

from training.params import Param
from training.workloads.base import Data, Workload


def busy_work(steps: int) -> float:
    """The same fixed torch work the benchmark times serially and through each runner."""
    torch.set_num_threads(1)
    a = torch.ones(256, 256) / 256
    b = a.clone()
    for _ in range(steps):
        b = a @ b
    return float(b[0, 0])


class Busy(Workload):
    name = "busy"
    summary = "fixed CPU work per trial (benchmarks only)"
    default_epochs = 1
    metrics = ("val_loss",)
    params = (
        Param("lr", float, 0.1, low=0.0, high=1.0),
        Param("batch_size", int, 1, low=1),
        Param("steps", int, 100, low=1),
        Param("trial", int, 0, low=0),
    )

    def load_data(self, params, seed):
        # One sample whose value is the step count: the loss reads it, so the workload keeps no state.
        return Data(train=(torch.full((1, 1), float(params["steps"])),), val=(torch.zeros(1, 1),))

    def build_model(self, params, meta):
        return nn.Linear(1, 1)

    def loss(self, model, batch):
        busy_work(int(batch[0][0, 0]))
        return model(batch[0]).sum() * 0

    def eval_sums(self, model, batch):
        return {"loss": model(batch[0]).sum() * 0, "count": torch.tensor(1)}


def train_busy(steps: int) -> float:
    """One trial as bare Dask (``client.map``) or a process pool runs it: the Busy workload trained for one
    epoch by the same Trainer a sweep's trial uses (its loss is ``busy_work(steps)``, then a step of its
    one-weight model and the validation pass), returning the validation loss. What a sweep adds over this
    (events, the run store, a model directory a trial, the live view) is the sweep's overhead."""
    from training.loop import train

    return float(train(Busy(), {"steps": steps}, epochs=1).history[-1]["val_loss"])
