"""``linreg``: the "train on GPU" chapter's linear regression, recovering y = 2 x1 - 3 x2 + 10 + noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..params import Param
from .base import Batch, Data, Workload, split_indices, take

if TYPE_CHECKING:
    import torch
    from torch import nn

TRUE_WEIGHTS = (2.0, -3.0)
TRUE_BIAS = 10.0


class LinReg(Workload):
    name = "linreg"
    summary = "linear regression on 1,000,000 samples of y = 2*x1 - 3*x2 + 10 + N(0, 2)"
    default_epochs = 10
    metrics = ("val_loss",)
    params = (
        Param("lr", float, 0.1, "Adam learning rate", low=1e-6, high=10.0),
        Param("gamma", float, 0.7, "learning-rate decay each epoch", low=0.01, high=1.0),
        Param("batch_size", int, 8192, "samples per step", low=1, high=1 << 24),
        Param("samples", int, 1_000_000, "samples generated", low=100, high=100_000_000),
        Param("noise", float, 2.0, "standard deviation of the noise on y", low=0.0, high=100.0),
    )

    def load_data(self, params: Mapping[str, Any], seed: int) -> Data:
        import torch

        generator = torch.Generator().manual_seed(seed)
        n = params["samples"]
        x = 10 * torch.rand(n, 2, generator=generator) - 5.0
        y = x @ torch.tensor(TRUE_WEIGHTS) + TRUE_BIAS + params["noise"] * torch.randn(n, generator=generator)
        val_idx, test_idx, train_idx = split_indices(n, (0.05, 0.05), seed)
        full = (x, y.unsqueeze(1))
        return Data(train=take(full, train_idx), val=take(full, val_idx), test=take(full, test_idx))

    def build_model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> nn.Module:
        from .nets import LinearRegression

        return LinearRegression()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        x, y = batch
        return F.mse_loss(model(x), y)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        x, y = batch
        return {"loss": F.mse_loss(model(x), y, reduction="sum"), "count": torch.tensor(len(y), device=y.device)}

    def make_scheduler(self, optimizer: torch.optim.Optimizer, params: Mapping[str, Any]):
        import torch

        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=params["gamma"])

    def evaluate(self, model: nn.Module, data: Data) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        from .nets import LinearRegression

        assert data.test is not None and isinstance(model, LinearRegression)
        x, y = data.test
        with torch.no_grad():
            mse = float(F.mse_loss(model(x), y))
        return {
            "weights": [round(v, 4) for v in model.w.view(-1).tolist()],
            "bias": round(model.b.item(), 4),
            "true_weights": list(TRUE_WEIGHTS),
            "true_bias": TRUE_BIAS,
            "test_mse": mse,
        }
