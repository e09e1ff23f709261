"""The sweep coordinator: one client run of a sweep, as Dask tasks on training slots.

It submits trials as tasks (``pure=False``, key ``trial-<sweep>-<n>``, one ``training_slot``; short
trials several to a task, key ``trial-<sweep>-<first>-<last>``), applies the trials' events (starts,
epochs, outcomes) to the run store and the progress hooks while they run, records each outcome with its
best epoch as it ends, writes the model directory of each trial that has a model, and announces it all
to the Training page. Rerunning the same sweep finishes only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client, Future, KilledWorker

from cluster import TRAINING_SLOT, ClusterError, cluster_workers, dashboard_url, require_slots

from .board import SHOWN_TRIALS
from .dashboard import enable_page
from .errors import DaskTrainError, Interrupted
from .events import Inbox, Publisher, publish
from .limits import printable
from .precision import check_workers_support
from .protocol import (
    EpochEnded,
    JobAnnounced,
    JobEnded,
    JobState,
    TrialDone,
    TrialEnded,
    TrialOutcome,
    TrialQueued,
    TrialRecord,
    TrialStarted,
    TrialState,
    best_epoch,
    best_trial,
)
from .slots import free_workers, second_interrupt_exits
from .sources import Source, make_source, read_rung_checkpoint, write_rung_checkpoint
from .store import RunStore
from .sweep_spec import NOT_FINGERPRINTED, SweepSpec, write_spec_file
from .trial import TrialSpec, keep_start_state, mark_run_dir, read_kept_checkpoint, run_trials

if TYPE_CHECKING:
    from .sweep import SweepProgress

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between checks of the futures and the event queue, when nothing wakes the loop sooner
_MIN_ROUND = 0.05  # at most one round of the loop this often: events coming faster are applied together
_MIN_TASK_ROUND = 0.005  # ... unless a task ended: its slot is free (tasks ending within this share a round)
_NO_WORKERS_GRACE = 60.0  # how long a sweep waits for a slot worker to come back before giving up
_WORKER_CHECK_EVERY = 5.0  # seconds between checks that slot workers are still there
_RESULT_TIMEOUT = 120.0  # fetching a finished trial's result (its weights) from its worker
_PUBLISH_TIMEOUT = 10.0  # at the end, for the Training page's announcements still on their way
_RELAY_TIMEOUT = 120.0  # moving one trial checkpoint between a worker and the run directory
_ASK_TIMEOUT = 10.0  # asking the workers what they run, as a sweep stops
_TASK_SECONDS = 0.5  # short trials are grouped into tasks of about this long (Dask's cost of a task paid once)
_MAX_GROUP = 64  # trials in one task at most
_GROUP_AFTER = 2  # trials seen to end before their length groups the next ones


class Coordinator:
    """One client run of a sweep: submit trials as slots free, apply events, record outcomes."""

    def __init__(self, spec: SweepSpec, client: Client, progress: SweepProgress,
                 stop: threading.Event | None = None) -> None:
        self.spec, self.client, self.progress = spec, client, progress
        self.stop = stop  # set (a detached sweep's cancel): stop as at Ctrl-C
        self.run_token = uuid.uuid4().hex[:8]
        self.publisher = Publisher(client)
        self.stretches = _Stretches(spec)
        self.best: TrialRecord | None = None
        self.ran = False  # whether this run submitted any trial (a rerun of a finished sweep submits none)

    def run(self, store: RunStore) -> list[TrialRecord]:
        """Run what the store does not record as finished; return every trial's record."""
        self.store, spec = store, self.spec
        slotted = require_slots(self.client)
        check_workers_support(self.client, slotted, spec.precision)
        slots = len(slotted)
        trials = spec.trials()
        store.begin_run(spec.name, spec.fingerprint(), spec.to_json(), trials, NOT_FINGERPRINTED)
        write_spec_file(spec)  # after the store accepted it: a refused spec must not replace the run's own
        self.mark = str(mark_run_dir(spec.run_dir.resolve(), self.run_token,  # workers that see it write there
                                     store.unfinished()))
        self.source = source = make_source(spec, store)
        self.stretches.replay(store)
        rows = store.trials()
        self.best = best_trial(rows, spec.mode)
        _announce(self, rows, total=spec.num_trials if spec.search == "tpe" else len(trials))
        self.running: dict[Future, list[int]] = {}  # each submitted task's trials not recorded yet
        self.trials_of: dict[Future, tuple[int, ...]] = {}  # each submitted task's trials
        self.groups = _Groups(spec)
        self.requeues = 0  # trials put back after their task was stopped: their next task's key differs
        self.careful: set[int] = set()  # trials of a failed task: their next task sends each one's events
        self.promoted = False  # a promoted ASHA trial waits to be submitted: top up now, not at the low mark
        # Set as an event arrives or a task ends: the loop applies it now (a trial's start is on screen at
        # once, not at the next poll), at most every _MIN_ROUND seconds for events; a task's end starts the
        # next round at once (its slot is free; after the last one the sweep is over).
        self.wake, self.task_ended = threading.Event(), threading.Event()
        with Inbox(self.client, self.run_token, wake=self.wake) as inbox:
            self.events = _Events(inbox, store, self.progress, _Relay(self.client, self.stretches))
            self.stops = _Stops(self)
            ended = JobState.STOPPED
            try:
                self._run_trials(source, slots)
                ended = JobState.FINISHED
            except KeyboardInterrupt:
                with second_interrupt_exits(_interrupted_again(spec)):
                    with contextlib.suppress(Exception):  # trials whose outcome came are recorded, not cancelled
                        self.events.apply(self._arrived)
                    cancelled = self.stops.cancel(self.running)
                raise Interrupted(_interrupted(spec, store, cancelled)) from None
            except Exception:
                with contextlib.suppress(Exception):
                    self.stops.abandon(self.running)
                raise
            finally:
                self.events.apply()
                self.publisher.flush(_PUBLISH_TIMEOUT)  # what was handed over goes first, then the end, at once
                publish(self.client, JobEnded(spec.name, self.run_token, state=ended))
        return store.trials()

    def _run_trials(self, source: Source, slots: int) -> None:
        running, watch = self.running, _SlotWatch(self.client, self.spec.run_dir, slots, self.store.path)
        last = 0.0  # when the last round began (time.monotonic)
        while True:
            if self.stop is not None and self.stop.is_set():
                raise KeyboardInterrupt  # handled as Ctrl-C is: cancel, record, free the workers
            self._top_up(source, _window(self.spec, watch.slots), watch.slots)
            if not running:
                return
            self.task_ended.wait(max(0.0, last + _MIN_ROUND - time.monotonic()))  # events wait their turn
            time.sleep(max(0.0, last + _MIN_TASK_ROUND - time.monotonic()))  # tasks ending together: one round
            self.wake.wait(_POLL)  # a task ended or an event came (or the poll is due)
            self.wake.clear()  # before looking: what comes from now on wakes the next round
            self.task_ended.clear()
            last = time.monotonic()
            # The finished tasks first, then the events: a task's events came before its result on the same
            # streams, so all of them are in by now (a start applied after its trial's end would be lost).
            done = [f for f in running if f.done()]
            with self.store.batch():  # one commit for all this round recorded
                self.events.apply(self._arrived)
                self._record_ended(source, done)
            watch.check()

    def _task_ended(self, future: Future) -> None:
        """On Dask's callback thread, as a submitted task ends (or fails, or is cancelled): wake the loop."""
        self.task_ended.set()
        self.wake.set()

    def _arrived(self, key: str, outcome: TrialOutcome) -> None:
        """A trial's outcome that came as an event: recorded now, in the order of the events (a grouped
        trial ends before the next trial of its task starts), while its task may go on."""
        numbers = next((n for f, n in self.running.items() if str(f.key) == key), [])
        if outcome.number in numbers:  # else stale: its task was stopped, or the trial is recorded
            numbers.remove(outcome.number)
            self._ended(self.source, outcome)

    def _record_ended(self, source: Source, done: list[Future]) -> None:
        """Record the trials of the tasks that finished or failed (``done``) whose outcome did not come as
        an event, and the trials past their time; free the slots of the tasks that ended."""
        running = self.running
        finished = {f: running.pop(f) for f in done}
        results = _results(self.client, [f for f, n in finished.items() if n and f.status == "finished"])
        for future, numbers in finished.items():
            for outcome in self._outcomes(future, numbers, results.get(future)) if numbers else []:
                self._ended(source, outcome)
            # A task Dask ran again after a lost worker trains its recorded trials again, and their resume
            # checkpoints with them: a trial ended for good keeps none (dropped when it was recorded).
            for number in self.trials_of.pop(future, ()):
                if number in self.events.ended:
                    self.stretches.path(number).unlink(missing_ok=True)
            future.release()
        for outcome in self.stops.overdue(running, self._put_back):
            self._ended(source, outcome)

    def _outcomes(self, future: Future, numbers: list[int],
                  result: list[TrialOutcome] | None) -> list[TrialOutcome]:
        """The outcomes of an ended task's trials ``numbers`` (not recorded yet) from its ``result``, or its
        result fetched on its own.

        A task that failed (e.g. its worker killed too often) fails the trial it was running. Where its
        trials' events were held back (see :func:`~training.trial.run_trials`), which one that was is not
        known (what it held died with it): its trials not recorded run again first, in a task that sends
        each trial's events as it ends. A trial never seen running whose worker kept dying may have only
        waited there while another trial killed it (Dask blames every task on a worker that dies): it runs
        again too, once. Otherwise the trial the task was running fails (its first, if none had started),
        and its other trials, which never ran or whose outcomes were lost, run again."""
        try:
            if result is None:
                result = future.result(timeout=_RESULT_TIMEOUT)
            by_number = {outcome.number: outcome for outcome in result}
            return [by_number[number] for number in numbers]
        except Exception as error:
            if _scheduler_lost(self.client, error):  # not the trials' doing: nothing recorded, a rerun resumes
                raise ClusterError(f"Lost the cluster's scheduler (it stopped, or the network failed): the sweep "
                                   f"stopped. Finished trials are saved in {self.spec.run_dir}; rerun the same "
                                   "command when the cluster is back to finish the rest.") from None
            running = self.events.current(numbers)
            never_ran = running is None and isinstance(error, KilledWorker)
            if (len(numbers) > 1 or never_ran) and not self.careful & set(numbers):
                self.careful.update(numbers)
                self._put_back(numbers)
                return []
            failed = numbers[0] if running is None else running
            self._put_back([n for n in numbers if n != failed])
            started, said = self.events.started.get(failed), _task_error(failed, error)
            # No traceback: its frames would be the coordinator's, saying nothing of the trial.
            return [TrialOutcome(failed, TrialState.FAILED, worker=self.events.name_of.get(failed, ""),
                                 seconds=round(time.monotonic() - started, 4) if started is not None else 0.0,
                                 error_type=type(error).__name__, error=said,
                                 traceback=f"{type(error).__name__}: {said}", finished=time.time())]

    def _ended(self, source: Source, outcome: TrialOutcome) -> None:
        record = self._record(outcome)
        self.groups.seen(outcome)
        if record.state == TrialState.PROMOTED:  # its next stretch goes first, submitted this round
            source.requeue(record.number)
            self.promoted = True
        else:
            source.finished(record)

    def _put_back(self, numbers: list[int]) -> None:
        """Trials of a task that was stopped or failed, which never ran or whose outcomes were lost with it:
        they run again (their clocks restart with their next start), first, in their order, submitted this
        round."""
        if not numbers:
            return
        for number in reversed(numbers):
            self.events.started.pop(number, None)
            self.events.key_of[number] = ""  # no task until it is submitted again: every task's events are stale
            self.source.requeue(number)
        self.requeues += 1
        self.promoted = True

    def _top_up(self, source: Source, window: tuple[int, int], slots: int) -> None:
        """Once no more than ``low`` tasks are queued or running, submit the next ones up to ``high``, in
        one message to the scheduler: trials are taken (TPE: asked) only as slots are about to free, so a
        10,000-trial sweep holds a few futures, not 10,000, and a sweep of short trials sends one graph
        for several tasks instead of one each, each task of several trials (:class:`_Groups`). A promoted
        ASHA trial is submitted at once, not at the low mark."""
        low, high = window
        if len(self.running) > low and not self.promoted:
            return
        self.promoted = False
        groups: list[list[int]] = []
        while len(self.running) + len(groups) < high:
            size, group = self.groups.size(source.left(), slots), list[int]()
            while len(group) < size and (number := source.take()) is not None:
                group.append(number)
            if not group:
                break
            groups.append(group)
        if groups:
            self.ran = True
            futures = self._submit(groups)
            for future in futures:
                future.add_done_callback(self._task_ended)
            self.running.update(zip(futures, groups, strict=True))
            self.trials_of.update(zip(futures, [tuple(g) for g in groups], strict=True))

    def _submit(self, groups: list[list[int]]) -> list[Future]:
        spec, tasks, keys = self.spec, [], []
        for group in groups:
            trials, suffix = [], ""
            for number in group:
                trial = TrialSpec(job=spec.name, run=self.run_token, number=number, workload=spec.workload,
                                  params=self.store.params(number), epochs=spec.epochs, seed=spec.seed,
                                  metric=spec.metric, mode=spec.mode, checkpoint=str(self.stretches.path(number)),
                                  checkpoint_every=spec.checkpoint_every, precision=spec.precision,
                                  run_mark=self.mark)
                trial, suffix = self.stretches.next_stretch(trial)
                trials.append(trial)
                self.publisher.send(TrialQueued(spec.name, self.run_token, trial=number, params=trial.params))
            tasks.append(trials)
            # Readable keys for the dashboard (grouped as trial-<sweep>); each client run gets its own, so a
            # key is never reused while a cancelled task of an earlier run may still be winding down (nor
            # within a run: trials put back run under a key of their own).
            numbers = f"{group[0]:04d}" if len(group) == 1 else f"{group[0]:04d}-{group[-1]:04d}"
            again = f"-again{self.requeues}" if self.requeues else ""
            keys.append(f"trial-{spec.name}-{numbers}{suffix}-{self.run_token}{again}")
            self.events.key_of.update(dict.fromkeys(group, keys[-1]))
        # Run in the order taken (a map's tasks keep their order; fifo_timeout 0: every batch after the
        # ones before it), so a promoted ASHA trial, taken first, goes before the new ones submitted with it.
        each = [bool(self.careful.intersection(group)) for group in groups]
        return self.client.map(run_trials, tasks, each, key=keys, pure=False, resources={TRAINING_SLOT: 1},
                               fifo_timeout="0ms")

    def _record(self, outcome: TrialOutcome) -> TrialRecord:
        """Record a finished task: its verdict, history, best epoch and model; announce it."""
        spec, number = self.spec, outcome.number
        state = self.stretches.verdict(outcome)
        self.events.deliver(outcome, final=state != TrialState.PROMOTED)
        best = best_epoch(outcome.history, spec.metric, spec.mode)
        model_dir = None
        if state.has_model:  # written by the worker where it sees the run directory, else here
            model_dir = outcome.model_dir or _save_model(spec, outcome, self.store.params(number))
        self.store.finish_trial(outcome, state, best, model_dir)
        row = self.store.trial(number)
        self.publisher.send(TrialEnded(spec.name, self.run_token, trial=number, state=state, best=row.best,
                                       best_epoch=row.best_epoch, error=row.error,
                                       record=outcome.history[-1] if outcome.history else None))
        self.best = best_trial([r for r in (self.best, row) if r is not None], spec.mode)
        self.progress.on_trial_end(row, self.store.counts(), self.best)
        return row


class _Stops:
    """Ending trials early: past their time (timed out), or all of them at Ctrl-C (cancelled). Either way
    their workers are restarted, the only way to stop a training thread and give its slot back."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.client, self.spec, self.run = coordinator.client, coordinator.spec, coordinator.run_token
        self.store, self.events = coordinator.store, coordinator.events
        self.publisher = coordinator.publisher

    def overdue(self, running: dict[Future, list[int]],
                put_back: Callable[[list[int]], None]) -> list[TrialOutcome]:
        """Stop the running trials past their time, each with its task: the task's trials that had not
        run yet are ``put_back`` to run in a task of their own. One whose worker was lost is not stalled:
        Dask runs its task again, and its clock restarts with its next start."""
        late = [(f, n, why) for f, numbers in running.items()
                if not f.done() and (n := self.events.current(numbers)) is not None
                and (why := self.events.overdue(n, self.spec))]
        if not late:
            return []
        try:
            alive = set(cluster_workers(self.client))
        except ClusterError:  # the scheduler did not answer: decide nothing now, ask again next round
            return []
        for _, number, _ in late:
            if self.events.worker_of.get(number) not in alive:
                self.events.started.pop(number, None)
        stopped = []
        for future, number, why in late:
            if number in self.events.started:
                stopped.append(self._stop(future, number, why))
                put_back([n for n in running.pop(future) if n != number])
        return stopped

    def _stop(self, future: Future, number: int, why: str) -> TrialOutcome:
        """A trial past its time: cancel it, restart its worker (a Python thread cannot be stopped), and
        make it a timed-out outcome with the epochs it reported."""
        started = self.events.started.get(number, time.monotonic())
        self.client.cancel([future], force=True)
        free_workers(self.client, [self.events.worker_of.get(number, "")])
        name = self.events.name_of.get(number, "")
        error = f"Trial {number} {why}; stopped, and its worker {name} restarted to free its slot."
        return TrialOutcome(number, TrialState.TIMED_OUT, worker=name, finished=time.time(),
                            seconds=round(time.monotonic() - started, 4), history=self.store.history(number),
                            error_type="TrialTimeout", error=error)

    def abandon(self, running: dict[Future, list[int]]) -> None:
        """The sweep failed (a full disk, a lost scheduler): cancel what was submitted and free the workers
        of the running trials, writing nothing (the store keeps them running: a rerun resumes them)."""
        workers = self._executing(running)
        self.client.cancel(list(running), force=True)
        free_workers(self.client, workers)
        running.clear()

    def cancel(self, running: dict[Future, list[int]]) -> list[int]:
        """Interrupted: cancel every submitted trial, record the running ones as cancelled (a rerun resumes
        them from their checkpoints) and restart their workers. The trials that were running, in order."""
        numbers = sorted(n for ns in running.values() for n in ns if n in self.events.started)
        workers = self._executing(running)
        self.client.cancel(list(running), force=True)
        for number in numbers:
            self.store.cancel_trial(number)
            self.publisher.send(TrialEnded(self.spec.name, self.run, trial=number, state=TrialState.CANCELLED))
        free_workers(self.client, workers)
        running.clear()
        return numbers

    def _executing(self, running: dict[Future, list[int]]) -> list[str]:
        """The workers running the trials of ``running``'s tasks, which are about to be cancelled: those of
        the trials seen starting, and those whose thread runs one of the tasks now (a task of several holds
        its trials' starts back for up to 0.1 s). From now on, the tasks' late events are stale."""
        workers = {self.events.worker_of[n] for ns in running.values() for n in ns if n in self.events.started}
        keys = {str(f.key) for f in running}
        try:
            executing = self.client.sync(self.client._run, _executing_keys, on_error="return",
                                         callback_timeout=_ASK_TIMEOUT)
        except Exception as exc:  # the workers of the started trials are ended still
            log.debug("Could not ask the workers what they run: %s", exc)
            executing = {}
        workers |= {w for w, run in executing.items() if isinstance(run, list) and keys.intersection(run)}
        for numbers in running.values():
            self.events.key_of.update(dict.fromkeys(numbers, ""))
        return sorted(workers)


class _Events:
    """The workers' events (trial starts, epoch records) into the store and the progress hooks, each epoch
    once: events can trail a trial's result, whose history then delivers what had not arrived."""

    def __init__(self, inbox: Inbox, store: RunStore, progress: SweepProgress, relay: _Relay) -> None:
        self.inbox, self.store, self.progress, self.relay = inbox, store, progress, relay
        self.seen: set[tuple[int, int]] = set()  # (trial, epoch) records delivered
        self.ended: set[int] = set()  # trials whose final outcome was recorded: later events are stale
        # By trial, for timeouts (this client's clock, when the event arrived): the current attempt's start,
        # its last sign of life, and its worker's address.
        self.started: dict[int, float] = {}
        self.active: dict[int, float] = {}
        self.worker_of: dict[int, str] = {}
        self.name_of: dict[int, str] = {}
        #: The task each trial was last submitted in: a stopped task's events that come late (its thread
        #: went on to the next trial before its worker ended) are not the trial's run under its new key.
        self.key_of: dict[int, str] = {}

    def apply(self, outcome: Callable[[str, TrialOutcome], None] | None = None) -> None:
        """The events that arrived since the last call; ``outcome(task key, outcome)`` for each outcome
        sent as an event (None: they are dropped, and the tasks' results are fetched instead)."""
        for event in self.inbox.drain():
            if not isinstance(event, TrialStarted | EpochEnded | TrialDone) or self._stale(event):
                continue
            if isinstance(event, TrialStarted):
                name = event.worker_name or event.worker
                self.started[event.trial] = self.active[event.trial] = time.monotonic()
                self.worker_of[event.trial], self.name_of[event.trial] = event.worker, name
                self.store.trial_started(event.trial, name, event.time)
                self.progress.on_trial_start(event.trial, name)
                if event.checkpoint:
                    self.relay.answer(event)
            elif isinstance(event, EpochEnded):
                self.active[event.trial] = time.monotonic()
                fresh = (event.trial, event.record["epoch"]) not in self.seen  # not trailing its outcome
                self._epoch(event.trial, event.record)
                if event.checkpoint and fresh:
                    self.relay.fetch(event)
            elif isinstance(event, TrialDone) and outcome is not None:
                try:
                    parsed = TrialOutcome.from_dict(event.outcome)
                except (TypeError, ValueError) as exc:  # not an outcome: the task's result is fetched instead
                    log.debug("Ignoring a malformed outcome of trial %s: %s", event.trial, exc)
                else:
                    outcome(event.key, parsed)

    def _stale(self, event: TrialStarted | EpochEnded | TrialDone) -> bool:
        """Of a trial recorded already, or of a task that was stopped (its trial runs under a new key)."""
        task = self.key_of.get(event.trial, event.key)
        return event.trial in self.ended or event.key not in ("", task)  # "": not sent from a task

    def current(self, numbers: list[int]) -> int | None:
        """The trial of a task's ``numbers`` that runs now (its trials run one after another: the one that
        started last), or None before the first starts."""
        started = [n for n in numbers if n in self.started]
        return max(started, key=self.started.__getitem__) if started else None

    def overdue(self, number: int, spec: SweepSpec) -> str | None:
        """Why trial ``number``'s running attempt is past its time (None: it is not, or has not started)."""
        if number not in self.started:
            return None  # still queued for a slot: waiting is not running
        now = time.monotonic()
        if spec.trial_timeout is not None and now - self.started[number] > spec.trial_timeout:
            return f"ran longer than trial_timeout={spec.trial_timeout:g}s"
        if spec.stall_timeout is not None and now - self.active[number] > spec.stall_timeout:
            return f"sent no epoch for stall_timeout={spec.stall_timeout:g}s"
        return None

    def deliver(self, outcome: TrialOutcome, final: bool) -> None:
        """The epochs of a finished task's history not yet delivered; ``final``: no more events count. The
        epochs before the one it resumed after were trained (and shown) in an earlier run: recorded, not
        shown again (a resumed trial showed them after its new ones)."""
        for record in outcome.history:
            self._epoch(outcome.number, record, shown=record["epoch"] > outcome.resumed_from)
        self.started.pop(outcome.number, None)  # the next stretch's start event starts its clock again
        if final:
            self.ended.add(outcome.number)

    def _epoch(self, number: int, record: dict[str, Any], shown: bool = True) -> None:
        if (number, record["epoch"]) not in self.seen:
            self.seen.add((number, record["epoch"]))
            self.store.record_epoch(number, record)
            if shown:
                self.progress.on_epoch(number, record)


def _window(spec: SweepSpec, slots: int) -> tuple[int, int]:
    """How many trials are submitted (queued or running) at once: topped up to ``high`` once no more than
    ``low`` are. Grid and random: at least two a slot and two more, so a slot that frees finds its next
    trial already on its worker (no round trip through this client), topped up by a slot's worth and two
    at a time (one graph for several short trials), while the client and scheduler hold a bounded number
    of tasks however large the sweep. TPE: one a slot, each asked as a slot frees, so each ask sees the
    results so far; ``max_concurrent``: that many.

    Examples
    --------
    >>> from training.sweep_spec import SweepSpec
    >>> _window(SweepSpec.create(workload="xor", space={"lr": [0.1, 0.2]}), slots=2)
    (6, 10)
    """
    slots = max(1, slots)
    if spec.max_concurrent:
        return spec.max_concurrent - 1, spec.max_concurrent
    if spec.search == "tpe":
        return slots - 1, slots
    return 2 * slots + 2, 3 * slots + 4


def _announce(coordinator: Coordinator, trials: list[TrialRecord], total: int | None) -> None:
    """Announce the sweep to the Training page (with what the store knows of its ``trials``) and the
    progress."""
    spec, client, store = coordinator.spec, coordinator.client, coordinator.store
    finished = sum(1 for t in trials if t.state.is_finished)
    page = enable_page(client)
    coordinator.publisher.send(_announcement(spec, coordinator.run_token, client.id, total, trials,
                                             store.histories()))
    coordinator.progress.on_start(spec, total or 0, (total or 0) - finished, dashboard_url(client))
    coordinator.progress.on_page(page)


class _Groups:
    """How many trials go in one task: one, until trials are seen to be short; then as many as take about
    :data:`_TASK_SECONDS` together, so Dask's cost of a task (scheduling, messages, a result) is paid once
    for several short trials. Never more than :data:`_MAX_GROUP`, nor so many that the sweep's last tasks
    leave slots idle. TPE (each trial asked as a slot frees), ASHA (trials run in stretches) and
    ``max_concurrent`` keep one trial a task.

    Examples
    --------
    >>> from training.protocol import TrialOutcome, TrialState
    >>> from training.sweep_spec import SweepSpec
    >>> groups = _Groups(SweepSpec.create(workload="xor", space={"lr": [0.1, 0.2]}))
    >>> groups.size(left=1000, slots=2)
    1
    >>> for n in range(3):
    ...     groups.seen(TrialOutcome(n, TrialState.COMPLETED, seconds=0.01))
    >>> groups.size(left=1000, slots=2), groups.size(left=40, slots=2)
    (50, 5)
    """

    def __init__(self, spec: SweepSpec) -> None:
        self.allowed = spec.search != "tpe" and spec.asha() is None and not spec.max_concurrent
        self.seconds: list[float] = []  # the last completed trials' lengths, as their workers timed them

    def seen(self, outcome: TrialOutcome) -> None:
        if self.allowed and outcome.state == TrialState.COMPLETED and outcome.seconds:
            self.seconds = [*self.seconds[-15:], float(outcome.seconds)]

    def size(self, left: int, slots: int) -> int:
        """Trials in the next task, with ``left`` trials still to submit on ``slots`` slots."""
        if len(self.seconds) < _GROUP_AFTER:
            return 1
        fits = int(_TASK_SECONDS / max(statistics.median(self.seconds), 1e-3))
        return max(1, min(fits, _MAX_GROUP, left // (4 * max(1, slots))))


class _Stretches:
    """ASHA's trials run in stretches between rungs: where each next stretch starts, and the verdict at a
    rung (promote: its checkpoint is kept for the next stretch; prune: it ends with its best epoch)."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec, self.asha = spec, spec.asha()
        self.trials = spec.run_dir.resolve() / "trials"  # absolute: workers are elsewhere

    def replay(self, store: RunStore) -> None:
        """A resumed sweep: the rung records from what the store already has."""
        if self.asha is not None:
            self.asha.replay(store.histories().values(), self.spec.metric)

    def next_stretch(self, trial: TrialSpec) -> tuple[TrialSpec, str]:
        """``trial`` limited to its next stretch (from its rung checkpoint), and a key suffix for it."""
        if self.asha is None:
            return trial, ""
        state = read_rung_checkpoint(self.path(trial.number))
        until = self.asha.next_stop(int(state["epoch"]) if state else 0)
        return dataclasses.replace(trial, until_epoch=until, start_state=state), f"-to{until}"

    def verdict(self, outcome: TrialOutcome) -> TrialState:
        """The trial's state after this stretch: the outcome's own, or PROMOTED / PRUNED at a rung. A trial
        that ends for good drops its resume checkpoint (its best epoch's model stays)."""
        path = self.path(outcome.number)
        if outcome.state != TrialState.COMPLETED or self.asha is None or \
                outcome.last_epoch >= self.asha.max_epochs:
            path.unlink(missing_ok=True)
            return outcome.state
        value = outcome.history[-1].get(self.spec.metric)
        if isinstance(value, int | float) and self.asha.promote(outcome.last_epoch, float(value)) \
                and outcome.checkpoint is not None:
            write_rung_checkpoint(path, outcome.checkpoint)
            return TrialState.PROMOTED
        path.unlink(missing_ok=True)
        return TrialState.PRUNED

    def path(self, number: int) -> Path:
        """Trial ``number``'s resume checkpoint: its last finished epoch (or, with ASHA, its last rung)."""
        return self.trials / f"{number:04d}" / "checkpoint.pt"


class _Relay:
    """Trial checkpoints through the coordinator, for workers that cannot write the run directory (no
    shared filesystem): each checkpoint a worker keeps in its own directory is fetched into the run
    directory when its epoch is reported, and each attempt's start is answered with the trial's checkpoint
    from there, so a retry on another worker or a rerun after a killed client continues from it.

    The bytes travel through the scheduler (``client.run``); ``checkpoint_every`` thins them for big models.
    """

    def __init__(self, client: Client, stretches: _Stretches) -> None:
        self.client, self.stretches = client, stretches

    def answer(self, event: TrialStarted) -> None:
        """Send the trial's start state (empty: none) to the worker whose attempt waits for it."""
        path = self.stretches.path(event.trial)
        data = path.read_bytes() if path.is_file() else b""
        self._on(event.worker, keep_start_state, event.checkpoint, data)

    def fetch(self, event: EpochEnded) -> None:
        """Copy the checkpoint the worker just kept into the run directory."""
        data = self._on(event.worker, read_kept_checkpoint, event.checkpoint)
        if data:
            path = self.stretches.path(event.trial)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.relayed")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def _on(self, worker: str, function: Any, *args: Any) -> Any:
        """``function(*args)`` on ``worker``; None if it failed or the worker is gone (the trial then goes
        on without this resume point: losing one is never worth stopping a sweep for)."""
        try:
            return self.client.run(function, *args, workers=[worker], callback_timeout=_RELAY_TIMEOUT)[worker]
        except Exception as exc:
            log.warning("Could not relay a trial checkpoint with %s: %s", worker, exc)
            return None


class _SlotWatch:
    """Fails the sweep clearly, instead of hanging, when no worker with a slot has been there for a while, or
    going on unseen when its run directory was removed (the workers made its trial folders again, and the
    sweep ended "completed" with no store to resume from)."""

    def __init__(self, client: Client, run_dir: Path, slots: int, store: Path) -> None:
        self.client, self.run_dir, self.store = client, run_dir, store
        self.checked = time.monotonic()
        self.lost_since: float | None = None
        self.slots = slots  # workers with a slot at the last check: sizes the submission window
        self.store_id = _file_id(store)

    def check(self) -> None:
        now = time.monotonic()
        if now - self.checked < _WORKER_CHECK_EVERY:
            return
        self.checked = now
        if self.store_id is not None and _file_id(self.store) != self.store_id:
            raise DaskTrainError(f"The run directory {self.run_dir} was removed or replaced while the sweep ran "
                                 "(its store.sqlite is gone): the sweep stopped, since nothing it records now "
                                 "would be kept. Run the sweep again to start afresh.")
        try:
            self.slots = len(require_slots(self.client))
            self.lost_since = None
        except ClusterError:
            self.lost_since = self.lost_since or now
            if now - self.lost_since > _NO_WORKERS_GRACE:
                raise ClusterError(f"No worker with a training slot for {_NO_WORKERS_GRACE:.0f}s: the sweep "
                                   f"stopped. Finished trials are saved in {self.run_dir}; rerun the "
                                   "same command when workers are back to finish the rest.") from None


def _file_id(path: Path) -> tuple[int, int] | None:
    """The file's identity (device, inode), None where it is not there."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _announcement(spec: SweepSpec, run: str, client: str, total: int | None, trials: list[TrialRecord],
                  histories: dict[int, list[dict[str, Any]]]) -> JobAnnounced:
    """The sweep as the Training page first sees it, with each trial's state and curve so far (of a sweep
    too large for the page to show every trial, only the trials begun: the others are counted in ``total``
    and appear as they are queued)."""
    if len(trials) > SHOWN_TRIALS:
        trials = [t for t in trials if t.state != TrialState.PENDING]
    rows = [{"number": t.number, "state": t.state.value, "params": t.params, "worker": t.worker, "best": t.best,
             "best_epoch": t.best_epoch, "epoch": t.epochs or None, "metrics": t.metrics,
             "curve": [[r["epoch"], r[spec.metric]] for r in histories.get(t.number, []) if spec.metric in r]}
            for t in trials]
    return JobAnnounced(spec.name, run, time=time.time(), type="sweep", workload=spec.workload,
                        metric=spec.metric, mode=spec.mode, epochs=spec.epochs, total=total, client=client,
                        trials=rows)


def _interrupted(spec: SweepSpec, store: RunStore, cancelled: list[int]) -> str:
    """The one-line summary of a sweep stopped by Ctrl-C."""
    finished = sum(t.state.is_finished for t in store.trials())
    which = f" (trial{'s' if len(cancelled) > 1 else ''} {', '.join(map(str, cancelled))})" if cancelled else ""
    return (f"sweep '{spec.name}': {finished} trials finished, {len(cancelled)} cancelled{which} and their "
            f"workers freed; {spec.run_dir} keeps everything.")


def _interrupted_again(spec: SweepSpec) -> str:
    """The line of a sweep stopped by a second Ctrl-C, without waiting for its trials to be cancelled."""
    return (f"Interrupted again: sweep '{printable(spec.name)}' stopped at once; {printable(str(spec.run_dir))} "
            "keeps every finished trial, and the same command resumes the rest (trials that were running show "
            "'running' until then).")


def _executing_keys(dask_worker: Any) -> list[str]:
    """Run on each worker: the keys of the tasks its threads run now."""
    return [str(task.key) for task in dask_worker.state.executing]


def _scheduler_lost(client: Client, error: BaseException) -> bool:
    """Whether a task's ``error`` is its client losing the scheduler (its futures cancelled as it went), which
    says nothing of the task's trials."""
    if not isinstance(error, CancelledError):
        return False
    return getattr(error, "reason", "") == "scheduler-connection-lost" or client.status not in ("running",
                                                                                               "connecting")


def _task_error(number: int, error: BaseException) -> str:
    """What a trial whose task failed is told: Dask's words, and for a worker that kept dying, what that
    usually means (Dask's message names a task key, not the trial)."""
    if isinstance(error, KilledWorker):
        return (f"The worker process running trial {number}, or holding it queued, died each time (a crash "
                "in native code, os._exit or the out-of-memory killer, in this trial or in one that ran there "
                f"while it waited: see the worker's log), so Dask gave up on it. Dask said: {error}")
    return str(error)


def _results(client: Client, returned: list[Future]) -> dict[Future, list[TrialOutcome]]:
    """The results of tasks that returned, fetched in one round trip (a trial's weights come from its
    worker); {} if that failed (e.g. a worker lost with a result on it: each is then fetched on its own)."""
    if not returned:
        return {}
    try:  # Client.gather has no timeout; its coroutine under sync() takes one
        values = client.sync(client._gather, returned, callback_timeout=_RESULT_TIMEOUT)
    except Exception:
        return {}
    return dict(zip(returned, values, strict=True))


def _save_model(spec: SweepSpec, outcome: TrialOutcome, params: dict[str, Any]) -> str:
    """Write the trial's model directory (its best epoch's weights, as the worker sent them) before the
    store marks it finished, so a finished row always has its files; return its path in the run directory."""
    from .model_file import write_model_dir  # torch: only where weights came back instead of a directory

    relative = f"trials/{outcome.number:04d}"
    write_model_dir(spec.run_dir / relative, outcome.state_dict or {}, workload=spec.workload, params=params,
                    meta=outcome.meta, artifacts=outcome.artifacts, history=outcome.history, seed=spec.seed,
                    extra={"sweep": spec.name, "trial": outcome.number}, best_epoch=outcome.best_epoch)
    return relative
