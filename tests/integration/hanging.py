"""Workloads that get stuck on purpose, importable by name (``tests.integration.hanging:HangingXor``)."""

from __future__ import annotations

import os
import threading

from training.params import Param
from training.workloads.xor import Xor


class HangingXor(Xor):
    """xor whose trial blocks forever (like a deadlocked data loader) once it has taken ``hang_after``
    optimizer steps; ``hang_after=0`` never blocks. ``hang_on_lr``: only the trial with this lr blocks."""

    name = "hanging-xor"
    params = (*Xor.params,
              Param("hang_after", int, 0, "steps before blocking forever (0: never)", low=0, high=10**9),
              Param("hang_on_lr", float, 0.0, "only the trial with this lr blocks (0: any)", low=0.0, high=100.0))

    def loss(self, model, batch):
        steps = getattr(self, "_steps", 0) + 1
        self._steps = steps
        hang = self._params["hang_after"]
        if hang and steps > hang and self._params["hang_on_lr"] in (0.0, self._params["lr"]):
            threading.Event().wait()  # forever: only a restart of the worker process ends this
        return super().loss(model, batch)

    def load_data(self, params, seed):
        self._params = dict(params)
        return super().load_data(params, seed)


class CrashingXor(Xor):
    """xor whose trial with lr ``crash_on_lr`` ends its worker process at its first step, as a segfault or
    the kernel's OOM killer would (0: never)."""

    name = "crashing-xor"
    params = (*Xor.params,
              Param("crash_on_lr", float, 0.0, "the trial with this lr kills its worker (0: none)", low=0.0,
                    high=100.0))

    def load_data(self, params, seed):
        if params["crash_on_lr"] and params["lr"] == params["crash_on_lr"]:
            os._exit(1)
        return super().load_data(params, seed)


class RaisingXor(Xor):
    """xor whose trial with lr ``fail_on_lr`` raises as it starts (a bug in the user's code; 0: none)."""

    name = "raising-xor"
    params = (*Xor.params,
              Param("fail_on_lr", float, 0.0, "the trial with this lr raises (0: none)", low=0.0, high=100.0))

    def load_data(self, params, seed):
        if params["fail_on_lr"] and params["lr"] == params["fail_on_lr"]:
            raise RuntimeError("broken on purpose")
        return super().load_data(params, seed)


class HangOnRankOne(Xor):
    """xor whose DDP rank 1 blocks forever in its third step (a thread stuck in user code): its peers wait in
    their collective until it times out, while rank 1's heartbeat thread goes on beating."""

    name = "hang-on-rank-one"

    def loss(self, model, batch):
        import torch.distributed as dist

        self._steps = getattr(self, "_steps", 0) + 1
        if dist.is_initialized() and dist.get_rank() == 1 and self._steps == 3:
            threading.Event().wait()  # forever: only a restart of the worker process ends this
        return super().loss(model, batch)
