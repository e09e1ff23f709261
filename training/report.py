"""A sweep's report, made from its run store: plots as PNG and ``summary.md``, in ``runs/<name>/report/``.

- ``curves.png``: the metric against the epoch for every trial, the best trial drawn thick and labelled;
- ``params.png``: each trial's final metric against each searched hyperparameter (one panel each);
- ``summary.md``: the best trial (number, params, metrics, model directory) and the results table.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .limits import clip, printable
from .protocol import TrialRecord, best_trial, is_number
from .run_dirs import SWEEP_MARKERS, own_folder, replace_file
from .store import RunStore
from .sweep_spec import recorded_size

_DRAWING = threading.Lock()  # matplotlib is not thread-safe
REPORT_DIR = "report"
_LEGEND_TRIALS = 5  # trials named in curves.png's legend: the best ones


@dataclass(frozen=True)
class RunSummary:
    """What a run directory holds, read back from its store and spec."""

    run_dir: Path
    spec: dict[str, Any]
    trials: list[TrialRecord]
    histories: dict[int, list[dict[str, Any]]]

    @property
    def metric(self) -> str:
        return self.spec.get("metric") or "val_loss"

    @property
    def mode(self) -> str:
        return self.spec.get("mode") or "min"

    @property
    def best(self) -> TrialRecord | None:
        """The sweep's best trial, by the one rule (:func:`training.protocol.best_trial`)."""
        return best_trial(self.trials, self.mode)


def read_run(run_dir: str | Path) -> RunSummary:
    """Read a sweep's run directory, as untrusted data: its spec, trials and histories, from its store,
    opened read-only (nothing in the directory is written, nothing it names is imported)."""
    run_dir = Path(run_dir)
    path = run_dir / "store.sqlite"
    if not run_dir.is_dir():
        raise ConfigError(f"{str(run_dir)!r} does not exist or is not a folder. Pass runs/<sweep name>, as "
                          "written by `dask-train sweep`.")
    if not all((run_dir / marker).is_file() for marker in SWEEP_MARKERS):
        raise ConfigError(f"{str(run_dir)!r} is not a sweep run directory (no store.sqlite or sweep.yaml). "
                          "Pass runs/<sweep name>, as written by `dask-train sweep`.")
    try:
        with RunStore(path, read_only=True) as store:
            spec = store.spec()
            store.check_rows(*recorded_size(spec, path))  # counted before a row is read
            trials, histories = store.trials(), store.histories()
    except ConfigError:
        raise
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{str(path)!r} is not a dask-train run store ({exc}).") from None
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{str(path)!r} records trials dask-train did not write ({clip(str(exc))}). Pass a run "
                          "directory a dask-train sweep wrote.") from None
    return RunSummary(run_dir, spec, trials, histories)


def write_report(run: RunSummary, plots: bool = True) -> Path:
    """Write the summary and (``plots``) the plots; return the report folder."""
    folder = own_folder(run.run_dir / REPORT_DIR)
    replace_file(folder / "summary.md", summary_markdown(run).encode("utf-8"))
    if plots:
        write_plots(run)
    return folder


def write_plots(run: RunSummary) -> None:
    """``curves.png`` and ``params.png``. Drawn on matplotlib figures of their own (no pyplot state) on a
    sweep's background thread, one report at a time: matplotlib's text layout shares caches that two threads
    drawing at once corrupt (back-to-back sweeps in one process did)."""
    folder = own_folder(run.run_dir / REPORT_DIR)
    with _DRAWING:
        _plot_curves(run, folder / "curves.png")
        _plot_params(run, folder / "params.png")


def summary_markdown(run: RunSummary) -> str:
    """The best trial and the results table, as Markdown."""
    spec, best = run.spec, run.best
    lines = [f"# Sweep {_escape(str(spec['name']))}", "",
             f"Workload {_escape(str(spec['workload']))}, {_escape(str(spec['search']))} search, "
             f"{len(run.trials)} trials, {_cell(spec['epochs'])} epochs each; best by `{run.metric}` "
             f"({run.mode}).", ""]
    if best is None:
        lines += ["No trial completed.", ""]
    else:
        searched = {k: best.params.get(k) for k in spec.get("space", {})}
        lines += [f"## Best trial: {best.number:04d}", "",
                  f"- {run.metric}: {_cell(best.best)} at epoch {best.best_epoch} of {best.epochs} "
                  f"(last epoch: {_cell(best.metrics.get(run.metric))})",
                  f"- params: {_escape(str(searched))}", f"- worker: {_escape(best.worker or '')}, "
                  f"{_cell(best.seconds)} s", f"- model: {_escape(str(best.model_dir))} (its best epoch)", ""]
    names = list(spec.get("space", {}))
    header = ["trial", "state", *names, f"best {run.metric}", "best epoch", "epochs", "seconds", "worker"]
    lines += ["## Trials", "", "| " + " | ".join(map(_escape, header)) + " |", "|" + "---|" * len(header)]
    for t in run.trials:
        cells = [f"{t.number:04d}", t.state.value, *(_cell(t.params.get(n)) for n in names), _cell(t.best),
                 _cell(t.best_epoch), str(t.epochs), _cell(t.seconds), _cell(t.worker)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_curves(run: RunSummary, path: Path) -> None:
    """Every trial's curve: the best and the other labelled ones drawn one by one, all the others as one
    collection (a line each drawn on its own takes matplotlib ~0.7 ms: seven seconds for 10,000 trials)."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    best, labelled = run.best, _top_trials(run)
    fig = _figure(figsize=(11 if labelled else 8, 5))  # room for the legend beside the plot
    ax = fig.subplots()
    others: list[list[tuple[float, float]]] = []
    for number, history in run.histories.items():
        points = [(r["epoch"], r[run.metric]) for r in history if _finite(r.get(run.metric))]
        if not points:
            continue
        is_best = best is not None and number == best.number
        if not is_best and number not in labelled:
            others.append(points)
            continue
        color = "tab:red" if is_best else _COLORS[list(labelled).index(number) % len(_COLORS)]
        ax.plot(*zip(*points, strict=True), linewidth=3 if is_best else 1.5, alpha=1 if is_best else 0.7,
                color=color, label=labelled.get(number),
                zorder=3 if is_best else 2, marker="o" if len(points) < 30 else None, markersize=3)
    if others:  # grey: no colour of a trial in the legend is shared with one that is not
        ax.add_collection(LineCollection(others, colors="tab:gray", linewidths=1, alpha=0.35, zorder=1))
        dotted = [(x, y) for points in others if len(points) < 30 for x, y in points]
        if dotted:  # short curves get a dot an epoch, as the drawn ones do (a one-epoch curve is only its dot)
            xs, ys = zip(*dotted, strict=True)
            ax.scatter(xs, ys, s=9, c="tab:gray", alpha=0.35, zorder=1, linewidths=0)
        ax.autoscale_view()
    ax.set(xlabel="epoch", ylabel=run.metric, title=f"{run.spec['name']}: {run.metric} by epoch, every trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    if labelled:  # beside the plot, not over its curves; best first, as ranked
        drawn = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        shown = [label for label in labelled.values() if label in drawn]
        ax.legend([drawn[label] for label in shown], shown, title=f"top trials by best {run.metric}",
                  fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


#: The labelled curves' colours: matplotlib's own, less the red that marks the best.
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _save(fig: Any, path: Path) -> None:
    """A figure as PNG at ``path``, written whole and never through a link there."""
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=100, bbox_inches="tight")  # a legend beside the plot included
    replace_file(path, data.getvalue())


def _top_trials(run: RunSummary, count: int = _LEGEND_TRIALS) -> dict[int, str]:
    """Legend labels of the best ``count`` trials (best first): number, searched values and best value."""
    ranked = [t for t in run.trials if t.state.has_model and _finite(t.best)]
    ranked.sort(key=lambda t: float(t.best or 0) * (1 if run.mode == "min" else -1))
    names, best = list(run.spec.get("space", {})), run.best
    labels = {}
    for t in ranked[:count]:
        searched = ", ".join(f"{n}={_cell(t.params.get(n))}" for n in names)
        first = "best: " if best is not None and t.number == best.number else ""
        labels[t.number] = printable(f"{first}trial {t.number:04d} ({searched}): {_cell(t.best)}")
    return labels


def _plot_params(run: RunSummary, path: Path) -> None:
    names = list(run.spec.get("space", {})) or ["trial"]
    fig = _figure(figsize=(4 * len(names), 4))
    axes = fig.subplots(1, len(names), squeeze=False)
    best = run.best

    def is_best(trial: TrialRecord) -> bool:
        return best is not None and trial.number == best.number

    done = sorted((t for t in run.trials if _finite(t.best)), key=is_best)  # the best last: drawn over the others
    colors = ["tab:red" if is_best(t) else "tab:blue" for t in done]
    for ax, name in zip(axes[0], names, strict=True):
        values = [t.params.get(name, t.number) for t in done]
        ys = [t.best for t in done]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            ax.scatter(values, ys, c=colors)
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and positive and max(positive) / min(positive) >= 10:
                ax.set_xscale("log")
        else:  # categorical: one column per value
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], ys, c=colors)
            # A value's control characters as escapes (a raw ESC or BEL went to the terminal in a warning).
            ax.set_xticks(range(len(labels)), [clip(printable(label), 40) for label in labels])
        ax.set(xlabel=name, ylabel=f"best {run.metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.spec['name']}: each trial's best {run.metric} by hyperparameter (best trial in red)")
    fig.tight_layout()
    _save(fig, path)


def _figure(**kwargs: Any) -> Any:
    """A figure that draws to files only (Agg): no display, no pyplot state, safe on any thread."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _finite(value: Any) -> bool:
    return is_number(value)


def _cell(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, anything else as escaped text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else _escape(str(value))


def _escape(text: str) -> str:
    """Text the report did not write (parameters, worker names), made inert in Markdown: no table breaks,
    no markup, no HTML, kept to one line."""
    text = " ".join(text.split())[:200]
    return "".join(f"\\{c}" if c in _MARKDOWN else "&lt;" if c == "<" else c for c in text)


_MARKDOWN = set("\\`*_[]|")
