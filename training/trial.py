"""The trial runner: one sweep trial as one Dask task on one training slot.

It trains with the Foundation loop on the worker's device, emits an event when it starts and after every
epoch, and returns a :class:`~training.protocol.TrialOutcome`: state, history and the CPU state dict of
its best epoch by the sweep's metric. A failure is an outcome too (state, error type and message,
traceback, worker), never a crash of the sweep.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TrainingDiverged
from .events import emit
from .loop import Callback, Trainer, build_trainer, isolated_rng, pick_device, read_checkpoint
from .protocol import EpochEnded, TrialOutcome, TrialStarted, TrialState
from .workloads import get_workload

log = logging.getLogger(__name__)

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
    #: The trial's resume checkpoint in the run directory: saved every ``checkpoint_every`` epochs where this
    #: worker sees the run directory, and continued from by the trial's next attempt.
    checkpoint: str | None = None
    checkpoint_every: int = 1
    #: ``fp32``, ``bf16`` or ``fp16`` (see :mod:`training.precision`).
    precision: str = "fp32"


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
    emit(TrialStarted(job=spec.job, run=spec.run, time=started, trial=spec.number, worker=_own_address(),
                      device=device, worker_name=worker))
    events = _EpochEvents(spec, worker)
    trainer: Trainer | None = None
    ended: dict[str, Any]
    try:
        work = get_workload(spec.workload)
        dev = pick_device()
        with isolated_rng(dev):
            trainer = build_trainer(work, spec.params, spec.seed, dev, metric=spec.metric, mode=spec.mode,
                                    precision=spec.precision)
            state, source = _start_state(spec)
            if state is not None:
                trainer.load_state(state, source)
            trainer.train(spec.until_epoch or spec.epochs, events, _writable(spec.checkpoint),
                          spec.checkpoint_every)
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


def _start_state(spec: TrialSpec) -> tuple[dict[str, Any] | None, str]:
    """Where this attempt starts: the trial's own resume checkpoint if this worker sees a newer one than
    the state the coordinator sent (a retry after a lost worker, a rerun after a killed client)."""
    state, source = spec.start_state, f"trial {spec.number}'s last stretch"
    path = Path(spec.checkpoint) if spec.checkpoint else None
    if path is not None and path.is_file():
        try:
            saved = read_checkpoint(path)
        except ConfigError as exc:  # damaged (e.g. a disk that filled up): start from what was sent
            log.warning("Ignoring trial %s's checkpoint: %s", spec.number, exc)
        else:
            if state is None or int(saved["epoch"]) > int(state["epoch"]):
                state, source = saved, str(path)
    return state, source


def _writable(checkpoint: str | None) -> Path | None:
    """The checkpoint path, where this worker sees the run directory (the same machine or a shared
    filesystem); None elsewhere: the trial then runs without a mid-trial resume point."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    run_dir = path.parent.parent.parent  # RUN_DIR/trials/NNNN/checkpoint.pt
    if not run_dir.is_dir():
        log.info("This worker does not see the run directory %s: trial checkpoints are not kept", run_dir)
        return None
    return path


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


def _own_address() -> str:
    """This worker's address ("" outside a worker)."""
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return ""


def _worker_address() -> str:
    """The worker's name (``cpu-0``) as people see it everywhere; its address where it has no name."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return "local"
    return worker.address if worker.name in (None, "") else str(worker.name)
