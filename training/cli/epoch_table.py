"""``dask-train train``'s live view: a progress bar over each epoch's batches and a compact epoch table.

Its own module because it is a training-loop :class:`~training.loop.Callback` (which imports torch): the
other commands, and ``--help``, do not pay for it.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..loop import Callback
from . import display
from .display import EpochRows, shown_every

#: Seconds between the progress lines of a long epoch, where there is no bar (a log, a pipe).
LINE_EVERY = 30.0


class EpochTable(Callback):
    """A progress bar over each epoch's batches and a compact table: the first epoch, every k-th, the last.

    ``trained``: how many epochs this run trained (0: a resumed run had nothing left to do).
    """

    def __init__(self, title: str, epochs: int) -> None:
        self.title, self.epochs = title, epochs
        self.every, self.trained = shown_every(epochs), 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=display.console, transient=True)
        self._task: Any = None
        self._rows = EpochRows()
        # Not a terminal (a log, a pipe): no bar, so a line on a long epoch's progress now and then.
        self._lines = not display.console.is_terminal
        self._said = time.monotonic()  # when a progress line last was printed (or the view started)
        self._batches = 0

    def __enter__(self) -> EpochTable:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self._batches = num_batches
        description = f"{self.title} epoch {epoch}/{self.epochs}"
        if self._task is None:
            self._task = self.progress.add_task(description, total=num_batches)
        else:
            self.progress.reset(self._task, total=num_batches, description=description)

    def on_batch_end(self, epoch: int, batch: int) -> None:
        self.progress.update(self._task, completed=batch)
        if self._lines and time.monotonic() - self._said >= LINE_EVERY and batch < self._batches:
            self._said = time.monotonic()
            self.progress.console.print(f"  epoch {epoch}/{self.epochs}: step {batch}/{self._batches}")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self._said = time.monotonic()
        self.trained += 1
        epoch = int(record.get("epoch", 0))
        if self.trained == 1 and self.every > 1:
            self.progress.console.print(f"(epoch 1, then every {self.every} epochs and the last shown; all are "
                                        "in the model's history.json)")
        if self.trained == 1 or epoch % self.every == 0 or epoch == self.epochs:
            self._rows.print(record, self.progress.console)
