"""Asynchronous successive halving (ASHA): stop poor trials early, at rungs of growing epoch counts.

Rungs are at ``grace_epochs * reduction_factor**k`` epochs, below ``max_epochs``. When a trial reaches a
rung it continues only if its metric is among the best ``1 / reduction_factor`` of the values recorded at
that rung so far (the asynchronous rule Ray Tune's ASHA uses: no waiting for a full rung). In a sweep each
stretch between rungs is one Dask task that resumes from the previous stretch's checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class Asha:
    """Rung bookkeeping and the promote-or-stop rule.

    Examples
    --------
    >>> asha = Asha(grace_epochs=1, reduction_factor=3, max_epochs=9, mode="min")
    >>> asha.rungs, asha.next_stop(0), asha.next_stop(3)
    ([1, 3], 1, 9)
    >>> [asha.promote(1, v) for v in (0.5, 0.9, 0.4, 0.8)]
    [True, False, True, False]
    """

    grace_epochs: int
    reduction_factor: int
    max_epochs: int
    mode: str
    recorded: dict[int, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.grace_epochs < 1 or self.grace_epochs > self.max_epochs:
            raise ConfigError(f"grace_epochs={self.grace_epochs}: need 1 <= grace_epochs <= epochs "
                              f"({self.max_epochs}).")
        if self.reduction_factor < 2:
            raise ConfigError(f"reduction_factor={self.reduction_factor}: need at least 2.")

    @property
    def rungs(self) -> list[int]:
        out, epoch = [], self.grace_epochs
        while epoch < self.max_epochs:
            out.append(epoch)
            epoch *= self.reduction_factor
        return out

    def next_stop(self, epoch: int) -> int:
        """The epoch a trial that has done ``epoch`` epochs runs to next: its next rung, or the end."""
        return next((r for r in self.rungs if r > epoch), self.max_epochs)

    def promote(self, rung: int, value: float) -> bool:
        """Record ``value`` at ``rung``; True if it is in the best 1/reduction_factor recorded there."""
        import numpy as np  # here: validating a sweep spec builds an Asha, and loads no numpy for it

        values = self.recorded.setdefault(rung, [])
        values.append(value)
        if self.mode == "min":
            return value <= float(np.percentile(values, 100 / self.reduction_factor))
        return value >= float(np.percentile(values, 100 - 100 / self.reduction_factor))

    def replay(self, histories: Iterable[list[dict]], metric: str) -> None:
        """Rebuild the rung records from trials' histories (a resumed sweep)."""
        for history in histories:
            by_epoch = {r["epoch"]: r.get(metric) for r in history}
            for rung in self.rungs:
                value = by_epoch.get(rung)
                if isinstance(value, int | float):
                    self.recorded.setdefault(rung, []).append(float(value))
