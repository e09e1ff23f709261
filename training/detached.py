"""Detached sweeps: the coordinator runs inside the scheduler's process, so the sweep outlives its client.

Why there: the scheduler is the one process every cluster has and keeps for the cluster's life; a worker
can be lost or restarted (a timed-out trial restarts its worker), and a detached coordinator must not die
with it. The coordinator runs in a thread of the scheduler process with its own client, exactly as a
foreground sweep runs in the user's process: same trials, store, checkpoints, Training page. Its run
directory is on the scheduler's filesystem (``runs_dir`` must be writable there).

Everything here is called through ``client.run_on_scheduler``: :func:`start` a run, :func:`runs` to list
them, :func:`progress_since` to follow one (``dask-train attach`` replays its progress hooks) and
:func:`cancel` one. The module imports nothing heavy at import time: the scheduler's event loop runs these
calls, and the coordinator's imports (torch) happen in the sweep's own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from distributed import Client

    from .protocol import TrialRecord, TrialState
    from .sweep import SweepProgress, SweepResult
    from .sweep_spec import SweepSpec

log = logging.getLogger(__name__)

#: Progress entries a run keeps for late attachers (a start, every epoch and every end); beyond this the
#: oldest epoch records go first (starts and ends are always kept).
MAX_ENTRIES = 200_000


@dataclass
class _Run:
    """One detached sweep in this scheduler: its state and the progress hook calls so far."""

    name: str
    run_dir: str
    started: float = field(default_factory=time.time)
    state: str = "running"  # running, finished, cancelled, failed
    error: str | None = None
    ended: float | None = None
    entries: list[tuple[int, str, list[Any]]] = field(default_factory=list)  # (seq, hook, args)
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)  # its thread ended
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    read: int = 0  # the last entry a follower was sent
    followed: float = 0.0  # when a follower last asked (time.monotonic), 0: never

    def add(self, hook: str, *args: Any) -> None:
        with self.lock:
            self.seq += 1
            self.entries.append((self.seq, hook, list(args)))
            if len(self.entries) > MAX_ENTRIES:
                drop = next((i for i, e in enumerate(self.entries) if e[1] == "epoch"), 0)
                del self.entries[drop]

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "run_dir": self.run_dir, "started": self.started,
                "ended": self.ended, "error": self.error}


class RunReplaced(RuntimeError):
    """The detached sweep being followed ended and a run of the same name replaced it."""


_RUNS: dict[str, _Run] = {}
_LOCK = threading.Lock()


def start(spec_json: dict[str, Any], run_dir: str, trials: int = 0, dask_scheduler: Any = None) -> dict[str, Any]:
    """Start a detached sweep here (the scheduler) from a spec the client validated: its summary, or
    ``{"refused": why}`` for what it would refuse as it starts (a sweep of that name running here, a run
    directory this machine cannot write (relative: to the scheduler's working folder), one another run
    holds, or one holding another sweep of that name, or ``trials``, its count, over this scheduler's limit),
    told now rather than after "running" was said. Never raised: the scheduler would log its traceback."""
    from .errors import ConfigError

    try:
        _check_count_here(trials)
        return _start(spec_json, run_dir, dask_scheduler)
    except ConfigError as exc:
        return {"refused": str(exc)}
    except OSError as exc:  # the run directory, on this machine: what the client is told
        return {"refused": f"The run directory {run_dir!r} cannot be used on the scheduler's machine "
                           f"({exc.strerror or exc}): choose another --name or --runs-dir."}


def _check_count_here(trials: int) -> None:
    """Refuse a sweep of more trials than this scheduler's limit (its own DASK_TRAIN_MAX_TRIALS: the client's,
    which checked the spec, may be higher; the sweep failed in the scheduler after "running" was said)."""
    from .errors import ConfigError
    from .limits import max_trials

    if trials > (limit := max_trials()):
        raise ConfigError(f"The sweep makes {trials:,} trials, more than the {limit:,} the cluster's scheduler "
                          "allows: make the space smaller, or start the scheduler with DASK_TRAIN_MAX_TRIALS=N "
                          "in its environment.")


def _start(spec_json: dict[str, Any], run_dir: str, dask_scheduler: Any) -> dict[str, Any]:
    from .errors import ConfigError
    from .run_dirs import SWEEP_MARKERS, check_run_dir

    name = str(spec_json["name"])
    resolved = check_run_dir(run_dir, SWEEP_MARKERS, what="run directory on the scheduler's machine")
    with _LOCK:
        if name in _RUNS and _RUNS[name].state == "running":
            raise ConfigError(f"A sweep named '{name}' is already running on this cluster: attach to it, "
                              "cancel it, or give another --name (name=...).")
        _precheck(spec_json, resolved)
        run = _RUNS[name] = _Run(name, str(resolved))
    if _PLUGIN not in dask_scheduler.plugins:
        dask_scheduler.add_plugin(_stop_runs_first(), name=_PLUGIN, idempotent=True)
    address, security = dask_scheduler.address, _client_security(dask_scheduler.security)
    threading.Thread(target=_coordinate, args=(run, spec_json, address, security), name=f"dask-train-{name}",
                     daemon=True).start()
    return run.summary()


def _precheck(spec_json: dict[str, Any], run_dir: Path) -> None:
    """Refuse now what the sweep's own start would: its run directory held by another run (a foreground
    sweep), not one this machine can make, or holding another sweep of its name."""
    import sqlite3

    from .errors import ConfigError
    from .run_dirs import exclusive_run
    from .store import RunStore
    from .sweep_spec import NOT_FINGERPRINTED, fingerprint_of

    name = str(spec_json["name"])  # the spec as the client validated it: no workload imported on this event loop
    with exclusive_run(run_dir, f"run of sweep '{name}'", "choose another --name (name=...)"):
        path = run_dir / "store.sqlite"
        if path.is_file():
            try:
                with RunStore(path) as store:
                    store.check_sweep(name, fingerprint_of(spec_json), dict(spec_json), NOT_FINGERPRINTED,
                                      afresh="run it in the foreground with --new (new=True; not with --detach)")
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"{str(path)!r} is not a dask-train run store ({exc}): choose another --name "
                                  "(name=...).") from None


#: How long a closing cluster gives its detached sweeps to stop as a cancel stops them (record, free), and
#: then their followers (those that asked in as many seconds) to read how they ended.
STOP_GRACE, _TELL_FOLLOWERS = 60.0, 10.0


def stop_all(grace: float = STOP_GRACE, give_up: Callable[[], bool] = lambda: False) -> list[_Run]:
    """Stop every detached sweep running in this process (the scheduler's) as :func:`cancel` does, and wait up
    to ``grace`` seconds for them to record it: before its scheduler closes, so that their trials are recorded
    as cancelled, with their epochs and checkpoints kept for the resuming rerun, not failed by its close.
    ``give_up()`` true ends the wait early. The runs that were running."""
    with _LOCK:
        running = [run for run in _RUNS.values() if run.state == "running"]
    for run in running:
        run.stop.set()
    deadline = time.monotonic() + grace
    for run in running:  # ``give_up`` (a second Ctrl-C): stop waiting for them
        while not run.done.wait(0.1) and time.monotonic() < deadline and not give_up():
            pass
    # Followers (`attach`) polling now get the end before the scheduler goes (they said "lost the scheduler").
    told = min(time.monotonic() + _TELL_FOLLOWERS, deadline)
    for run in running:
        while (run.followed > time.monotonic() - _TELL_FOLLOWERS and run.read < run.seq
               and time.monotonic() < told and not give_up()):
            time.sleep(_POLL / 4)
    return running


def stopped_line(run: _Run) -> str:
    """What became of a detached sweep its cluster stopped (see :func:`stop_all`), in one line."""
    if run.state == "cancelled":
        return (f"Detached sweep '{run.name}' cancelled: {run.run_dir} keeps its finished trials and checkpoints; "
                "submitting it again resumes it.")
    return f"Detached sweep '{run.name}' {run.state}" + (f": {run.error}" if run.error else ".")


def _stop_runs_first() -> Any:
    """A scheduler plugin: a scheduler closing any other way than `dask-train cluster up`'s (which calls
    :func:`stop_all` itself while its workers are still there) stops its detached sweeps first too."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class StopRunsFirst(SchedulerPlugin):
        name = _PLUGIN

        async def before_close(self) -> None:
            import asyncio

            for run in await asyncio.get_running_loop().run_in_executor(None, stop_all):
                log.warning("The scheduler is closing. %s", stopped_line(run))

    return StopRunsFirst()


_PLUGIN = "dask-train-detached-sweeps"


def runs(dask_scheduler: Any = None) -> list[dict[str, Any]]:
    """Every detached sweep this scheduler has run, oldest first."""
    with _LOCK:
        return [run.summary() for run in sorted(_RUNS.values(), key=lambda r: r.started)]


def progress_since(name: str, seq: int, dask_scheduler: Any = None) -> dict[str, Any]:
    """Run ``name``'s progress hook calls after ``seq`` and its state (``None`` for an unknown run)."""
    run = _RUNS.get(name)
    if run is None:
        return {"run": None}
    with run.lock:
        entries = [e for e in run.entries if e[0] > seq][:5_000]
        if seq <= run.seq:  # a follower's ask (a status asks from past the end)
            run.read, run.followed = max(run.read, entries[-1][0] if entries else seq), time.monotonic()
    return {"run": run.summary(), "entries": entries}


def cancel(name: str, dask_scheduler: Any = None) -> bool:
    """Ask run ``name`` to stop as Ctrl-C stops a foreground sweep (cancel, record, free the workers)."""
    run = _RUNS.get(name)
    if run is None or run.state != "running":
        return False
    run.stop.set()
    return True


def _client_security(security: Any) -> Any:
    """The scheduler's own TLS material, as a client's (dask-train uses one certificate for every party)."""
    if security is None or not getattr(security, "require_encryption", False):
        return None
    from distributed.security import Security

    return Security(tls_ca_file=security.tls_ca_file, tls_client_cert=security.tls_scheduler_cert,
                    tls_client_key=security.tls_scheduler_key, require_encryption=True)


def _coordinate(run: _Run, spec_json: dict[str, Any], address: str, security: Any) -> None:
    """The sweep's thread: a client of this scheduler runs the coordinator, recording progress."""
    from distributed import Client

    from .errors import Interrupted
    from .sweep import _run
    from .sweep_spec import SweepSpec

    try:
        spec = SweepSpec.create(**{**spec_json, "runs_dir": str(Path(run.run_dir).parent)})
        with Client(address, security=security, timeout=60, set_as_default=False) as client, client.as_current():
            result = _run(spec, client, cast("SweepProgress", _Recorder(run)), stop=run.stop)
        run.state = "finished"
        run.add("rows", [row.to_dict() for row in result.trials], time.time() - run.started)
    except Interrupted as stopped:
        run.state, run.error = "cancelled", stopped.summary
    except BaseException as exc:  # recorded for `dask-train runs` and attachers, never raised into the scheduler
        log.exception("Detached sweep %s failed", run.name)
        run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
    run.ended = time.time()
    run.add("end", run.state, run.error)
    run.done.set()


class _Recorder:
    """The coordinator's progress hooks, recorded as plain data for :func:`progress_since`."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        self.run.add("start", spec.to_json(), total, todo, dashboard)

    def on_page(self, url: str | None) -> None:
        self.run.add("page", url)

    def on_trial_start(self, number: int, worker: str) -> None:
        self.run.add("trial_start", number, worker)

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        self.run.add("epoch", number, record)

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        self.run.add("trial_end", row.to_dict(), {s.value: n for s, n in counts.items()},
                     best.to_dict() if best is not None else None)


# ------------------------------------------------------------------------------------------ the client's side
_POLL = 0.5  # seconds between looks at a followed run's progress


@dataclass(frozen=True)
class DetachedSweep:
    """A sweep running inside the cluster's scheduler (:meth:`training.Sweep.submit`): follow it, wait for
    it or cancel it from any client of the same cluster; killing the client that submitted it changes
    nothing."""

    client: Client
    name: str
    run_dir: str
    #: Its status as :meth:`follow` last saw it (empty before): what a Ctrl-C of the following says.
    seen: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def status(self) -> dict[str, Any]:
        """``name``, ``state`` (running, finished, cancelled, failed), ``run_dir``, ``started``, ``ended``,
        ``error``."""
        return _summary(self.client, self.name)

    def cancel(self) -> bool:
        """Stop it as Ctrl-C stops a foreground sweep; False where it was not running."""
        return bool(self.client.run_on_scheduler(cancel, self.name))

    def follow(self, progress: SweepProgress | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Replay its progress into ``progress`` (e.g. a :class:`training.progress.LiveSweep`) until it
        ends, from its start whenever you attach; its final status. ``timeout``: give up following
        (TimeoutError) after that many seconds; the sweep goes on."""
        seq, deadline, replay = 0, None if timeout is None else time.monotonic() + timeout, _Replay(progress)
        followed = None  # when the run followed started: a run of the same name submitted again starts later
        while True:
            answer = self.client.run_on_scheduler(progress_since, self.name, seq)
            if answer["run"] is None:
                raise ValueError(f"No detached sweep named '{self.name}' on this cluster (`dask-train runs`).")
            self.seen.update(answer["run"])  # its state as last seen (a Ctrl-C says it without asking again)
            followed = followed or answer["run"]["started"]
            if answer["run"]["started"] != followed:  # its numbering starts again: what follows seq never comes
                raise RunReplaced(f"Sweep '{self.name}' was submitted again while it was being followed: the run "
                                  "followed had ended. Attach again to follow the new run.")
            for entry_seq, hook, args in answer["entries"]:
                seq = entry_seq
                replay.apply(hook, args)
            if replay.ended is not None:  # its last entry: the summary sent with it is its final one
                return {**answer["run"], **_outcome(replay.result)}
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Sweep '{self.name}' still running after {timeout:g} s of following.")
            if not answer["entries"]:
                time.sleep(_POLL)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait (quietly) until it ends; its final status."""
        return self.follow(None, timeout)


def submit(client: Client, spec: SweepSpec) -> DetachedSweep:
    """Start ``spec`` as a detached sweep in ``client``'s scheduler (see :class:`DetachedSweep`); a
    :class:`~training.errors.ConfigError` for what the scheduler refuses (see :func:`start`)."""
    from .errors import ConfigError

    count = spec.num_trials if spec.search == "tpe" else len(spec.trials())
    summary = client.run_on_scheduler(start, spec.to_json(), str(spec.run_dir), count or 0)
    if "refused" in summary:
        raise ConfigError(str(summary["refused"]))
    return DetachedSweep(client, summary["name"], summary["run_dir"])


def attach(client: Client, name: str) -> DetachedSweep:
    """The handle of detached sweep ``name`` (ValueError where the cluster has none of that name)."""
    return DetachedSweep(client, name, _summary(client, name)["run_dir"])


def list_runs(client: Client) -> list[dict[str, Any]]:
    """The detached sweeps the cluster's scheduler has run (since it started), oldest first."""
    return list(client.run_on_scheduler(runs))


def _summary(client: Client, name: str) -> dict[str, Any]:
    answer = client.run_on_scheduler(progress_since, name, 10**18)
    if answer["run"] is None:
        raise ValueError(f"No detached sweep named '{name}' on this cluster (`dask-train runs` lists them).")
    return dict(answer["run"])


class _Replay:
    """Recorded progress hook calls, made again on a client's progress hooks."""

    def __init__(self, progress: SweepProgress | None) -> None:
        self.progress = progress
        self.spec: SweepSpec | None = None
        self.ended: tuple[str, str | None] | None = None
        self.result: SweepResult | None = None  # its table, once it ended

    def apply(self, hook: str, args: list[Any]) -> None:
        from .protocol import TrialRecord, TrialState
        from .sweep_spec import SweepSpec

        shown = self.progress
        if hook == "start":
            spec = self.spec = SweepSpec.create(**args[0])
            if shown is not None:
                shown.on_start(spec, *args[1:])
        elif hook == "end":
            self.ended = (args[0], args[1])
        elif hook == "rows" and self.spec is not None:
            self.result = _result(self.spec, [TrialRecord.from_dict(row) for row in args[0]])
            if callable(on_result := getattr(shown, "on_result", None)):
                on_result(self.result, args[1])  # the sweep's own wall time
        elif shown is not None and hook == "page":
            shown.on_page(args[0])
        elif shown is not None and hook == "trial_start":
            shown.on_trial_start(args[0], args[1])
        elif shown is not None and hook == "epoch":
            shown.on_epoch(args[0], args[1])
        elif shown is not None and hook == "trial_end":
            best = TrialRecord.from_dict(args[2]) if args[2] is not None else None
            counts = {TrialState(k): v for k, v in args[1].items()}
            shown.on_trial_end(TrialRecord.from_dict(args[0]), counts, best)


def _outcome(result: SweepResult | None) -> dict[str, Any]:
    """What a followed sweep's table says at its end (nothing where its table was not seen): its best trial
    (None: no trial completed) and its first failure."""
    if result is None:
        return {}
    failed = result.failed[0] if result.failed else None
    return {"best_trial": result.best_trial,
            "first_failure": f"trial {failed.number}: {failed.error_type}: {failed.error}" if failed else None}


def _result(spec: SweepSpec, rows: list[TrialRecord]) -> SweepResult:
    """The result as an attached client shows it: the table; the best model where this machine sees the run
    directory (it is on the scheduler's machine)."""
    from .sweep import SweepResult

    return SweepResult(spec, spec.run_dir, [r for r in rows if r.state.is_error], rows)
