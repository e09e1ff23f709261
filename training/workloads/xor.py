"""``xor``: the UvA tutorial's continuous-XOR classifier, a 2-4-1 tanh MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..params import Param
from .base import Batch, Data, Workload

if TYPE_CHECKING:
    import torch
    from torch import nn


class Xor(Workload):
    name = "xor"
    summary = "2-4-1 tanh MLP on continuous XOR with Gaussian noise (the UvA PyTorch tutorial)"
    default_epochs = 100
    metric = "val_accuracy"
    mode = "max"
    params = (
        Param("lr", float, 0.1, "SGD learning rate", low=1e-6, high=100.0),
        Param("batch_size", int, 128, "samples per step", low=1, high=1 << 20),
        Param("hidden", int, 4, "hidden units", low=1, high=1024),
        Param("noise", float, 0.1, "standard deviation of the noise on the inputs", low=0.0, high=1.0),
        Param("train_size", int, 2500, "training points", low=2, high=10_000_000),
    )

    def load_data(self, params: Mapping[str, Any], seed: int) -> Data:
        import torch

        generator = torch.Generator().manual_seed(seed)
        return Data(
            train=continuous_xor(params["train_size"], params["noise"], generator),
            val=continuous_xor(500, params["noise"], generator),
            test=continuous_xor(500, params["noise"], generator),
        )

    def build_model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> nn.Module:
        from torch import nn

        return nn.Sequential(nn.Linear(2, params["hidden"]), nn.Tanh(), nn.Linear(params["hidden"], 1))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        x, y = batch
        return F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        x, y = batch
        logits = model(x).squeeze(1)
        return {
            "loss": F.binary_cross_entropy_with_logits(logits, y, reduction="sum"),
            "accuracy": ((logits > 0).float() == y).sum(),
            "count": torch.tensor(len(y), device=y.device),
        }

    def make_optimizer(self, model: nn.Module, params: Mapping[str, Any]) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(model.parameters(), lr=params["lr"])

    def evaluate(self, model: nn.Module, data: Data) -> dict[str, Any]:
        import torch

        assert data.test is not None
        x, y = data.test
        model.eval()
        with torch.no_grad():
            predicted = (model(x).squeeze(1) > 0).float()
        return {"test_accuracy": float((predicted == y).float().mean()), "test_samples": len(y)}


def continuous_xor(size: int, noise: float, generator: torch.Generator) -> Batch:
    """Points near the corners of the unit square; label 1 where exactly one coordinate is 1."""
    import torch

    corners = torch.randint(0, 2, (size, 2), generator=generator).float()
    labels = (corners.sum(dim=1) == 1).float()
    return corners + noise * torch.randn(corners.shape, generator=generator), labels
