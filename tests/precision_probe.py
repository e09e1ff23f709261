"""xor that reports the precision it really ran under, importable by name (``tests.precision_probe:ProbedXor``):
its validation adds ``val_bf16`` and ``val_fp16``, the share of logits computed in that dtype, so a test sees
from a trial's or a DDP rank's history which precision reached the worker."""

from __future__ import annotations

from typing import ClassVar

import torch

from training.workloads.xor import Xor


class ProbedXor(Xor):
    """xor plus two metrics: the share of validation logits computed in bfloat16 and in float16."""

    name = "probed-xor"
    metrics: ClassVar[tuple[str, ...]] = (*Xor.metrics, "val_bf16", "val_fp16")

    def eval_sums(self, model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
        sums = super().eval_sums(model, batch)
        dtype = model(batch[0]).dtype
        return {**sums, "bf16": sums["count"] * float(dtype == torch.bfloat16),
                "fp16": sums["count"] * float(dtype == torch.float16)}
