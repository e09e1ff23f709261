"""Terminal output: epoch tables, progress bars and errors. The only place that prints."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..shown import cell, plain_console
from ..slots import cleaning_up

# Piped output (CI logs, files) gets wide tables instead of 80-column truncation, unless COLUMNS says how wide.
console = plain_console(soft_wrap=True,  # text is data: shown as it is
                        width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160)
_FIRST = ("epoch", "train_loss")
_LAST = ("lr", "seconds", "samples_per_s")


def working(what: str) -> contextlib.AbstractContextManager[Any]:
    """A spinner with ``what`` on standard error while the block runs, where that is a terminal (the output
    itself, on standard output, stays clean for a pipe or a file)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    return plain_console(stderr=True).status(f"{what}...")


class BadInput(click.ClickException):
    """A user error: printed as one message, exit code 2 (like a usage error)."""

    exit_code = 2


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, large rates as integers, everything else as text."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.4g}"
    return str(value)


def history_columns(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """``epoch, train_loss``, the validation metrics, then ``lr, seconds, samples_per_s``."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    middle = sorted(k for k in keys if k not in _FIRST + _LAST)
    return [k for k in _FIRST if k in keys] + middle + [k for k in _LAST if k in keys]


class EpochRows:
    """Prints one aligned row per epoch record, with a header before the first."""

    def __init__(self) -> None:
        self._columns: list[str] | None = None

    def print(self, record: Mapping[str, Any], out: Console) -> None:
        if self._columns is None:
            self._columns = history_columns([record])
            out.print("  ".join(f"{c:>{_width(c)}}" for c in self._columns), style="bold", soft_wrap=True)
        out.print("  ".join(f"{format_value(record.get(c, '')):>{_width(c)}}" for c in self._columns),
                  soft_wrap=True)


def shown_every(total: int, rows: int = 20) -> int:
    """Show every k-th epoch, k in 1, 2, 5, 10, 20, 50..., so that about ``rows`` rows show.

    Examples
    --------
    >>> shown_every(8), shown_every(100), shown_every(1000)
    (1, 5, 50)
    """
    k, steps = 1, (2, 2.5, 2)
    step = 0
    while total / k > rows:
        k = round(k * steps[step % 3])
        step += 1
    return k


def _width(column: str) -> int:
    return max(len(column), 9)


def table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Print a table of rows under a title."""
    out = Table(title=cell(title), title_justify="left")
    for column in columns:
        out.add_column(cell(column))
    for row in rows:
        out.add_row(*(cell(format_value(v)) for v in row))
    console.print(out)


class OutputClosed(KeyboardInterrupt):
    """Standard output's reader went away under a command (``dask-train sweep ... | head``): it stops as Ctrl-C
    stops it (see :class:`Output`)."""


class Output:
    """The command's standard output. Once its reader is gone, what is written goes to the null device and
    the command stops as Ctrl-C stops it, with exit code 141 (as SIGPIPE gives): a sweep, which watches
    :attr:`gone` (:func:`watch_output`), at the next round of its loop, whichever thread found the reader
    gone (its trials cancelled and recorded, their workers freed, the line on standard error: a failed write
    left them ``running``, with no line, or went unnoticed on the progress view's timer thread); any other
    command at its next write on the main thread (``dask-train results x | head -3``: silently). Never while
    a Ctrl-C's cleanup runs (:func:`training.slots.cleaning_up`): that goes on, and its exit code stays."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.gone = threading.Event()  # the reader went away (set from any thread)
        self.watched = False  # the command stops itself once ``gone`` is set: no write raises
        self.raised = False

    def write(self, text: str) -> int:
        try:
            written = self.stream.write(text)
        except BrokenPipeError:
            self._went_away()
            written = len(text)
        if self.gone.is_set():
            self._stop_here()
        return written

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._went_away()
        if self.gone.is_set():
            self._stop_here()

    def _went_away(self) -> None:
        """Point the output at the null device (what its buffer holds goes there too); say why the command
        stops, unless a Ctrl-C's cleanup runs (its cause and code stand)."""
        if self.gone.is_set():
            return
        with contextlib.suppress(OSError, ValueError):  # a stream with no descriptor: its writes fail on
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self.stream.fileno())
            finally:
                os.close(null)
        if not cleaning_up():
            interrupt.cause, interrupt.code = "output closed", 128 + signal.SIGPIPE
        self.gone.set()

    def _stop_here(self) -> None:
        """Stop a command that does not watch :attr:`gone`, once, from its main thread, outside cleanup."""
        main = threading.current_thread() is threading.main_thread()
        if self.watched or self.raised or cleaning_up() or not main:
            return
        self.raised = True
        raise OutputClosed

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding... as the stream has them
        return getattr(self.stream, name)


def watch_output() -> threading.Event | None:
    """The event set once standard output's reader is gone (None outside ``dask-train``), for a command that
    stops itself then (a sweep's loop checks it each round); its writes then never raise."""
    if not isinstance(sys.stdout, Output):
        return None
    sys.stdout.watched = True
    return sys.stdout.gone


def output_gone() -> bool:
    """Whether standard output's reader went away (``dask-train`` only)."""
    return isinstance(sys.stdout, Output) and sys.stdout.gone.is_set()


@dataclass
class Interrupt:
    """What stopped the command, and its exit code: Ctrl-C (SIGINT: 130, as a shell has it), or SIGTERM
    (143), which ``dask-train`` turns into the same KeyboardInterrupt (see :func:`training.cli.main`)."""

    cause: str = "Ctrl-C"
    code: int = 130


interrupt = Interrupt()


def interrupted(stop: Any, drop: tuple[str, ...] = (), add: tuple[str, ...] = (), again: str = "Resume") -> None:
    """Ctrl-C (or SIGTERM): one summary line with the command that resumes, then exit 130 (143). The command
    is this one, less the ``drop`` flags, plus the ``add`` ones; ``again`` names what it does."""
    args = [a for a in sys.argv[1:] if a not in drop]
    command = shlex.join(["dask-train", *args, *(a for a in add if a not in args)])
    line = f"Interrupted: {stop.summary} {again} with: {command}"
    code = interrupt.code  # what stopped it (a reader gone as this line goes out does not change it)
    if not output_gone():
        console.print(line)
    if output_gone():  # said where it is seen
        plain_console(stderr=True, soft_wrap=True).print(line)
    sys.exit(code)


#: Names, or characters of text, a generating model shows unless asked for another count.
GENERATE_DEFAULT = {"names": 20, "charlm": 400}


def show_use(model: Any, label: str, seed: int | None) -> None:
    """A trained model (or a sweep's best) put to the use its workload defines: samples it generates (names
    on the line of ``label``, text below it) or its test metrics; nothing where the workload defines none."""
    from ..workloads import get_workload

    work = get_workload(model.workload)
    if not work.defines_use():
        return
    if work.use != "generate":
        report(model.evaluate())
        return
    samples = model.generate(GENERATE_DEFAULT.get(model.workload, 10), seed=seed)
    if model.workload == "names":
        console.print(f"{label}: " + ", ".join(samples))
    else:
        console.print(f"{label}:")
        console.print(samples[0])


def report(values: Mapping[str, Any]) -> None:
    """A key: value listing (evaluation results)."""
    width = max((len(k) for k in values), default=0)
    for key, value in values.items():
        console.print(f"{key:<{width}}  {format_value(value)}")
