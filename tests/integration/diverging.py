"""A workload that diverges on purpose, importable by name (``tests.integration.diverging:SGDLinReg``)."""

from __future__ import annotations

import torch

from training.workloads.linreg import LinReg


class SGDLinReg(LinReg):
    """linreg with plain SGD: at lr=1 on inputs in [-5, 5] every step overshoots, so the loss blows up."""

    name = "sgd-linreg"

    def make_optimizer(self, model, params):
        return torch.optim.SGD(model.parameters(), lr=params["lr"])


class FailOnRankOne(LinReg):
    """linreg whose rank 1 raises in its third step: a rank failing mid-epoch while rank 0 trains on."""

    name = "fail-on-rank-one"

    def loss(self, model, batch):
        import torch.distributed as dist

        self._steps = getattr(self, "_steps", 0) + 1
        if dist.is_initialized() and dist.get_rank() == 1 and self._steps == 3:
            raise ValueError("rank one broke on purpose")
        return super().loss(model, batch)


class HugeError(LinReg):
    """linreg whose data fails to load with a 5 MB message (a value printed whole into an exception)."""

    name = "huge-error"

    def load_data(self, params, seed):
        raise ValueError("bad rows: " + "x" * 5_000_000 + " (end)")


class Exits(LinReg):
    """linreg whose first step calls sys.exit (a script's habit, inside a workload)."""

    name = "exits"

    def loss(self, model, batch):
        import sys

        sys.exit(3)
