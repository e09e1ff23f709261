"""What a workload is: hyperparameters, data, a model, a loss, metrics, and what a trained model is for."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, DataError
from ..limits import MAX_TEXT_DATA, short
from ..params import Param, check_data_size

if TYPE_CHECKING:
    import torch
    from torch import nn

# A workload's declaration (name, params, metric) is read where nothing trains (a client checking a sweep
# file): torch is imported by the methods that train, so that check never pays its import (a second or more).
Batch = tuple["torch.Tensor", ...]


@dataclass
class Data:
    """Tensors of a workload, split, with everything the model needs to be rebuilt.

    ``train``, ``val`` and ``test`` are tuples of tensors sharing their first dimension (one row a sample),
    so the loop batches by indexing every tensor with the same slice of a permutation.
    ``meta`` is JSON (vocabulary, input size) and goes into the model file; ``artifacts`` is JSON that a
    trained model's use needs (e.g. the names seen in training, so generated names can drop them).
    """

    train: Batch
    val: Batch
    test: Batch | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return int(self.train[0].shape[0])

    def to(self, device: torch.device) -> Data:
        """A copy with every tensor on ``device``."""

        def move(split: Batch | None) -> Batch | None:
            return None if split is None else tuple(t.to(device) for t in split)

        return Data(move(self.train), move(self.val), move(self.test), self.meta, self.artifacts)  # type: ignore[arg-type]


class Workload(ABC):
    """A built-in or user workload. Subclasses are stateless: everything comes in as arguments.

    The training loop calls, in order: :meth:`load_data`, :meth:`build_model`, :meth:`make_optimizer`,
    :meth:`make_scheduler`, then :meth:`loss` per batch and :meth:`eval_sums` per validation chunk.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]
    default_epochs: ClassVar[int]
    #: Validation metrics each epoch reports (besides ``train_loss``): ``val_`` + each key of eval_sums.
    metrics: ClassVar[tuple[str, ...]] = ("val_loss", "val_accuracy")
    #: The metric sweeps optimise by default, and its direction.
    metric: ClassVar[str] = "val_loss"
    mode: ClassVar[str] = "min"
    #: What ``dask-train`` can do with a trained model: "generate" or "evaluate".
    use: ClassVar[str] = "evaluate"

    @abstractmethod
    def load_data(self, params: Mapping[str, Any], seed: int) -> Data:
        """Build the data on the CPU, deterministic under ``seed``."""

    @abstractmethod
    def build_model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> nn.Module:
        """Build the model from hyperparameters and the data's ``meta`` (both stored in model files)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one batch."""

    @abstractmethod
    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Sums over a validation chunk: ``count`` plus one entry per metric (``loss``, ``accuracy``).

        The loop divides each by the total ``count`` and reports it as ``val_<name>``; sums (not means)
        let chunks and DDP ranks be combined exactly.
        """

    def make_optimizer(self, model: nn.Module, params: Mapping[str, Any]) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(model.parameters(), lr=params["lr"])

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, params: Mapping[str, Any]
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        return None

    def check_meta(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Refuse (ConfigError) a model file's ``meta`` this workload's data could not have made, before a
        model is built from it or put to use: what the weights' shapes do not show (a names model's context
        window). None by default."""
        return None

    def generate(self, model: nn.Module, meta: Mapping[str, Any], artifacts: Mapping[str, Any],
                 count: int, *, seed: int | None = None, prompt: str = "") -> list[str]:
        """Samples from a trained generative model (``names``, ``charlm``)."""
        raise NotImplementedError(f"Workload '{self.name}' does not generate; use `dask-train evaluate`.")

    def evaluate(self, model: nn.Module, data: Data) -> dict[str, Any]:
        """A report on held-out data (accuracy, recovered weights), for ``dask-train evaluate``."""
        raise NotImplementedError(f"Workload '{self.name}' does not evaluate; use `dask-train generate`.")

    def defines_use(self) -> bool:
        """Whether this workload defines its :attr:`use` (``generate`` or ``evaluate``): one of your own may
        define neither, and the CLI then shows a trained model's metrics only."""
        return getattr(type(self), self.use, None) is not getattr(Workload, self.use, None)


def read_text_data(path: Path, what: str) -> str:
    """A user's text data file (``what``: "Names file"...), read whole once its size is checked: at most
    :data:`~training.limits.MAX_TEXT_DATA` bytes, on the worker that reads it too (it may see another file
    than the client checked), and never more than that should it grow meanwhile."""
    named = f"{what} {short(str(path))}"
    try:
        check_data_size(str(path), path.stat().st_size, MAX_TEXT_DATA, named)
        with path.open("rb") as file:
            data = file.read(MAX_TEXT_DATA + 1)
        check_data_size(str(path), len(data), MAX_TEXT_DATA, named)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")  # as read_text did


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Shuffle ``range(n)`` under ``seed`` and cut it into the given fractions, the rest last.

    Examples
    --------
    >>> [len(part) for part in split_indices(10, (0.2,), seed=0)]
    [2, 8]
    """
    import torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for fraction in fractions:
        size = round(n * fraction)
        parts.append(perm[start : start + size])
        start += size
    parts.append(perm[start:])
    return parts


def take(tensors: Batch, index: torch.Tensor) -> Batch:
    """Rows ``index`` of every tensor."""
    return tuple(t[index] for t in tensors)
