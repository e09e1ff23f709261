"""What the training loop calls back: the hooks of :class:`Callback`.

Its own module, without torch, so code that only sends what the loop reports (a sweep trial's epoch
events) can be imported, and pickled by reference, where nothing trains: a sweep's client.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks the loop calls; subclass and override what you need (progress bars, metric events)."""

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        """Before the first batch of ``epoch`` (1-based)."""

    def on_batch_end(self, epoch: int, batch: int) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """After validation, with the epoch's history record."""
