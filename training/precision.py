"""Numeric precision of training: ``fp32``, ``bf16`` or ``fp16`` mixed precision, and TF32 matmuls on GPUs.

``bf16`` and ``fp16`` run the forward pass and the loss under ``torch.autocast`` for the trainer's device
type (weights, optimizer state and checkpoints stay fp32). ``fp16`` scales the loss with a ``GradScaler``
(its exponent range is too small for unscaled gradients); bf16 has fp32's range and needs none. ``fp16``
is refused on the CPU: torch's CPU kernels for it are few and slow, so it would train slower than fp32;
``bf16`` is the CPU's mixed precision.

TF32: on GPUs with TF32 tensor cores (compute capability 8.0 and up) fp32 matmuls use TF32 while a trainer
trains, as PyTorch recommends there (``torch.set_float32_matmul_precision("high")``); the setting before
is put back afterwards. ``DASK_TRAIN_TF32=0`` in a worker's environment keeps full fp32 matmuls.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .limits import PRECISIONS, clip, short

if TYPE_CHECKING:
    import torch
    from distributed import Client

# torch is imported where a trainer uses it: a client checking a sweep file (``check_precision``) never
# imports it, which saves seconds before a CLI sweep's first trial.
#: In a worker's environment, ``0`` keeps full fp32 matmuls on GPUs that would use TF32.
TF32_VARIABLE = "DASK_TRAIN_TF32"


def check_precision(value: Any) -> str:
    """``value`` if it names a precision, else a ConfigError naming it.

    Examples
    --------
    >>> check_precision("bf16")
    'bf16'
    >>> check_precision("fp8")
    Traceback (most recent call last):
    ...
    training.errors.ConfigError: precision='fp8' is not known: use fp32, bf16 or fp16.
    """
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ConfigError(f"precision={short(value)} is not known: use {', '.join(PRECISIONS[:-1])} or "
                          f"{PRECISIONS[-1]}.")
    return value


def check_device_supports(precision: str, device_kind: str, who: str = "this process trains") -> None:
    """Refuse ``fp16`` where training runs on the CPU (``device_kind``: ``cpu`` or ``cuda``).

    Examples
    --------
    >>> check_device_supports("bf16", "cpu")
    >>> check_device_supports("fp16", "cpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    training.errors.ConfigError: precision='fp16' needs a CUDA GPU but this process trains on the CPU; use ...
    """
    if precision == "fp16" and device_kind != "cuda":
        raise ConfigError(f"precision='fp16' needs a CUDA GPU but {who} on the CPU; use --precision bf16 "
                          "(precision='bf16') there.")


def check_workers_support(client: Client, workers: Sequence[str], precision: str) -> None:
    """Before a sweep submits anything: with ``fp16`` every slot worker must train on a GPU (a trial may
    land on any of them), else one clear error instead of every trial failing on its worker."""
    if precision != "fp16":
        return
    kinds = client.run(_device_kind, workers=list(workers))
    on_cpu = sorted(w for w in workers if kinds.get(w) != "cuda")
    if on_cpu:
        check_device_supports(precision, "cpu", f"{len(on_cpu)} of the {len(workers)} slot workers "
                                                f"({clip(', '.join(on_cpu))}) train")


def _device_kind(dask_worker: Any) -> str:
    """``cuda`` or ``cpu``: what a worker's dask-train plugin found (run on the worker)."""
    plugin = dask_worker.plugins.get("dask-train")
    return str(plugin.describe().get("kind", "cpu")) if plugin is not None else "cpu"


class MixedPrecision:
    """Autocast and (fp16) loss scaling for one trainer: :meth:`autocast` around the forward pass and the
    loss, :meth:`step` for backward and the optimizer step; :meth:`state` / :meth:`load` go in checkpoints.

    Examples
    --------
    >>> import torch
    >>> amp = MixedPrecision("bf16", torch.device("cpu"))
    >>> with amp.autocast():
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        import torch

        self.precision = check_precision(precision)
        check_device_supports(self.precision, device.type)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context: autocast to bf16/fp16, nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; with fp16 through the scaler (a step whose gradients overflowed is
        skipped and the scale lowered, as ``GradScaler`` does)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state(self) -> dict[str, Any] | None:
        """The scaler's state for a checkpoint (None without one)."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load(self, state: dict[str, Any] | None) -> None:
        """Continue with a checkpoint's scaler state; one saved under another precision is not used."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def tf32_recommended(device: torch.device) -> bool:
    """Whether fp32 matmuls on ``device`` should use TF32: a GPU with TF32 tensor cores (compute capability
    8.0+), unless ``DASK_TRAIN_TF32=0`` in this process's environment.

    Examples
    --------
    >>> import torch
    >>> tf32_recommended(torch.device("cpu"))
    False
    """
    if device.type != "cuda" or os.environ.get(TF32_VARIABLE, "").strip() == "0":
        return False
    import torch

    return torch.cuda.get_device_capability(device)[0] >= 8


@contextlib.contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """TF32 matmuls while the block runs where :func:`tf32_recommended`; the setting before is restored, so
    a long-lived worker's next task starts as the process started."""
    if not tf32_recommended(device):
        yield
        return
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
