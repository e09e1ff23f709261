"""The built-in workloads' own torch models (the char-LSTM is in :mod:`.charlstm`). A workload's module
imports them when it builds a model, so reading its declaration never imports torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError


class MLP(nn.Module):
    """input -> hidden -> 10, ReLU, log-softmax (the course's ``mlp.py``)."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))), dim=1)


class CNN(nn.Module):
    """conv32 -> conv64 -> maxpool -> dropout -> fc -> fc10 (the course's ``cnn.py``), sized to the input."""

    def __init__(self, height: int, width: int, hidden: int) -> None:
        super().__init__()
        if height < 6 or width < 6:
            raise DataError(f"The CNN needs images of at least 6x6 pixels, got {height}x{width}; use arch=mlp.")
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        # The course applies Dropout2d to flat features too; plain Dropout is what it means there.
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


class LinearRegression(nn.Module):
    """y = x w^T + b, initialised as the chapter does (w ~ N(0, 1), b = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(1, 2))
        self.b = nn.Parameter(torch.zeros(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t() + self.b
