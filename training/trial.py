"""The trial runner: one sweep trial as one Dask task on one training slot.

It trains with the Foundation loop on the worker's device, emits an event when it starts and after every
epoch, and returns a small result: state, history and the model's CPU state dict. A failure is a result
too (state, error type and message, traceback, worker), never a crash of the sweep.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from .errors import TrainingDiverged
from .events import emit
from .loop import Callback, build_trainer, isolated_rng, pick_device
from .workloads import get_workload


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial; built and validated on the client."""

    job: str
    run: str
    number: int
    workload: str
    params: dict[str, Any]
    epochs: int
    seed: int = 0
    #: Early stopping: run only up to this epoch, starting from ``start_state`` (a Trainer state), and
    #: return the state so the next stretch can continue from it.
    until_epoch: int | None = None
    start_state: dict[str, Any] | None = None


class _EpochEvents(Callback):
    """Sends each epoch's record to the client as it is made, and keeps the history for failures."""

    def __init__(self, spec: TrialSpec, worker: str) -> None:
        self.spec, self.worker = spec, worker
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        emit({"kind": "epoch", "job": self.spec.job, "run": self.spec.run, "trial": self.spec.number,
              "worker": self.worker, "record": record})


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Train one trial here (a Dask worker, or this process) and report how it went."""
    from cluster.plugin import prepare_task_thread

    worker = _worker_address()
    device = prepare_task_thread()
    started = time.time()
    emit({"kind": "start", "job": spec.job, "run": spec.run, "trial": spec.number, "worker": worker,
          "time": started, "device": device.get("name", "")})
    events = _EpochEvents(spec, worker)
    outcome: dict[str, Any] = {"number": spec.number, "worker": worker, "started": started,
                               "device": device.get("name", "")}
    trainer = None
    try:
        work = get_workload(spec.workload)
        dev = pick_device()
        with isolated_rng(dev):
            trainer = build_trainer(work, spec.params, spec.seed, dev)
            if spec.start_state is not None:
                trainer.load_state(spec.start_state, f"trial {spec.number}'s last rung")
            trainer.train(spec.until_epoch or spec.epochs, events)
            trained = trainer.result()
            if spec.until_epoch is not None:
                outcome["checkpoint"] = _to_cpu(trainer.state())
    except TrainingDiverged as exc:
        outcome.update(state="diverged", error_type="TrainingDiverged", error=str(exc),
                       traceback=traceback.format_exc())
    except Exception as exc:  # recorded with its traceback: one bad trial must not end the sweep
        outcome.update(state="failed", error_type=type(exc).__name__, error=str(exc),
                       traceback=traceback.format_exc())
    else:
        outcome.update(state="completed", state_dict=trained.model.state_dict(), meta=trained.meta,
                       artifacts=trained.artifacts)
    finished = time.time()
    history = trainer.history if trainer is not None else events.history
    outcome.update(history=history, finished=finished, seconds=round(finished - started, 4))
    return outcome


def _to_cpu(value: Any) -> Any:
    """A Trainer state with every tensor on the CPU, to travel back to the client."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return "local"
