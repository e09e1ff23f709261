"""The Training page's picture: a scheduler plugin that folds the training events into jobs and trials.

Workers' starts and epochs and the coordinators' announcements (job, queued, trial end, job end) arrive
on the training topic; :class:`Board` keeps every job's trials, their latest metrics and curves, and
decides the best trial with the same rule as the sweep (:func:`training.protocol.best_trial`). A message
that does not parse as an event is dropped: the page never goes blank because one field had the wrong type.
Imports neither torch nor pandas: it runs inside the scheduler.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

from .events import PAGE_TOPIC, TOPIC, plain
from .limits import clip, clip_middle
from .protocol import (
    EpochEnded,
    Event,
    FirstStep,
    JobAnnounced,
    JobEnded,
    JobRestarted,
    JobState,
    TrialDone,
    TrialEnded,
    TrialQueued,
    TrialStarted,
    TrialState,
    best_epoch,
    best_trial,
    parse_event,
)

log = logging.getLogger(__name__)

NAME = "dask-train-board"
MAX_JOBS = 50  # finished jobs beyond this many are forgotten, oldest first
_MAX_EPOCHS = 2000  # points kept per curve
_STATES = {s.value for s in TrialState}
#: A job with more trials than this shows a bounded selection on the page (all are still counted): the
#: running ones, the best and the latest finished; curves of the best only.
SHOWN_TRIALS = 200
_TOP_TRIALS, _LATEST_TRIALS, _CURVES = 50, 50, 20
_MAX_FIELDS, _MAX_VALUE_CHARS = 50, 80  # of a trial's params and metrics on the page
_TRIAL_FIELDS = ("state", "params", "worker", "best", "best_epoch", "epoch", "metrics", "curve", "error")


class Board(SchedulerPlugin):
    """The live state of every training job the scheduler has seen, built from the training events.

    Examples
    --------
    >>> board = Board()
    >>> board.apply({"kind": "job", "job": "demo", "run": "r1", "type": "sweep", "metric": "val_loss",
    ...              "mode": "min", "trials": [{"number": 0, "params": {"lr": 0.1}}]})
    >>> board.apply({"kind": "epoch", "job": "demo", "run": "r1", "trial": 0, "worker": "w",
    ...              "record": {"epoch": 1, "val_loss": 0.5}})
    >>> board.apply({"kind": "end", "job": "demo", "run": "r1", "trial": 0, "state": "completed", "best": 0.5})
    >>> job = json.loads(board.snapshot_json())["jobs"][0]
    >>> job["trials"][0]["state"], job["trials"][0]["curve"], job["best"], job["best_value"]
    ('completed', [[1, 0.5]], 0, 0.5)
    """

    name = NAME

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # by run token, oldest first
        self.scheduler: Scheduler | None = None
        self._cache: tuple[int, str] | None = None
        self.version = 0

    def attach(self, scheduler: Scheduler) -> None:
        """Watch ``scheduler``, starting with the training events it already holds (both topics, in the
        order the scheduler received them)."""
        self.scheduler = scheduler
        held = [(when, i, topic, message) for topic in (TOPIC, PAGE_TOPIC)
                for i, (when, message) in enumerate(scheduler.get_events(topic))]
        for _, _, topic, message in sorted(held, key=lambda e: (e[0], e[2] == TOPIC, e[1])):
            self.log_event(topic, message)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic in (TOPIC, PAGE_TOPIC):  # one event, or several in one message (held back together)
            for message in msg if isinstance(msg, list | tuple) else [msg]:  # msgpack may give a tuple
                self.apply(message)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A client that was running jobs left without saying they ended: they are not running any more."""
        for job in self.jobs.values():
            if job["client"] == client and job["state"] == JobState.RUNNING:
                job.update(state=JobState.CLIENT_GONE, finished=time.time())
                self.version += 1

    def apply(self, message: Any) -> None:
        """Fold one event into the picture (a message that is not a valid event is dropped)."""
        event = parse_event(message)
        if event is None:
            log.debug("Training page: dropped a malformed event %.200r", message)
            return
        job = self.jobs.get(event.run) or self._new_job(event)
        if isinstance(event, JobAnnounced):
            self._announced(job, event)
        elif isinstance(event, JobEnded):
            self._ended(job, event)
        elif isinstance(event, JobRestarted):
            self._restarted(job, event)
        elif not isinstance(event, FirstStep | TrialDone):  # an outcome is the coordinator's to announce
            self._trial_event(job, event)
        self.version += 1

    @staticmethod
    def _announced(job: dict[str, Any], event: JobAnnounced) -> None:
        job.update(type=event.type, workload=event.workload, metric=event.metric, mode=event.mode,
                   epochs=event.epochs, total=event.total, client=event.client, params=_small(event.params),
                   started=event.time or job["started"])
        for row in event.trials:
            if isinstance(row, dict) and isinstance(row.get("number"), int):
                known = {k: row[k] for k in _TRIAL_FIELDS if k in row}
                if "state" in known and known["state"] not in _STATES:
                    continue
                if "state" in known:
                    known["state"] = TrialState(known["state"])
                if "curve" in known:
                    known["curve"] = _points(known["curve"])
                for key in ("params", "metrics"):
                    if key in known:
                        known[key] = _small(known[key])
                if "error" in known:
                    known["error"] = _text(known["error"])
                _trial(job, row["number"]).update(known)

    @staticmethod
    def _ended(job: dict[str, Any], event: JobEnded) -> None:
        job.update(state=event.state, error=_text(event.error), finished=time.time())
        # Ranks of a finished DDP job completed; trials a stopped job never finished were cancelled.
        left = TrialState.COMPLETED if event.state == JobState.FINISHED else TrialState.CANCELLED
        for trial in job["trials"].values():
            if not TrialState(trial["state"]).is_finished:
                trial["state"] = left
                if left == TrialState.COMPLETED:
                    _best_from_curve(job, trial)

    @staticmethod
    def _restarted(job: dict[str, Any], event: JobRestarted) -> None:
        """A DDP job starts again from its checkpoint: listed under the job; ranks it no longer has are
        cancelled (its announcement, which follows, shows where the others run now)."""
        job["restarts"].append({"attempt": event.attempt, "reason": _text(event.reason), "epoch": event.epoch,
                                "world_size": event.world_size, "time": event.time or time.time()})
        for number, trial in job["trials"].items():
            if number >= event.world_size:
                trial.update(state=TrialState.CANCELLED, error=f"restart {event.attempt}: the job went on "
                                                               f"with {event.world_size} ranks")

    def _trial_event(self, job: dict[str, Any], event: Event) -> None:
        rank, number = getattr(event, "rank", None), int(getattr(event, "trial", 0))
        trial = _trial(job, rank if job["type"] == "ddp" and rank is not None else number)
        worker = getattr(event, "worker", "")
        if worker:
            trial["worker"] = worker
        if isinstance(event, TrialQueued):
            trial["params"] = _small(event.params) or trial["params"]
            if trial["state"] != TrialState.RUNNING:  # else its announcement, held back, came after its start
                trial["state"] = TrialState.QUEUED
        elif isinstance(event, TrialStarted):
            trial["state"] = TrialState.RUNNING
        elif isinstance(event, EpochEnded):
            _epoch(job, trial, event.record)
        elif isinstance(event, TrialEnded):
            if event.record:
                _epoch(job, trial, event.record)
            trial.update(state=event.state, best=event.best, best_epoch=event.best_epoch, error=_text(event.error),
                         ended=event.time or time.time())

    def _new_job(self, event: Event) -> dict[str, Any]:
        ddp = getattr(event, "type", "") == "ddp" or getattr(event, "trial", None) == -1
        job: dict[str, Any] = {
            "name": event.job, "run": event.run, "type": "ddp" if ddp else "sweep",
            "workload": "", "metric": "val_loss", "mode": "min", "epochs": None, "total": None, "client": None,
            "params": {}, "state": JobState.RUNNING, "error": None, "started": time.time(), "finished": None,
            "trials": {}, "restarts": [],
        }
        self.jobs[job["run"]] = job
        finished = [run for run, j in self.jobs.items() if j["state"] != JobState.RUNNING]
        for run in finished[: max(0, len(self.jobs) - MAX_JOBS)]:
            del self.jobs[run]
        return job

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows: jobs newest first, each with its trials and the best one."""
        names = {}
        if self.scheduler is not None:
            names = {address: str(ws.name) for address, ws in self.scheduler.workers.items()}
        jobs = [_view(job, names) for job in reversed(self.jobs.values())]
        return {"jobs": jobs, "version": self.version}

    def snapshot_json(self) -> str:
        """:meth:`snapshot` as JSON, reused until something changes (the page asks every second)."""
        if self._cache is None or self._cache[0] != self.version:
            text = json.dumps(plain(self.snapshot()), allow_nan=False)
            self._cache = (self.version, text.replace("<", "\\u003c"))  # never markup, even if misread as HTML
        return self._cache[1]


def _trial(job: dict[str, Any], number: int) -> dict[str, Any]:
    if number not in job["trials"]:
        job["trials"][number] = {"number": number, "state": TrialState.QUEUED, "worker": None, "params": {},
                                 "epoch": None, "metrics": {}, "best": None, "best_epoch": None, "error": None,
                                 "curve": []}
    return job["trials"][number]


def _epoch(job: dict[str, Any], trial: dict[str, Any], record: dict[str, Any]) -> None:
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return
    if not TrialState(trial["state"]).is_finished:
        trial["state"] = TrialState.RUNNING
    if epoch >= (trial["epoch"] or 0):
        trial.update(epoch=epoch, metrics=_small(record, first=("epoch", job["metric"])))
    value = record.get(job["metric"])
    if isinstance(value, int | float) and not isinstance(value, bool):
        trial["curve"] = _latest([p for p in trial["curve"] if p[0] != epoch] + [[epoch, value]])


def _small(values: Any, first: tuple[str, ...] = ()) -> Any:
    """A trial's params or metrics as the page keeps them: at most :data:`_MAX_FIELDS` entries (``first`` kept
    first), long names and values cut short, a nested value as short text, so what the page polls stays small
    whatever a workload sends (3,000 metrics, a 20,000-character parameter).

    Examples
    --------
    >>> small = _small({"lr": 0.1, "note": "x" * 500, "deep": {"a": [1, 2]}})
    >>> small["lr"], len(small["note"]), small["deep"]
    (0.1, 80, "{'a': [1, 2]}")
    >>> len(_small({f"m{i}": i for i in range(1000)}, first=("m999",))), list(_small({"b": 1, "a": 2}, ("a",)))
    (50, ['a', 'b'])
    """
    if not isinstance(values, dict):
        return values
    keys = [k for k in first if k in values] + [k for k in values if k not in first]
    out: dict[str, Any] = {}
    for key in keys[:_MAX_FIELDS]:
        value = values[key]
        if isinstance(value, str):  # start and end kept: paths differing at their end stay different
            value = clip_middle(value, _MAX_VALUE_CHARS)
        elif value is not None and not isinstance(value, bool | int | float):
            value = clip_middle(repr(value), _MAX_VALUE_CHARS)
        out[_text(str(key), _MAX_VALUE_CHARS)] = value
    return out


def _text(text: Any, limit: int = 1000) -> Any:
    """A message the page shows, cut short (None and what is not text as they are)."""
    return clip(text, limit) if isinstance(text, str) else text


def _points(curve: Any) -> list[list[Any]]:
    """An announced curve as ``[epoch, value]`` lists in epoch order (msgpack may give tuples; what is not
    a point is dropped).

    Examples
    --------
    >>> _points(((2, 0.5), [1, 0.7], ["x", 1], (3,), "no"))
    [[1, 0.7], [2, 0.5]]
    """
    if not isinstance(curve, list | tuple):
        return []
    points = [[p[0], p[1]] for p in curve if isinstance(p, list | tuple) and len(p) == 2
              and isinstance(p[0], int) and not isinstance(p[0], bool)
              and isinstance(p[1], int | float) and not isinstance(p[1], bool)]
    return _latest(points)


def _latest(points: list[list[Any]]) -> list[list[Any]]:
    """Curve points in epoch order, the last :data:`_MAX_EPOCHS` of them."""
    return sorted(points, key=lambda p: p[0])[-_MAX_EPOCHS:]


def _best_from_curve(job: dict[str, Any], trial: dict[str, Any]) -> None:
    """A DDP rank's best epoch, from its curve (ranks send no end event of their own)."""
    found = best_epoch(({"epoch": e, "v": v} for e, v in trial["curve"]), "v", job["mode"])
    if found is not None:
        trial["best_epoch"], trial["best"] = found


def _view(job: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    trials = [t for _, t in sorted(job["trials"].items())]
    counts: dict[str, int] = {}
    for trial in trials:
        counts[str(trial["state"])] = counts.get(str(trial["state"]), 0) + 1
    best = best_trial(trials, job["mode"]) if job["mode"] in ("min", "max") else None
    shown = _shown(trials, job["mode"], best)
    return {**{k: v for k, v in job.items() if k not in ("trials", "client")},
            "trials": [dict(t, worker_name=names.get(t["worker"] or "", "")) for t in shown],
            "hidden": len(trials) - len(shown), "counts": counts, "best": None if best is None else best["number"],
            "best_value": None if best is None else best["best"]}


def _shown(trials: list[dict[str, Any]], mode: str, best: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The trials the page gets: all of a job of up to :data:`SHOWN_TRIALS`; of a larger one the running
    ones, the best finished and the latest finished, in number order, with curves for the best only, so
    what the page polls stays small however large the sweep.

    Examples
    --------
    >>> rows = [{"number": i, "state": TrialState.COMPLETED, "best": float(i), "ended": i, "curve": [[1, i]]}
    ...         for i in range(1000)]
    >>> shown = _shown(rows, "min", rows[0])
    >>> len(shown) <= SHOWN_TRIALS, shown[0]["number"], shown[-1]["number"], len([t for t in shown if t["curve"]])
    (True, 0, 999, 20)
    """
    if len(trials) <= SHOWN_TRIALS:
        return trials
    finished = [t for t in trials if TrialState(t["state"]).is_finished]
    live = [t for t in trials if not TrialState(t["state"]).is_finished and t["state"] != TrialState.PENDING]
    ranked = [t for t in finished if isinstance(t.get("best"), int | float)]
    ranked.sort(key=lambda t: t["best"], reverse=mode == "max")
    latest = sorted(finished, key=lambda t: t.get("ended") or 0.0)[-_LATEST_TRIALS:]
    top = ([best] if best is not None else []) + [t for t in ranked if t is not best][:_TOP_TRIALS]
    with_curve = {t["number"] for t in top[:_CURVES]}
    chosen = {t["number"]: t for t in [*live[: SHOWN_TRIALS - _TOP_TRIALS - _LATEST_TRIALS], *top, *latest]}
    return [t if number in with_curve else dict(t, curve=[]) for number, t in sorted(chosen.items())]
