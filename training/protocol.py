"""What crosses a process boundary: trial states, trial and rank outcomes, the events, and "better".

The bottom of the package, like optuna's ``TrialState`` / ``FrozenTrial``: workers return these records,
the coordinator stores and announces them, the Training page (on the scheduler) parses the events, and
the report and CLI read them back. Nothing here imports Dask or torch, so the scheduler's side stays light.

Events travel as plain dicts (Dask events are msgpack): each event class has ``to_dict`` and
:func:`parse_event` turns a dict back into its class, or ``None`` when it is malformed, so one bad message
never breaks a reader.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar


class TrialState(str, enum.Enum):
    """Where a trial (or a DDP rank) is. ``PROMOTED``: ASHA let it go on to its next rung."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PROMOTED = "promoted"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"
    DIVERGED = "diverged"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_finished(self) -> bool:
        """Ended for good: a rerun of the sweep does not run it again."""
        return self in _FINISHED

    @property
    def has_model(self) -> bool:
        """Trained to a result worth ranking (its best epoch's model is saved)."""
        return self in (TrialState.COMPLETED, TrialState.PRUNED)

    @property
    def is_error(self) -> bool:
        return self in (TrialState.FAILED, TrialState.DIVERGED, TrialState.TIMED_OUT)


_FINISHED = frozenset({TrialState.COMPLETED, TrialState.PRUNED, TrialState.FAILED, TrialState.DIVERGED,
                       TrialState.TIMED_OUT})


class JobState(str, enum.Enum):
    """Where a whole job (a sweep's client run, or a DDP job) is, as the Training page shows it."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    CLIENT_GONE = "client gone"

    def __str__(self) -> str:
        return self.value


def finished_states() -> tuple[str, ...]:
    """The stored values of the finished trial states (for SQL ``IN`` clauses)."""
    return tuple(s.value for s in TrialState if s.is_finished)


# ---------------------------------------------------------------------------------------------------- better
def better(value: Any, than: Any, mode: str) -> bool:
    """True when ``value`` is strictly better than ``than`` under ``mode`` ("min" or "max").

    A missing or non-finite value is never better; any finite value beats a missing one.

    Examples
    --------
    >>> better(0.1, 0.2, "min"), better(0.1, 0.2, "max"), better(0.3, None, "min"), better(None, 0.3, "min")
    (True, False, True, False)
    >>> better(float("nan"), 1.0, "min"), better(0.5, 0.5, "min")
    (False, False)
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r}: use 'min' or 'max'")
    if not is_number(value):
        return False
    if not is_number(than):
        return True
    return value < than if mode == "min" else value > than


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def best_epoch(history: Iterable[Mapping[str, Any]], metric: str, mode: str) -> tuple[int, float] | None:
    """The epoch whose ``metric`` is best (the first one among equals) and that value; None if none is finite.

    Examples
    --------
    >>> history = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.3}, {"epoch": 3, "loss": 0.4}]
    >>> best_epoch(history, "loss", "min")
    (2, 0.3)
    """
    found: tuple[int, float] | None = None
    for record in history:
        value = record.get(metric)
        if isinstance(value, int | float) and better(value, None if found is None else found[1], mode):
            found = (int(record["epoch"]), float(value))
    return found


def best_trial(trials: Iterable[Any], mode: str) -> Any | None:
    """The trial with the best ``best`` value among those with a model (completed or pruned); the lowest
    number wins a tie. Works on :class:`TrialRecord` and on mappings with ``state``, ``best``, ``number``.

    Examples
    --------
    >>> S = TrialState
    >>> rows = [TrialRecord(0, {}, S.COMPLETED, best=0.5), TrialRecord(1, {}, S.FAILED, best=0.1),
    ...         TrialRecord(2, {}, S.PRUNED, best=0.4), TrialRecord(3, {}, S.COMPLETED, best=0.4)]
    >>> best_trial(rows, "min").number
    2
    """
    chosen, chosen_value = None, None
    for trial in sorted(trials, key=lambda t: _field(t, "number")):
        state, value = _field(trial, "state"), _field(trial, "best")
        if _ranked(state) and better(value, chosen_value, mode):
            chosen, chosen_value = trial, value
    return chosen


def _ranked(state: Any) -> bool:
    try:
        return TrialState(state).has_model  # a str-valued enum hashes by name: convert, never `in` a set
    except ValueError:
        return False


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name)


# ---------------------------------------------------------------------------------------------------- records
class _Record:
    """``to_dict`` / ``from_dict`` for the frozen records below (values kept as they are: tensors too)."""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The record from :meth:`to_dict`'s output (or a store row): states back to their enum."""
        hints = _hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kind = hints[f.name]
                values[f.name] = kind(data[f.name]) if kind in (TrialState, JobState) else data[f.name]
        return cls(**values)


@dataclass(frozen=True)
class TrialOutcome(_Record):
    """How one run of a trial (one Dask task) ended, as the worker reports it.

    ``state_dict`` holds the weights of the trial's best epoch by the sweep's metric (``best_epoch``), unless
    the worker wrote them itself: ``model_dir`` is then the model directory it wrote, relative to the run
    directory. ``checkpoint`` is the full trainer state after the last epoch, for a next stretch (ASHA).
    ``resumed_from``: the epoch this run of the trial started after (its resume checkpoint's, or the last
    stretch's); ``history`` holds those earlier epochs too, which this run did not train.
    """

    number: int
    state: TrialState
    worker: str = ""
    device: str = ""
    started: float | None = None
    finished: float | None = None
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    best_epoch: int | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    state_dict: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    model_dir: str | None = None

    @property
    def last_epoch(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0


@dataclass(frozen=True)
class RankOutcome(_Record):
    """How one DDP rank ended. Rank 0 carries the model: its best epoch's weights (``best_epoch``)."""

    rank: int
    worker: str
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    best_epoch: int | None = None
    state_dict: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    first_step_at: float | None = None
    samples: Any = None  # the sample indices this rank trained on in its last epoch (tests ask for it)
    device: str = ""  # what it trained on: "cpu", or "cuda:0 GPU-<uuid>" (one physical GPU per rank)


@dataclass(frozen=True)
class TrialRecord(_Record):
    """One trial as the run store holds it (optuna's FrozenTrial): what the report, CLI and TPE read."""

    number: int
    params: dict[str, Any]
    state: TrialState = TrialState.PENDING
    worker: str | None = None
    starts: int = 0
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    epochs: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    best: float | None = None
    best_epoch: int | None = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    model_dir: str | None = None


# ---------------------------------------------------------------------------------------------------- events
_EVENTS: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    """One message on the training topic. ``job``: the sweep or DDP job's name; ``run``: one client run's
    token (events of an earlier, killed client are told apart); ``time``: when it was sent."""

    kind: ClassVar[str] = ""
    job: str
    run: str
    time: float = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _EVENTS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """A plain, msgpack-able dict (enums as their values)."""
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclass(frozen=True)
class TrialStarted(Event):
    kind: ClassVar[str] = "start"
    trial: int = 0
    worker: str = ""  # its address: Dask stamps every worker event's "worker" with it on the way
    device: str = ""
    worker_name: str = ""  # as people see it (cpu-0)
    #: Set where the worker cannot write the run directory: the worker-local path its checkpoints go to.
    #: The trial waits for the coordinator to put its start state beside it (``<checkpoint>.start``).
    checkpoint: str = ""
    #: The task that runs it (a sweep's trials are put back to run under another key when their task was
    #: stopped): the coordinator ignores a stopped task's late events. "" outside a Dask task.
    key: str = ""


@dataclass(frozen=True)
class EpochEnded(Event):
    """A trial's (or DDP rank 0's, ``trial=-1``) epoch record."""

    kind: ClassVar[str] = "epoch"
    trial: int = 0
    worker: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None
    #: Where the worker kept this epoch's checkpoint when it cannot write the run directory: the
    #: coordinator fetches it from there into the run directory.
    checkpoint: str = ""
    #: The sweep trial's task (see :class:`TrialStarted`); "" for DDP ranks and outside a Dask task.
    key: str = ""


@dataclass(frozen=True)
class TrialDone(Event):
    """A trial task's outcome (:meth:`TrialOutcome.to_dict`), sent by its worker as the task returns when
    it holds no tensors (the worker wrote the model directory itself): the coordinator takes it from here
    instead of fetching the task's result, a round trip through the scheduler less. ``key``: the task's."""

    kind: ClassVar[str] = "done"
    trial: int = 0
    worker: str = ""
    key: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FirstStep(Event):
    """DDP rank 0 finished its first optimizer step."""

    kind: ClassVar[str] = "first-step"


@dataclass(frozen=True)
class RankBeat(Event):
    """A DDP rank is alive (sent every few seconds from a side thread, on its own topic): ``last`` is what
    its training thread did last ("epoch 2 step 14/40"); ``attempt`` tells a restarted job's ranks apart."""

    kind: ClassVar[str] = "beat"
    rank: int = 0
    attempt: int = 0
    last: str = ""


@dataclass(frozen=True)
class JobRestarted(Event):
    """A DDP job failed and starts again from its checkpoint (``attempt`` 1 is the first restart)."""

    kind: ClassVar[str] = "restart"
    attempt: int = 1
    reason: str = ""
    world_size: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class JobAnnounced(Event):
    """A coordinator starts a job: what it trains, and (a resumed sweep) what its trials already did."""

    kind: ClassVar[str] = "job"
    type: str = "sweep"  # "sweep" or "ddp"
    workload: str = ""
    metric: str = "val_loss"
    mode: str = "min"
    epochs: int | None = None
    total: int | None = None
    client: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrialQueued(Event):
    kind: ClassVar[str] = "queued"
    trial: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialEnded(Event):
    """A trial's end as the coordinator recorded it (``PROMOTED``: only a stretch ended). ``record``: its
    last epoch's (workers send no epoch event for an attempt's last epoch: its outcome carries it)."""

    kind: ClassVar[str] = "end"
    trial: int = 0
    state: TrialState = TrialState.COMPLETED
    best: float | None = None
    best_epoch: int | None = None
    error: str | None = None
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobEnded(Event):
    kind: ClassVar[str] = "job-end"
    state: JobState = JobState.FINISHED
    error: str | None = None


def parse_event(message: Any) -> Event | None:
    """The event ``message`` (a dict off the topic) holds, or None when it is not a valid one.

    Examples
    --------
    >>> event = parse_event({"kind": "end", "job": "s", "run": "r", "trial": 2, "state": "pruned", "best": 0.5})
    >>> type(event).__name__, event.trial, event.state, event.best
    ('TrialEnded', 2, <TrialState.PRUNED: 'pruned'>, 0.5)
    >>> parse_event({"kind": "end", "job": "s", "run": "r", "trial": "two"}) is None
    True
    """
    if not isinstance(message, Mapping):
        return None
    cls = _EVENTS.get(str(message.get("kind")))
    return None if cls is None else checked_record(cls, message)


_R = TypeVar("_R")


def checked_record(cls: type[_R], data: Mapping[str, Any]) -> _R | None:
    """``data`` as a ``cls`` record (an event, a store's trial row read as untrusted data): None unless
    every field it holds is of its declared type and every field without a default is there.

    Examples
    --------
    >>> checked_record(TrialRecord, {"number": 3, "params": {}, "state": "completed"}).state
    <TrialState.COMPLETED: 'completed'>
    >>> checked_record(TrialRecord, {"number": 3, "params": {}, "metrics": [1]}) is None
    True
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            value = _checked(data[f.name], _hints(cls)[f.name])
            if value is _INVALID:
                return None
            values[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return None
    return cls(**values)


_INVALID = object()
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


@functools.cache
def _options(hint: Any) -> tuple[Any, ...]:
    """The types ``hint`` allows, each as its origin (``dict[str, Any]``: dict), once a hint."""
    options: Sequence[Any] = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) \
        else (hint,)
    return tuple(typing.get_origin(option) or option for option in options)


def _checked(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (str, int, float, dict, list, an enum, or ``X | None``), else _INVALID."""
    for origin in _options(hint):
        if origin is type(None) and value is None:
            return None
        if origin is float and is_number(value):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, dict) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, list | tuple):  # msgpack may hand lists back as tuples
            return list(value)
        if isinstance(origin, type) and issubclass(origin, enum.Enum) and isinstance(value, str | int) and \
                value in _values(origin):
            return origin(value)
    return _INVALID


@functools.cache
def _values(kind: type[enum.Enum]) -> frozenset[Any]:
    return frozenset(member.value for member in kind)


_UnionType = type(int | None)
