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
from .loop import Callback, train


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
    try:
        trained = train(spec.workload, spec.params, epochs=spec.epochs, seed=spec.seed, callback=events)
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
    outcome.update(history=events.history, finished=finished, seconds=round(finished - started, 4))
    return outcome


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return "local"
