"""The trial runner: one sweep trial as one Dask task on one training slot.

It trains with the Foundation loop on the worker's device, emits an event when it starts and after every
epoch, and returns a :class:`~training.protocol.TrialOutcome`: state, history and the CPU state dict of
its best epoch by the sweep's metric. A failure is an outcome too (state, error type and message,
traceback, worker), never a crash of the sweep.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

from .errors import TrainingDiverged
from .events import emit
from .loop import Callback, Trainer, build_trainer, isolated_rng, pick_device
from .protocol import EpochEnded, TrialOutcome, TrialStarted, TrialState
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
    #: What "best epoch" means: the model returned is the one of the best epoch by this metric.
    metric: str | None = None
    mode: str | None = None
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
        emit(EpochEnded(job=self.spec.job, run=self.spec.run, time=time.time(), trial=self.spec.number,
                        worker=self.worker, record=record))


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Train one trial here (a Dask worker, or this process) and report how it went: a failure is an
    outcome too (state, error, traceback), never an exception."""
    from cluster.plugin import prepare_task_thread

    worker = _worker_address()
    device = str(prepare_task_thread().get("name", ""))
    started = time.time()
    emit(TrialStarted(job=spec.job, run=spec.run, time=started, trial=spec.number, worker=worker,
                      device=device))
    events = _EpochEvents(spec, worker)
    trainer: Trainer | None = None
    ended: dict[str, Any]
    try:
        work = get_workload(spec.workload)
        dev = pick_device()
        with isolated_rng(dev):
            trainer = build_trainer(work, spec.params, spec.seed, dev, metric=spec.metric, mode=spec.mode)
            if spec.start_state is not None:
                trainer.load_state(spec.start_state, f"trial {spec.number}'s last stretch")
            trainer.train(spec.until_epoch or spec.epochs, events)
            ended = _trained(trainer, keep_state=spec.until_epoch is not None)
    except TrainingDiverged as exc:
        ended = _error(TrialState.DIVERGED, exc)
    except Exception as exc:  # recorded with its traceback: one bad trial must not end the sweep
        ended = _error(TrialState.FAILED, exc)
    finished = time.time()
    history = trainer.history if trainer is not None else events.history
    return TrialOutcome(number=spec.number, worker=worker, device=device, started=started, finished=finished,
                        seconds=round(finished - started, 4), history=list(history), **ended)


def _trained(trainer: Trainer, keep_state: bool) -> dict[str, Any]:
    """A completed trial's part of the outcome: its best epoch's weights (and its state for a next stretch)."""
    return {"state": TrialState.COMPLETED, "state_dict": trainer.best_weights(), "best_epoch": trainer.best.epoch,
            "meta": dict(trainer.data.meta), "artifacts": dict(trainer.data.artifacts),
            "checkpoint": _to_cpu(trainer.state()) if keep_state else None}


def _error(state: TrialState, exc: Exception) -> dict[str, Any]:
    return {"state": state, "error_type": type(exc).__name__, "error": str(exc),
            "traceback": traceback.format_exc()}


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
    """The worker's name (``cpu-0``) as people see it everywhere; its address where it has no name."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return "local"
    return worker.address if worker.name in (None, "") else str(worker.name)
