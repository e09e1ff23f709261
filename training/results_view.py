"""A sweep's results as a table that fits the terminal: every searched value readable at 80 columns.

Numbers are written compactly (4 significant digits: ``0.001`` and ``0.01`` stay distinct), cells fold
instead of being cut to ``…``, and where the table is still too wide the secondary columns are dropped,
least useful first; wider terminals show them all. Used by the CLI and by the Python API's progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table

from .protocol import TrialRecord, TrialState, best_trial
from .shown import cell


@dataclass(frozen=True)
class _Column:
    header: str
    key: str
    keep: bool  # never dropped: trial, state, the searched values, the best metric, the worker
    justify: str = "right"


def compact(value: Any) -> str:
    """A number in at most 4 significant digits (large ones grouped), anything else as text.

    Examples
    --------
    >>> compact(0.001), compact(0.01), compact(16384), compact(1234.5), compact(0.000123456), compact(None)
    ('0.001', '0.01', '16384', '1,234', '0.0001235', '')
    """
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def so_far(trials: Sequence[TrialRecord], histories: dict[int, list[dict[str, Any]]],
           now: float) -> list[TrialRecord]:
    """``trials`` with the unfinished ones (running, cancelled part-way) shown as far as they went: their
    recorded epochs' count and last metrics (their row gets them as they finish), and a running trial's
    seconds since it started (at ``now``); their best stays empty until they finish.

    Examples
    --------
    >>> from training.protocol import TrialState
    >>> running = TrialRecord(0, {}, TrialState.RUNNING, started=100.0)
    >>> shown = so_far([running], {0: [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}]}, now=130.0)
    >>> shown[0].epochs, shown[0].metrics["val_loss"], shown[0].seconds, shown[0].best
    (2, 0.4, 30.0, None)
    """
    shown = []
    for trial in trials:
        history = histories.get(trial.number)
        if not trial.state.is_finished and not trial.metrics and history:
            trial = dataclasses.replace(trial, epochs=max(trial.epochs, len(history)), metrics=history[-1])
        if trial.state == TrialState.RUNNING and trial.started and trial.seconds is None:
            trial = dataclasses.replace(trial, seconds=round(max(0.0, now - trial.started), 1))
        shown.append(trial)
    return shown


def span(trials: list[TrialRecord]) -> float | None:
    """From the first trial's start to the last one's finish: a sweep's wall time over all its runs."""
    starts = [t.started for t in trials if t.started]
    ends = [t.finished for t in trials if t.finished]
    return max(ends) - min(starts) if starts and ends else None


def duration(seconds: float | None) -> str:
    """Seconds as ``4.2 s``, ``3m05s`` or ``1h02m``.

    Examples
    --------
    >>> duration(4.21), duration(185), duration(3725)
    ('4.2 s', '3m05s', '1h02m')
    """
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


#: A table of more trials than this shows the best ones and the others' count (results.csv has them all):
#: a terminal table of 10,000 rows takes rich half a minute to draw, and nobody reads it.
MAX_ROWS = 60


def results_table(trials: Sequence[TrialRecord], space: Iterable[str], metric: str, mode: str, *,
                  width: int, title: str | None = None, max_rows: int = MAX_ROWS) -> Table:
    """The results as a rich ``Table`` no wider than ``width`` where that can be had; of more than
    ``max_rows`` trials, the best ones and the first that ended in an error, in trial order.

    Examples
    --------
    >>> table = results_table([], ["lr"], "val_loss", "min", width=80)
    >>> [str(c.header) for c in table.columns][:3]
    ['trial', 'state', 'lr']
    """
    best = best_trial(trials, mode)
    shown = _selection(trials, mode, best, max_rows)
    rows = [_row(t, best, metric) for t in shown]
    columns = _columns(list(space), metric, rows)
    if len(shown) < len(trials):
        failed = sum(1 for t in shown if t.state.is_error)
        also = f" and the first {failed} that failed" if failed else ""
        title = (f"{title}\n" if title else "") + (
            f"The best {len(shown) - failed} of {len(trials):,} trials{also}; results.csv has them all.")
    while True:
        table = _table(columns, rows, title)
        secondary = [c for c in columns if not c.keep]
        if not secondary or _minimum_width(table) <= width:
            return table
        columns = [c for c in columns if c is not secondary[-1]]


def _selection(trials: Sequence[TrialRecord], mode: str, best: TrialRecord | None,
               max_rows: int) -> list[TrialRecord]:
    """At most ``max_rows`` trials, in number order: all of them if that many, else the best by their
    best-epoch value (the best trial first of all) and up to a sixth of the rows of errors.

    Examples
    --------
    >>> from training.protocol import TrialState
    >>> rows = [TrialRecord(i, {}, TrialState.COMPLETED, best=float(i % 7)) for i in range(100)]
    >>> [t.number for t in _selection(rows, "min", rows[0], 5)]
    [0, 7, 14, 21, 28]
    """
    if len(trials) <= max_rows:
        return list(trials)
    ranked = sorted((t for t in trials if t.state.has_model and t.best is not None),
                    key=lambda t: (-t.best if mode == "max" else t.best, t.number))  # type: ignore[operator]
    errors = [t for t in trials if t.state.is_error][: max(1, max_rows // 6)] if max_rows > 1 else []
    chosen = {t.number: t for t in ([best] if best is not None else [])}
    for t in ranked:
        if len(chosen) >= max_rows - len(errors):
            break
        chosen.setdefault(t.number, t)
    for t in errors:
        chosen.setdefault(t.number, t)
    return [chosen[n] for n in sorted(chosen)][:max_rows]


def _columns(space: list[str], metric: str, rows: list[dict[str, Any]]) -> list[_Column]:
    """Every column in order; the secondary ones are dropped from the end of this list first."""
    columns = [_Column("trial", "trial", True), _Column("state", "state", True, "left"),
               *(_Column(name, f"param:{name}", True) for name in space),
               _Column(f"best {metric}", "best", True), _Column("worker", "worker", True, "left"),
               _Column("@epoch", "best_epoch", False), _Column("seconds", "seconds", False),
               _Column("epochs", "epochs", False), _Column(f"last {metric}", "last", False)]
    if any(r["error"] for r in rows):
        columns.insert(-4, _Column("error", "error", False, "left"))
    return columns


def _row(trial: TrialRecord, best: TrialRecord | None, metric: str) -> dict[str, Any]:
    marked = best is not None and trial.number == best.number
    return {"trial": f"{trial.number}{' *' if marked else ''}", "state": trial.state.value,
            **{f"param:{k}": compact(v) for k, v in trial.params.items()}, "best": compact(trial.best),
            "worker": trial.worker or "", "best_epoch": compact(trial.best_epoch),
            "seconds": compact(trial.seconds), "epochs": compact(trial.epochs),
            "last": compact(trial.metrics.get(metric)), "error": trial.error_type or ""}


def _table(columns: list[_Column], rows: list[dict[str, Any]], title: str | None) -> Table:
    """Every header and cell is text as it is (rich.text.Text): never read as markup or emoji codes, whatever
    the console (a parameter named ``[bold]`` or a worker ``:x:`` is shown as such)."""
    table = Table(title=cell(title) if title is not None else None, title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in columns:
        # Values fold onto a second line rather than being cut: nothing searched is ever hidden behind "…".
        table.add_column(cell(column.header), justify=column.justify,  # type: ignore[arg-type]
                         overflow="fold", min_width=min(len(column.header), 6))
    for row in rows:
        table.add_row(*(cell(row.get(c.key, "")) for c in columns))
    return table


def _minimum_width(table: Table) -> int:
    """The width the table needs with every cell and header on one line."""
    return sum(_column_width(table, i) for i in range(len(table.columns))) + 2 * (len(table.columns) - 1)


def _column_width(table: Table, index: int) -> int:
    """The widest cell of a column, its header included."""
    column = table.columns[index]
    return max([len(str(column.header)), *(len(str(c)) for c in column.cells)])
