"""The trial runner: one sweep trial as one Dask task on one training slot.

It trains with the Foundation loop on the worker's device, emits an event when it starts and after every
epoch, and returns a :class:`~training.protocol.TrialOutcome`: state, history and the CPU state dict of
its best epoch by the sweep's metric. A failure is an outcome too (state, error type and message,
traceback, worker), never a crash of the sweep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import Callback
from .errors import ConfigError, TrainingDiverged
from .events import emit, held_events, plain
from .limits import MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS, clip, clip_middle
from .protocol import EpochEnded, TrialDone, TrialOutcome, TrialStarted, TrialState
from .run_dirs import replace_file
from .workloads import get_workload

if TYPE_CHECKING:
    from .loop import Trainer

# The training loop (torch) is imported where a trial trains: the sweep's client imports this module to
# submit trials, and never trains. Workers import it while they start (the sweep's preload).

log = logging.getLogger(__name__)

#: The file in a run directory that holds the running coordinator's run token.
RUN_MARK = ".coordinator"

#: How long a trial on a worker that cannot see the run directory waits for its start state.
START_STATE_WAIT = 30.0

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
    #: The run directory's mark file (:data:`RUN_MARK`): the worker sees the coordinator's run directory
    #: (the same machine, a shared filesystem) when this file holds ``run``, not merely a folder of the same
    #: path on its own disk. None: the directory's existence decides.
    run_mark: str | None = None
    #: ``fp32``, ``bf16`` or ``fp16`` (see :mod:`training.precision`).
    precision: str = "fp32"


class _EpochEvents(Callback):
    """Sends each epoch's record to the client as it is made, and keeps the history for failures.

    ``address``: the worker's, where the coordinator fetches from. ``relayed``: the worker-local checkpoint
    file, where this worker cannot write the run directory; the events of epochs that saved it say so (not
    the attempt's last: its outcome ends the trial or stretch).
    """

    def __init__(self, spec: TrialSpec, address: str, key: str, relayed: Path | None = None) -> None:
        self.spec, self.address, self.key, self.relayed = spec, address, key, relayed
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        epoch, last = int(record["epoch"]), self.spec.until_epoch or self.spec.epochs
        if epoch >= last:
            return  # the attempt's outcome carries its last epoch, a moment later: one message, not two
        saved = self.relayed is not None and epoch % self.spec.checkpoint_every == 0
        emit(EpochEnded(job=self.spec.job, run=self.spec.run, time=time.time(), trial=self.spec.number,
                        worker=self.address, record=record, checkpoint=str(self.relayed) if saved else "",
                        key=self.key))


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Train one trial here (a Dask worker, or this process) and report how it went: a failure is an
    outcome too (state, error, traceback), never an exception."""
    from cluster.plugin import prepare_task_thread

    from .loop import build_trainer, isolated_rng, pick_device

    worker, address, key = _worker_address(), _own_address(), _task_key()
    device = str(prepare_task_thread().get("name", ""))
    started = time.time()
    checkpoint, relayed = _checkpoint_place(spec)
    emit(TrialStarted(job=spec.job, run=spec.run, time=started, trial=spec.number, worker=address,
                      device=device, worker_name=worker, checkpoint=str(checkpoint) if relayed else "", key=key))
    events = _EpochEvents(spec, address, key, checkpoint if relayed else None)
    trainer: Trainer | None = None
    ended: dict[str, Any]
    resumed_from = 0
    try:
        work = get_workload(spec.workload)
        dev = pick_device()
        with isolated_rng(dev):
            trainer = build_trainer(work, spec.params, spec.seed, dev, metric=spec.metric, mode=spec.mode,
                                    precision=spec.precision)
            state, source = _start_state(spec, _sent_start(checkpoint) if relayed and checkpoint else None)
            if state is not None:
                trainer.load_state(state, source)
                resumed_from = trainer.epoch
            # No resume point after the attempt's last epoch: its outcome ends the trial (or, with ASHA,
            # carries the state the next stretch starts from).
            trainer.train(spec.until_epoch or spec.epochs, events, checkpoint, spec.checkpoint_every,
                          resume_point_only=True, save_last=False)
            ended = _trained(trainer, spec, None if relayed else checkpoint)
    except TrainingDiverged as exc:
        ended = _error(TrialState.DIVERGED, exc)
    except Exception as exc:  # recorded with its traceback: one bad trial must not end the sweep
        ended = _error(TrialState.FAILED, exc)
    except (SystemExit, KeyboardInterrupt) as exc:  # raised by the workload's code (sys.exit, a stray raise)
        if threading.current_thread() is threading.main_thread():
            raise  # this process's own Ctrl-C or exit (a trial run outside a worker)
        # In a worker's task thread it killed the worker, and Dask ran it again on the next one, four times,
        # each recorded as a lost worker: a failure of the trial, with what it raised.
        ended = _error(TrialState.FAILED, exc)
    finally:
        if relayed and checkpoint is not None:  # the coordinator has what it needs from this attempt
            checkpoint.unlink(missing_ok=True)
    finished = time.time()
    history = trainer.history if trainer is not None else events.history
    outcome = TrialOutcome(number=spec.number, worker=worker, device=device, started=started,
                           finished=finished, seconds=round(finished - started, 4), history=list(history),
                           resumed_from=resumed_from, **ended)
    if key:
        _send_done(spec, outcome, key, address)
    return outcome


def run_trials(specs: list[TrialSpec], each: bool = False) -> list[TrialOutcome]:
    """Several trials as one task, one after another on this worker's slot (the coordinator groups short
    trials so Dask's cost of a task is paid once for several): each sends its own start, epoch and outcome
    events as :func:`run_trial` does, so the coordinator records each as it ends, not when the task does.

    Their events are held back and leave together every tenth of a second
    (:func:`~training.events.held_events`): a few messages a second, not two or more a trial. ``each``:
    a trial's leave as it ends instead, handed to the worker's event loop before the next trial starts,
    so that should one kill the worker, the coordinator knows which (it asks for this when it runs again
    the trials of a task that failed)."""
    if len(specs) == 1:
        return [run_trial(specs[0])]
    outcomes = []
    with held_events() as send:
        for spec in specs:
            outcomes.append(run_trial(spec))
            if each:
                send()
    return outcomes


def _send_done(spec: TrialSpec, outcome: TrialOutcome, key: str, address: str) -> None:
    """Send the outcome as an event too, where it is small and travels as it is (no tensors: the model
    directory is written, or the trial failed; no NaN or tuple that msgpack would change): see
    :class:`TrialDone`. A failed trial's too: the next trial of its task starts before its task ends."""
    if outcome.state_dict is not None or outcome.checkpoint is not None:
        return
    data = outcome.to_dict()
    message = plain(data)
    if message != data:
        return
    emit(TrialDone(job=spec.job, run=spec.run, time=time.time(), trial=spec.number, worker=address, key=key,
                   outcome=message))


def _trained(trainer: Trainer, spec: TrialSpec, checkpoint: Path | None) -> dict[str, Any]:
    """A completed trial's part of the outcome: its best epoch's model (and its state for a next stretch).

    Where this worker sees the run directory (``checkpoint`` is the trial's resume checkpoint there), it
    writes the model directory beside it and sends only its path; otherwise the weights travel in the
    outcome and the coordinator writes them."""
    from .model_file import write_model_dir

    meta, artifacts = dict(trainer.data.meta), dict(trainer.data.artifacts)
    ended = {"state": TrialState.COMPLETED, "best_epoch": trainer.best.epoch, "meta": meta, "artifacts": artifacts,
             "checkpoint": _to_cpu(trainer.state()) if spec.until_epoch is not None else None}
    weights = trainer.best_weights()
    if checkpoint is not None:
        folder = checkpoint.parent  # RUN_DIR/trials/NNNN
        try:
            write_model_dir(folder, weights, workload=spec.workload, params=spec.params, meta=meta,
                            artifacts=artifacts, history=trainer.history, seed=spec.seed,
                            extra={"sweep": spec.job, "trial": spec.number}, best_epoch=trainer.best.epoch)
            return {**ended, "model_dir": f"{folder.parent.name}/{folder.name}"}
        except OSError as exc:  # e.g. a full disk: the coordinator tries, and says what to do if it fails too
            log.warning("Could not write trial %s's model directory %s (%s); sending the weights instead",
                        spec.number, folder, exc.strerror or exc)
    return {**ended, "state_dict": weights}


def _start_state(spec: TrialSpec, sent: tuple[dict[str, Any], str] | None) -> tuple[dict[str, Any] | None, str]:
    """Where this attempt starts: the newest of the state the coordinator put in the spec (ASHA's last
    stretch), the trial's resume checkpoint in the run directory where this worker sees it, and the one the
    coordinator ``sent`` where it does not (a retry after a lost worker, a rerun after a killed client)."""
    candidates = [(spec.start_state, f"trial {spec.number}'s last stretch")]
    path = Path(spec.checkpoint) if spec.checkpoint else None
    if path is not None and path.is_file():
        candidates.append((_read_or_none(path, spec.number), str(path)))
    if sent is not None:
        candidates.append(sent)
    state, source = None, ""
    for candidate, where in candidates:
        if candidate is not None and (state is None or int(candidate["epoch"]) > int(state["epoch"])):
            state, source = candidate, where
    return state, source


def _read_or_none(path: Path, number: int) -> dict[str, Any] | None:
    from .loop import read_checkpoint

    try:
        return read_checkpoint(path)
    except ConfigError as exc:  # damaged (e.g. a disk that filled up): start from what was sent
        log.warning("Ignoring trial %s's checkpoint: %s", number, exc)
        return None


def _checkpoint_place(spec: TrialSpec) -> tuple[Path | None, bool]:
    """Where this attempt saves its resume checkpoint, and whether the coordinator relays it: the run
    directory's path where this worker sees it (the same machine, a shared filesystem); else a file in the
    worker's own directory that the coordinator fetches after each epoch (None: not on a worker)."""
    if spec.checkpoint is None:
        return None, False
    path = Path(spec.checkpoint)
    if _sees_run_dir(spec, path.parent.parent.parent):  # RUN_DIR/trials/NNNN/checkpoint.pt
        return path, False
    from distributed import get_worker

    try:
        local = Path(get_worker().local_directory)
    except ValueError:
        return None, False
    return local / "dask-train" / f"{spec.job}-{spec.run}-{spec.number:04d}.pt", True


def _sees_run_dir(spec: TrialSpec, run_dir: Path) -> bool:
    """Whether this process sees the coordinator's own run directory (what it writes there is the
    coordinator's to read)."""
    if spec.run_mark is None:
        return run_dir.is_dir()
    try:
        return Path(spec.run_mark).read_text(encoding="utf-8").strip() == spec.run
    except (OSError, UnicodeDecodeError):
        return False


def mark_run_dir(run_dir: Path, run: str, to_run: Iterable[int] = ()) -> Path:
    """Write ``run_dir``'s mark file with the run token ``run`` (replacing an earlier run's); its path. Before
    any trial runs, the folder of a trial in ``to_run`` that is a link (put there by hand) is removed, its target
    untouched: what the trial writes (checkpoints, model files) stays in the run directory instead of going
    through it (a rerun sent its model files into the folder the link named). The folders of finished trials, and
    ``trials/`` itself, may be links (moved to a bigger disk): left as they are."""
    trials = run_dir / "trials"
    if trials.is_dir():  # a fresh sweep has none: nothing looked at per trial
        numbers = {f"{number:04d}" for number in to_run}
        for entry in os.scandir(trials):
            if entry.name in numbers and entry.is_symlink():
                log.warning("Removing the link %s (to %s): its trial runs again and writes its folder in the run "
                            "directory", entry.path, os.readlink(entry.path))
                os.unlink(entry.path)
    mark = run_dir / RUN_MARK
    replace_file(mark, run.encode("utf-8"))
    return mark


def _sent_start(checkpoint: Path) -> tuple[dict[str, Any], str] | None:
    """The start state the coordinator sends to a worker that cannot see the run directory: it answers
    this attempt's start event with ``<checkpoint>.start`` (the trial's checkpoint, or empty for none).
    Without an answer in time the trial starts from what its spec holds."""
    from .loop import read_checkpoint

    answer = checkpoint.with_name(checkpoint.name + ".start")
    deadline = time.monotonic() + START_STATE_WAIT
    while not answer.exists():
        if time.monotonic() > deadline:
            log.warning("No start state from the coordinator within %.0fs for %s", START_STATE_WAIT, checkpoint)
            return None
        time.sleep(0.02)
    try:
        if answer.stat().st_size == 0:
            return None
        return read_checkpoint(answer), "its checkpoint, sent by the coordinator"
    finally:
        answer.unlink(missing_ok=True)


def keep_start_state(checkpoint: str, data: bytes) -> None:
    """Run on a worker by the coordinator (``client.run``): the answer :func:`_sent_start` waits for."""
    path = Path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path.with_name(path.name + ".start"), data)


def read_kept_checkpoint(checkpoint: str) -> bytes:
    """Run on a worker by the coordinator (``client.run``): the bytes of a checkpoint this worker kept;
    empty when it is gone (its trial ended meanwhile and removed it: its outcome carries the rest)."""
    try:
        return Path(checkpoint).read_bytes()
    except FileNotFoundError:
        return b""


def _error(state: TrialState, exc: BaseException) -> dict[str, Any]:
    return {"state": state, "error_type": clip(type(exc).__name__, 200),
            "error": clip_middle(str(exc), MAX_ERROR_CHARS),
            "traceback": clip_middle(traceback.format_exc(), MAX_TRACEBACK_CHARS)}


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


def _task_key() -> str:
    """The key of the Dask task running this trial ("" outside one)."""
    from distributed import get_worker

    try:
        return str(get_worker().get_current_task())
    except (ValueError, KeyError):  # not on a worker, or not in one of its task threads
        return ""


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
