"""Live progress of a sweep, for the terminal, Jupyter and logs: what Ray Tune and Optuna users expect.

:class:`LiveSweep` is the default progress of ``Sweep.run()`` and the CLI's view. It prints the dashboard
and Training page URLs, one line per trial start and end (in the order they happened on each worker), and
keeps a live area under them: one row per running trial (worker, epoch n/N, latest metrics), the counts by
state, the best trial so far, and a bar over every trial's epochs that moves as epochs finish. Where the
output is no terminal (a log file, a captured stream) the live area is not drawn; each epoch is printed as
a line instead. Rich renders both, and renders the live area in Jupyter as an updating cell output (with
ipywidgets installed; without it, Jupyter gets the lines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .limits import printable
from .protocol import TrialRecord, TrialState
from .results_view import compact, duration, span
from .shown import cell, plain_console
from .sweep import SweepProgress

if TYPE_CHECKING:
    from .sweep import SweepResult
    from .sweep_spec import SweepSpec

#: Lines above the live area are printed together at most this often: each print redraws the whole area
#: (about 4 ms), which at two lines a trial cost a sweep of short trials more than its trials' own overhead.
_PRINT_EVERY = 0.25
_SKIP = frozenset({"epoch", "seconds", "samples_per_s", "lr", "time"})  # not shown as a running trial's metrics


@dataclass
class _Running:
    """A trial between its start and its end, as the live table shows it."""

    number: int
    worker: str
    started: float
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


class SweepState:
    """What the live view knows: running trials, counts by state, epochs done, the best trial so far.

    Examples
    --------
    >>> state = SweepState(total=2, epochs=3, finished=0)
    >>> state.started(0, "cpu-0"), state.epoch(0, {"epoch": 1, "val_loss": 0.5})
    (True, None)
    >>> state.epochs_done, state.counts()[TrialState.RUNNING], state.counts()[TrialState.PENDING]
    (1, 1, 1)
    """

    def __init__(self, total: int, epochs: int, finished: int) -> None:
        self.total, self.epochs = total, epochs
        self.running: dict[int, _Running] = {}
        self.ended: dict[TrialState, int] = {}
        self.already = finished
        self.epochs_done = finished * epochs
        self.best: TrialRecord | None = None

    def started(self, number: int, worker: str) -> bool:
        """Record a start; False when the trial was already running (a new ASHA stretch, or a retry)."""
        known = self.running.get(number)
        self.running[number] = _Running(number, worker, time.monotonic(), *(
            (known.epoch, known.metrics) if known else ()))
        return known is None

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        trial = self.running.get(number)
        if trial is None:  # its start event trails its first epoch: it still runs
            trial = self.running[number] = _Running(number, str(record.get("worker", "")), time.monotonic())
        trial.epoch = int(record.get("epoch", trial.epoch + 1))
        trial.metrics = {k: v for k, v in record.items() if k not in _SKIP}
        self.epochs_done += 1

    def trial_ended(self, row: TrialRecord, best: TrialRecord | None) -> None:
        self.best = best
        if row.state == TrialState.PROMOTED:
            return
        self.running.pop(row.number, None)
        self.ended[row.state] = self.ended.get(row.state, 0) + 1
        self.epochs_done += max(0, self.epochs - (row.epochs or 0))  # pruned or failed early: skipped epochs

    def counts(self) -> dict[TrialState, int]:
        """Counts by state: running from the starts seen, finished from the ends seen, the rest pending."""
        finished = self.already + sum(self.ended.values())
        counts = {TrialState.RUNNING: len(self.running), **self.ended}
        counts[TrialState.PENDING] = max(0, self.total - finished - len(self.running))
        return counts

    def worker_busy(self, worker: str) -> bool:
        return any(t.worker == worker for t in self.running.values())


class LiveSweep(SweepProgress):
    """The live view of a sweep (a context manager); ``console`` defaults to a new rich Console.

    Examples
    --------
    >>> with LiveSweep() as shown:  # doctest: +SKIP
    ...     Sweep("xor", {"lr": [0.05, 0.2]}, epochs=2).run(client, progress=shown)
    """

    own_errors = True  # dask-train's own: an error in it is a bug to see (see training.sweep.guarded)

    def __init__(self, console: Console | None = None, afresh: str = "new=True") -> None:
        self.console = console or plain_console()
        self.afresh = afresh  # how this caller starts a sweep afresh (the CLI: --new)
        # Rich draws a live area in Jupyter through ipywidgets; without it (it warns at every refresh) the
        # view prints lines, as it does into a log.
        self.live = self.console.is_terminal or (self.console.is_jupyter and _has_ipywidgets())
        self.state = SweepState(0, 1, 0)
        self.task: Any = None
        self.progress = _Board(self, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("epochs"), TimeElapsedColumn(), console=self.console, transient=True)
        self.metric, self.mode = "val_loss", "min"
        self._waiting: dict[str, list[int]] = {}  # starts on a worker whose last trial has not ended
        self._lines: list[str] = []  # lines for above the live area, printed together (see print)
        self._printed = 0.0  # when they last were (time.monotonic)
        self._printer: threading.Timer | None = None  # prints the lines held back, once due
        self._print_lock = threading.Lock()
        self._shown = False  # inside ``with``: lines may be held back (see print)

    def __enter__(self) -> LiveSweep:
        if self.live:
            self.progress.start()
        self._shown = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._print_held()
        self._shown = False
        if self.live:  # rich prints an empty line as a Progress that never started stops
            self.progress.stop()

    # --------------------------------------------------------------------------------------- the hooks
    def on_start(self, spec: SweepSpec, total: int, todo: int, dashboard: str | None) -> None:
        self.metric, self.mode, finished = spec.metric or self.metric, spec.mode or self.mode, total - todo
        self.state = SweepState(total, spec.epochs, finished)
        self.print(f"Sweep '{spec.name}': {total} trials of {spec.workload} ({spec.search} search), "
                   f"{spec.epochs} epochs each. Run directory: {spec.run_dir}", at_once=True)
        if finished and todo:
            self.print(f"Reusing the earlier run in {spec.run_dir}: {finished} already finished, {todo} of "
                       f"{total} trials to run ({self.afresh} starts afresh).", at_once=True)
        elif finished:
            self.print(f"Nothing to run: all {total} trials in {spec.run_dir} already finished ({self.afresh} "
                       "starts afresh).", at_once=True)
        if dashboard or todo:  # none and nothing to run: no cluster was started for it
            self.print(f"Dashboard: {dashboard or 'not available on this scheduler'}", at_once=True)
        self.task = self.progress.add_task(self._description(), total=total * spec.epochs,
                                           completed=self.state.epochs_done)

    def on_page(self, url: str | None) -> None:
        self.print(f"Training page: {url or 'not available on this scheduler'}", at_once=True)

    def on_trial_start(self, number: int, worker: str) -> None:
        if self.state.worker_busy(worker) and number not in self.state.running:
            self._waiting.setdefault(worker, []).append(number)  # shown after that worker's trial ends
            return
        self._start(number, worker)

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        self._start_parked(number)
        self.state.epoch(number, record)
        if not self.live:
            trial = self.state.running[number]
            self.print(f"  trial {number:04d} {trial.worker} epoch {trial.epoch}/{self.state.epochs} "
                       + _metrics_text(trial.metrics, self.metric))
        self._update()

    def on_trial_end(self, row: TrialRecord, counts: dict[TrialState, int], best: TrialRecord | None) -> None:
        self._start_parked(row.number)
        self.state.trial_ended(row, best)
        shown = (f"best {self.metric}={compact(row.best)} (epoch {row.best_epoch})" if row.best is not None
                 else row.error_type or "")
        state = f"promoted at epoch {row.epochs}" if row.state == TrialState.PROMOTED else row.state.value
        where = f" on {row.worker}" if row.worker else ""  # none: it never started (e.g. its worker kept dying)
        self.print(f"  trial {row.number:04d} {state} {shown} ({duration(row.seconds)}{where})")
        self._start_waiting()
        self._update()

    def on_result(self, result: SweepResult, wall_seconds: float) -> None:
        """The final table (the Python API's default progress prints it; the CLI prints its own)."""
        from .results_view import results_table

        self._print_held()
        if self.live:
            self.progress.stop()
        # The title on a line of its own: as the table's, it wrapped mid-sentence at the table's width.
        self.console.print(_result_title(result, wall_seconds), soft_wrap=True, highlight=False, markup=False,
                           emoji=False)
        self.console.print(results_table(result.trials, result.spec.space, self.metric, self.mode,
                                         width=self.console.width))

    # ------------------------------------------------------------------------------------------ drawing
    def print(self, line: str, at_once: bool = False) -> None:
        """A line above the live area (or in the log). Inside ``with``, lines that come within
        :data:`_PRINT_EVERY` of the last print are held back and printed together when it has passed, so
        a burst of starts and ends redraws the live area once (and is one write to a log). ``at_once``: the
        sweep's header (what it is, its URLs), printed now without counting as the last print, so the first
        trial lines a moment later are not held back behind it."""
        line = printable(line)  # on a console the caller made too
        if not self._shown:
            self.console.print(line, soft_wrap=not self.live, highlight=False, markup=False, emoji=False)
            return
        with self._print_lock:
            self._lines.append(line)
            if self._printer is not None:
                return  # printed with the others held back, when the timer fires
            due = self._printed + _PRINT_EVERY - time.monotonic()
            if at_once or due <= 0:
                printed = self._printed
                self._print_lines()
                if at_once:
                    self._printed = printed
                return
            self._printer = threading.Timer(due, self._print_held)
            self._printer.daemon = True
            self._printer.start()

    def _print_held(self) -> None:
        """Print the lines held back now (at the timer, or as the live area stops)."""
        with self._print_lock:
            if self._printer is not None:
                self._printer.cancel()  # a no-op when it is the timer that runs this
                self._printer = None
            self._print_lines()

    def _print_lines(self) -> None:
        if self._lines:
            self.console.print("\n".join(self._lines), soft_wrap=not self.live, highlight=False, markup=False,
                               emoji=False)
            self._lines = []
        self._printed = time.monotonic()

    def running_table(self) -> Table:
        """One row per running trial: number, worker, epoch n/N, its latest metrics, time since start."""
        table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
        for header in ("trial", "worker", "epoch", "metrics", "time"):
            table.add_column(header, overflow="fold", no_wrap=header != "metrics")
        now = time.monotonic()
        for trial in sorted(self.state.running.values(), key=lambda t: t.number):
            metrics = _metrics_text(trial.metrics, self.metric)
            shown = (cell(trial.worker), f"{trial.epoch}/{self.state.epochs}", cell(metrics))
            table.add_row(f"{trial.number:04d}", *shown, duration(now - trial.started))
        return table

    def status_line(self) -> str:
        if self.task is None:
            return "Waiting for the cluster's workers..."
        counts = self.state.counts()
        parts = [f"{n} {state.value}" for state, n in sorted(counts.items(), key=lambda i: _ORDER.index(i[0]))
                 if n or state in (TrialState.RUNNING, TrialState.PENDING)]
        best = self.state.best
        if best is not None:
            parts.append(f"best: trial {best.number:04d} {self.metric}={compact(best.best)}")
        return "trials: " + ", ".join(parts)

    def _start(self, number: int, worker: str) -> None:
        if self.state.started(number, worker):
            self.print(f"  trial {number:04d} started on {worker}")
        self._start_waiting()
        self._update()

    def _start_parked(self, number: int) -> None:
        """A trial whose start was held back sends an epoch or ends before its worker's trial ended (that
        one's end is known only when their task ends, e.g. a failed trial's): start it now, never after."""
        for worker, numbers in list(self._waiting.items()):
            if number in numbers:
                numbers.remove(number)
                if not numbers:
                    del self._waiting[worker]
                self._start(number, worker)
                return

    def _start_waiting(self) -> None:
        """Show the starts held back for workers now free (their trial ended, or moved after a worker loss)."""
        for worker in [w for w in self._waiting if not self.state.worker_busy(w)]:
            for number in self._waiting.pop(worker):
                self._start(number, worker)

    def _description(self) -> str:
        return "sweep"

    def _update(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.state.epochs_done)


_ORDER = [TrialState.RUNNING, TrialState.PENDING, TrialState.QUEUED, TrialState.PROMOTED, TrialState.COMPLETED,
          TrialState.PRUNED, TrialState.FAILED, TrialState.DIVERGED, TrialState.TIMED_OUT, TrialState.CANCELLED]


class _Board(Progress):
    """rich's Progress with the running trials and the counts above the bar."""

    def __init__(self, view: LiveSweep, *columns: Any, **kwargs: Any) -> None:
        self.view = view  # before Progress starts asking for renderables
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        parts: list[RenderableType] = []
        if self.view.state.running:
            parts.append(self.view.running_table())
        parts += [self.view.status_line(), self.make_tasks_table(self.tasks)]
        yield Group(*parts)


def _has_ipywidgets() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def _metrics_text(metrics: dict[str, Any], metric: str) -> str:
    """``val_loss=0.51 train_loss=0.62 ...``: the sweep's metric first."""
    ordered = sorted(metrics, key=lambda k: (k != metric, k != "train_loss", k))
    return " ".join(f"{k}={compact(metrics[k])}" for k in ordered if k not in ("trial", "rank", "worker"))


def _result_title(result: SweepResult, wall_seconds: float) -> str:
    """The final table's title: this run's wall time, or where it ran nothing, the sweep's over its runs."""
    trial_time = sum(t.seconds or 0 for t in result.trials)
    took = f"wall time {duration(wall_seconds)}" if result.ran else \
        f"first start to last finish {duration(span(result.trials)) or 'unknown'}"
    return (f"Sweep '{result.spec.name}': {took}, trial time summed {duration(trial_time)}. "
            f"{result.run_dir / 'results.csv'}, report in {result.run_dir / 'report'}")
