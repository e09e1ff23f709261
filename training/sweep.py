"""Sweeps: the Python API (:class:`Sweep`), its progress hooks and its results.

A sweep runs its trials as Dask tasks, one per training slot (:mod:`training.coordinator`), records them
in the run directory's store, and returns a :class:`SweepResult`: the table, the best trial's model (its
best epoch) and the failures. Rerunning the same sweep finishes only the trials not yet finished.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import io
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import Target

from .errors import ConfigError, DaskTrainError
from .limits import one_line, short
from .protocol import TrialRecord, TrialState, best_trial
from .run_dirs import replace_file
from .sweep_spec import STALL_TIMEOUT, SweepSpec, check_new_sweep, finished_trials

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from .detached import DetachedSweep
    from .model_file import TrainedModel
    from .progress import LiveSweep

log = logging.getLogger(__name__)


class SweepProgress:
    """Hooks the coordinator calls; the CLI's display subclasses this."""

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        """Before submitting: ``todo`` of ``total`` trials will run now."""

    def on_page(self, url: str | None) -> None:
        """Right after on_start: the dashboard's Training page (None where the scheduler cannot serve it)."""

    def on_trial_start(self, number: int, worker: str) -> None:
        """A trial began on ``worker``."""

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        """A running trial finished an epoch."""

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        """A run of a trial ended (``row.state`` PROMOTED: only a stretch); ``counts`` by state and the best
        trial so far."""


class GuardedProgress(SweepProgress):
    """Progress hooks whose failure is their own: the first exception one raises is logged (which hook, what it
    raised) and no hook of theirs is called again, while the sweep goes on. A hook that raised (an MLflow
    server gone, a bug in a notebook's callback) stopped the sweep and left its trials running in the store.

    Examples
    --------
    >>> class Broken(SweepProgress):
    ...     def on_trial_start(self, number, worker):
    ...         raise ValueError("boom")
    >>> hooks = GuardedProgress(Broken())
    >>> hooks.on_trial_start(0, "cpu-0"); hooks.on_trial_start(1, "cpu-1")  # logged once, then not called
    >>> hooks.failed
    'Broken.on_trial_start raised ValueError: boom'
    """

    def __init__(self, hooks: SweepProgress) -> None:
        self.hooks = hooks
        self.failed: str | None = None  # what the hook that failed raised

    def _call(self, name: str, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            getattr(self.hooks, name)(*args)
        except Exception as exc:
            said = one_line(str(exc), 300)
            self.failed = f"{type(self.hooks).__name__}.{name} raised {type(exc).__name__}: {said}"
            log.warning("Progress hook %s; the sweep goes on without these hooks.", self.failed,
                        exc_info=log.isEnabledFor(logging.DEBUG))

    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        self._call("on_start", spec, total, todo, dashboard)

    def on_page(self, url: str | None) -> None:
        self._call("on_page", url)

    def on_trial_start(self, number: int, worker: str) -> None:
        self._call("on_trial_start", number, worker)

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        self._call("on_epoch", number, record)

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        self._call("on_trial_end", row, counts, best)


def guarded(hooks: SweepProgress) -> SweepProgress:
    """``hooks`` as a sweep calls them: a user's in a :class:`GuardedProgress`; dask-train's own live view
    (``own_errors``: its errors are bugs to see, not to hide behind a frozen view) and :func:`combine`'s fan-out
    (which guards each of its parts) as they are."""
    return hooks if getattr(hooks, "own_errors", False) else GuardedProgress(hooks)


@dataclass
class SweepResult:
    """What a sweep produced: the table, the best trial (its record and the model of its best epoch), the
    failures, and where it all is."""

    spec: SweepSpec
    run_dir: Path
    failed: list[TrialRecord] = field(default_factory=list)
    trials: list[TrialRecord] = field(default_factory=list)
    #: Whether this run ran any trial (False: every trial had finished before it, and nothing ran).
    ran: bool = True
    #: The report's plots being drawn in the background (None: drawn, or not part of this result).
    plotting: threading.Thread | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def best(self) -> TrainedModel | None:
        """The best trial's model (its best epoch), loaded from its model directory on first use: loading
        imports torch (a second or more), which a caller that only reads the table does not pay. None when
        no trial has a model, or its directory is not on this machine (a detached sweep's, elsewhere)."""
        from .model_file import load_model

        folder = self.best_dir
        if folder is None or not folder.is_dir():
            return None
        return load_model(folder, allow=(self.spec.workload,))  # the spec's: trusted

    @property
    def best_dir(self) -> Path | None:
        """Where the best trial's model directory is: in the run directory (None: no trial has a model, or
        its record names a folder outside the run directory, which dask-train never writes)."""
        chosen = best_trial(self.trials, self.spec.mode)
        if chosen is None or not chosen.model_dir:
            return None
        folder = self.run_dir / chosen.model_dir
        return folder if folder.resolve().is_relative_to(self.run_dir.resolve()) else None

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """One row per trial (as in ``results.csv``), built on first use: pandas takes most of a second to
        import, which a sweep whose caller never looks at the table does not pay."""
        return results_table(self.trials, self.spec)

    def wait_for_report(self, timeout: float = 120.0) -> Path:
        """The report folder (``summary.md``, ``curves.png``, ``params.png``) once its plots are drawn: the
        sweep returns as soon as its results are saved and draws them on a background thread. TimeoutError
        after ``timeout`` seconds; a :class:`~training.errors.DaskTrainError` saying why where the plots could
        not be drawn (e.g. the run directory was removed)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < 1e9:
            raise ConfigError(f"timeout={short(timeout)}: give a number of seconds >= 0.")
        if self.plotting is not None:
            self.plotting.join(timeout)
            if self.plotting.is_alive():
                raise TimeoutError(f"The report of {self.run_dir} was still being drawn after {timeout:g}s.")
            failed = getattr(self.plotting, "failed", None)
            if failed:
                raise DaskTrainError(failed)
        return self.run_dir / "report"

    @property
    def best_trial(self) -> int | None:
        """The best trial's number (the best best-epoch value among completed and pruned trials)."""
        chosen = best_trial(self.trials, self.spec.mode)
        return None if chosen is None else chosen.number


class Sweep:
    """A hyperparameter sweep over one workload.

    Parameters
    ----------
    workload : str
        Built-in name or ``package.module:Class``.
    space : mapping
        Hyperparameters to search: lists (grid values), ``choice``, ``uniform``, ``loguniform``, ``randint``.
    params : mapping, optional
        Fixed hyperparameters for every trial.
    search : {"grid", "random", "tpe"}
    num_trials : int, optional
        Random and TPE search: how many trials.
    metric, mode : str, optional
        What "best" means (default: the workload's metric and direction).
    scheduler, grace_epochs, reduction_factor
        ``scheduler="asha"`` stops poor trials early at rungs of grace_epochs * reduction_factor**k epochs.
    epochs, seed, max_concurrent, name, runs_dir
        Epochs per trial (the maximum with ASHA); the seed of sampling, data split and initial weights;
        how many trials may run at once (default: every trial, one per slot at a time); the run's name and
        parent folder.
    trial_timeout, stall_timeout : float, optional
        Seconds a trial may run, and may go without finishing an epoch (default 3600; None: no limit),
        before it is stopped as ``timed_out`` and its worker restarted; the sweep goes on.
    checkpoint_every : int
        A running trial keeps a resume checkpoint every this many epochs (default 1): a trial whose worker
        is lost, or whose client is killed, continues from it.
    precision : {"fp32", "bf16", "fp16"}
        Mixed precision of every trial (fp16: GPU workers only; see :mod:`training.precision`).

    Examples
    --------
    >>> from training.space import choice
    >>> sweep = Sweep("xor", {"lr": choice([0.05, 0.2])}, epochs=2, name="doc")
    >>> len(sweep.spec.trials())
    2
    >>> result = sweep.run(client)  # doctest: +SKIP
    """

    def __init__(self, workload: str, space: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                 search: str = "grid", num_trials: int | None = None, metric: str | None = None,
                 mode: str | None = None, epochs: int | None = None, seed: int = 0,
                 max_concurrent: int | None = None, name: str | None = None, runs_dir: str = "runs",
                 scheduler: str | None = None, grace_epochs: int = 1, reduction_factor: int = 3,
                 trial_timeout: float | None = None, stall_timeout: float | None = STALL_TIMEOUT,
                 checkpoint_every: int = 1, precision: str = "fp32") -> None:
        self.spec = SweepSpec.create(name=name, workload=workload, space=space, params=params, search=search,
                                     num_trials=num_trials, metric=metric, mode=mode, epochs=epochs, seed=seed,
                                     max_concurrent=max_concurrent, runs_dir=runs_dir, scheduler=scheduler,
                                     grace_epochs=grace_epochs, reduction_factor=reduction_factor,
                                     trial_timeout=trial_timeout, stall_timeout=stall_timeout,
                                     checkpoint_every=checkpoint_every, precision=precision)
        set_apart = {"grace_epochs": grace_epochs != 1, "reduction_factor": reduction_factor != 3}  # from defaults
        check_new_sweep(self.spec, [option for option, given in set_apart.items() if given])

    @classmethod
    def from_spec(cls, spec: SweepSpec) -> Sweep:
        """The sweep of an already validated spec (a sweep file's)."""
        sweep = cls.__new__(cls)
        sweep.spec = spec
        return sweep

    def run(self, client: Client | None = None, *, progress: SweepProgress | bool | None = None,
            new: bool = False, target: Target | None = None, stop: threading.Event | None = None) -> SweepResult:
        """Run the trials not yet finished and return the results.

        Without ``client``, the sweep runs on ``target`` (default: an embedded local cluster started for it
        and closed after). ``progress``: by default (None or True) a live view is printed (the dashboard and
        Training page URLs, the running trials with their latest epoch, counts by state, the best so far,
        and the final table; :class:`training.progress.LiveSweep`); False prints nothing; or your own
        :class:`SweepProgress` hooks. ``stop``: once set (from another thread), the sweep stops as at Ctrl-C
        (its running trials cancelled and recorded, their workers freed) and raises
        :class:`~training.errors.Interrupted`.
        """
        from cluster import check_client

        check_client(client)
        if target is not None and not isinstance(target, Target):
            raise ConfigError(f"target={short(target)}: give a cluster.Target (e.g. "
                              "Target(address='tcp://HOST:8786')), or pass client=.")
        if not isinstance(new, bool):
            raise ConfigError(f"new={short(new)}: give True (set the previous run aside and start afresh) or "
                              "False.")
        if stop is not None and not isinstance(stop, threading.Event):
            raise ConfigError(f"stop={short(stop)}: give a threading.Event (set it to stop the sweep), or None.")
        view = _default_view(progress)
        hooks = view or (guarded(progress) if isinstance(progress, SweepProgress) else SweepProgress())
        started = time.perf_counter()
        with view or contextlib.nullcontext():
            result = self._run_on(client, hooks, new, target, stop)
            if view is not None:
                view.on_result(result, time.perf_counter() - started)
        return result

    def submit(self, client: Client) -> DetachedSweep:
        """Start the sweep detached, inside ``client``'s scheduler, and return its handle at once: the
        sweep goes on if this process ends. ``handle.follow(LiveSweep())`` shows its progress,
        ``handle.wait()`` waits, ``handle.cancel()`` stops it; :func:`training.detached.attach` finds it
        again from another process. Its run directory is on the scheduler's machine."""
        from cluster import check_client

        from .detached import submit
        from .params import check_data_paths
        from .workloads import get_workload

        check_client(client)

        check_data_paths(get_workload(self.spec.workload).params, self.spec.trials() or [dict(self.spec.params)],
                         here=False)
        return submit(client, self.spec)

    def _run_on(self, client: Client | None, progress: SweepProgress, new: bool,
                target: Target | None, stop: threading.Event | None) -> SweepResult:
        from .params import check_data_paths
        from .run_dirs import SWEEP_MARKERS, check_run_dir, set_aside
        from .workloads import get_workload

        if new and (aside := set_aside(self.spec.run_dir, f"run of sweep '{self.spec.name}'")):
            log.warning("Moved the previous run %s to %s", self.spec.run_dir, aside)
        check_run_dir(self.spec.run_dir, SWEEP_MARKERS)  # before any cluster starts
        check_data_paths(get_workload(self.spec.workload).params, self.spec.trials() or [dict(self.spec.params)],
                         here=client is None and (target is None or target.embedded))
        if client is not None:
            return _run(self.spec, client, progress, stop)
        finished = finished_trials(self.spec)
        if finished is not None:  # a rerun with nothing left to run: no cluster is started for it
            return _finished_run(self.spec, finished, progress)
        from cluster import open_client

        target = dataclasses.replace(target or Target(), preload=_preload(self.spec))
        with open_client(target) as own:
            result = _run(self.spec, own, progress, stop, draw=False)
        result.plotting = _start_drawing(self.spec.run_dir)  # once the cluster is closed: see _draw
        return result


def _preload(spec: SweepSpec) -> tuple[str, ...]:
    """What the workers of a cluster started for this sweep import while it starts: the trial runner (with
    the built-in workloads) and the module of the sweep's own workload, which the user named."""
    module = spec.workload.partition(":")[0] if ":" in spec.workload else None
    return ("training.trial", "training.loop", *([module] if module else []))


def _default_view(progress: SweepProgress | bool | None) -> LiveSweep | None:
    """The live view ``Sweep.run`` prints by default; None where the caller chose (False, or own hooks)."""
    if not (progress is None or isinstance(progress, bool | SweepProgress)):
        raise ConfigError(f"progress={short(progress)}: give True (the live view), False (nothing) or your own "
                          "hooks (a training.SweepProgress).")
    if progress is None or progress is True:
        from .progress import LiveSweep

        return LiveSweep()
    return None


def _run(spec: SweepSpec, client: Client, progress: SweepProgress,
         stop: threading.Event | None = None, draw: bool = True) -> SweepResult:
    """Run the sweep on ``client`` and write its report; ``stop`` set: stop as Ctrl-C does (a detached
    sweep's cancel); ``draw``: start drawing the report's plots (else the caller does)."""
    from .coordinator import Coordinator
    from .run_dirs import exclusive_run
    from .store import RunStore

    with exclusive_run(spec.run_dir, f"run of sweep '{spec.name}'", "choose another --name (name=...)"), \
            RunStore(spec.run_dir / "store.sqlite") as store:
        coordinator = Coordinator(spec, client, progress, stop=stop)
        rows = coordinator.run(store)
    result = dataclasses.replace(result_of(spec, rows), ran=coordinator.ran)
    if _write_summary(spec, rows) and draw:
        result.plotting = _start_drawing(spec.run_dir)
    return result


def _finished_run(spec: SweepSpec, rows: list[TrialRecord], progress: SweepProgress) -> SweepResult:
    """The result of a sweep whose trials had all finished before this run: its table and report again. Its
    spec is recorded as this run's (a free field, e.g. a timeout, may have changed)."""
    from .store import RunStore
    from .sweep_spec import write_spec_file

    with RunStore(spec.run_dir / "store.sqlite") as store:
        store.record_spec(spec.to_json())
    write_spec_file(spec)
    progress.on_start(spec, len(rows), 0, None)
    result = dataclasses.replace(result_of(spec, rows), ran=False)
    if _write_summary(spec, rows):
        result.plotting = _start_drawing(spec.run_dir)
    return result


def _write_summary(spec: SweepSpec, rows: list[TrialRecord]) -> bool:
    """The report's summary.md, from the sweep's own spec and records (not read back: a 10,000-trial run's
    sweep.yaml and store take half a second); whether it was written. Results are already saved, so a
    report failure is logged, not raised."""
    from .report import RunSummary, write_report

    run_dir = spec.run_dir
    try:
        write_report(RunSummary(run_dir, spec.to_json(), rows, {}), plots=False)
        return True
    except Exception:
        log.exception("Could not write the report of %s; `dask-train results %s --plot` retries", run_dir, run_dir)
        return False


def _start_drawing(run_dir: Path) -> threading.Thread:
    """The report's plots (matplotlib: a second or more) on a thread of their own, off the sweep's critical
    path. Not a daemon: a script that ends right after the sweep still gets its plots."""
    thread = _Drawing(run_dir)
    thread.start()
    return thread


class _Drawing(threading.Thread):
    """Draws a report's plots; ``failed`` says why it could not (None: drawn, or still drawing)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(name=f"dask-train-report-{run_dir.name}")
        self.run_dir = run_dir
        self.failed: str | None = None

    def run(self) -> None:
        self.failed = _draw(self.run_dir)


_DRAW_ATTEMPTS = 3


def _draw(run_dir: Path) -> str | None:
    """Draw a report's plots (on the sweep's background thread); a failure is logged, and said (None: drawn).

    A Dask server closing in this process (a cluster closed right after its sweep) takes its folder out of
    ``sys.path``. Meanwhile this thread imports matplotlib, and CPython's import walks ``sys.path`` in place:
    an entry removed under it makes the walk skip the next one, so a module that is installed is "not found"
    (CI saw a ``ModuleNotFoundError`` for ``fontTools``). Drawing again, after forgetting the half-imported
    modules, finds it; each closing server can fail one attempt. A cluster started for the sweep is closed
    before its plots are drawn."""
    from .report import read_run, write_plots

    for attempt in range(1, _DRAW_ATTEMPTS + 1):
        try:
            write_plots(read_run(run_dir))
            return None
        except Exception as exc:
            if isinstance(exc, ModuleNotFoundError) and attempt < _DRAW_ATTEMPTS:
                _forget_orphaned_modules()
                continue
            log.exception("Could not draw the plots of %s; `dask-train results %s --plot` retries", run_dir,
                          run_dir)
            return (f"Could not draw the plots of {run_dir} ({type(exc).__name__}: {one_line(str(exc), 300)}); "
                    f"`dask-train results {run_dir} --plot` draws them again.")
    return None


def _forget_orphaned_modules() -> None:
    """Drop the modules left in ``sys.modules`` by a failed import whose package was dropped: e.g.
    ``matplotlib.colors`` once ``matplotlib/__init__`` failed, which still points at the broken package and
    would fail the next import of matplotlib too."""
    while orphans := [name for name in list(sys.modules)  # a copy: other threads may import meanwhile
                      if "." in name and name.rpartition(".")[0] not in sys.modules]:
        for name in orphans:
            sys.modules.pop(name, None)


def result_of(spec: SweepSpec, rows: list[TrialRecord], run_dir: Path | None = None,
              write: bool = True) -> SweepResult:
    """The result of a sweep from its trial records; writes ``results.csv`` in ``run_dir`` (default: the
    spec's), the only place it writes (``write``: False, nowhere)."""
    run_dir = Path(run_dir or spec.run_dir)
    if write:
        write_results_csv(run_dir / "results.csv", rows, spec)
    return SweepResult(spec, run_dir, [r for r in rows if r.state.is_error], rows)


def _records(rows: list[TrialRecord], spec: SweepSpec) -> list[dict[str, Any]]:
    """The results table's rows: number, state, searched params, final and best metric and the best
    epoch, epochs, seconds, worker, starts, start and end (seconds since the epoch), error type."""
    metric, best = spec.metric, best_trial(rows, spec.mode)
    return [{
        "trial": r.number, "state": r.state.value, **{name: r.params.get(name) for name in spec.space},
        f"final_{metric}": r.metrics.get(metric), f"best_{metric}": r.best, "best_epoch": r.best_epoch,
        "best": best is not None and r.number == best.number, "epochs": r.epochs, "seconds": r.seconds,
        "worker": r.worker, "starts": r.starts, "started": r.started, "finished": r.finished,
        "error": r.error_type,
    } for r in rows]


def results_table(rows: list[TrialRecord], spec: SweepSpec) -> pd.DataFrame:
    """One row per trial (see :func:`_records`), with start and end as UTC timestamps."""
    import pandas as pd

    table = pd.DataFrame.from_records(_records(rows, spec))
    for column in ("started", "finished"):
        table[column] = pd.to_datetime(table[column], unit="s", utc=True)
    return table


def write_results_csv(path: Path, rows: list[TrialRecord], spec: SweepSpec) -> None:
    """``results.csv``: the table's rows, start and end in ISO 8601 UTC, empty cells for missing values.

    Examples
    --------
    >>> import tempfile
    >>> spec = SweepSpec.create(workload="xor", space={"lr": [0.1]})
    >>> row = TrialRecord(number=0, state=TrialState.COMPLETED, params={"lr": 0.1}, best=0.25, started=0.0)
    >>> path = Path(tempfile.mkdtemp()) / "results.csv"
    >>> write_results_csv(path, [row], spec)
    >>> path.read_text().splitlines()[1]
    '0,completed,0.1,,0.25,,True,0,,,0,1970-01-01 00:00:00+00:00,,'
    """
    records = _records(rows, spec)
    columns = list(records[0]) if records else ["trial", "state", *spec.space]
    for record in records:
        for column in ("started", "finished"):
            when = record[column]
            record[column] = "" if when is None else _utc(when)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    replace_file(path, text.getvalue().encode("utf-8"))


def _utc(seconds: float) -> str:
    """``seconds`` since the epoch as pandas writes a UTC timestamp (microseconds when not whole)."""
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return when.isoformat(sep=" ")
