"""A workload that diverges on purpose, importable by name (``tests.integration.diverging:SGDLinReg``)."""

from __future__ import annotations

import torch

from training.workloads.linreg import LinReg


class SGDLinReg(LinReg):
    """linreg with plain SGD: at lr=1 on inputs in [-5, 5] every step overshoots, so the loss blows up."""

    name = "sgd-linreg"

    def make_optimizer(self, model, params):
        return torch.optim.SGD(model.parameters(), lr=params["lr"])
