"""Which trial runs next: the store's unfinished trials in order (grid, random), or trials asked of Optuna
as slots free (TPE); and the rung checkpoints ASHA continues trials from."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from .protocol import TrialRecord
from .store import RunStore
from .sweep_spec import SweepSpec


class Source:
    """Grid and random search: the store's unfinished trials, in order."""

    def __init__(self, pending: list[int]) -> None:
        self.pending = deque(pending)

    def take(self) -> int | None:
        return self.pending.popleft() if self.pending else None

    def requeue(self, number: int) -> None:
        """A trial promoted to its next rung (it runs before new ones: ASHA favours the deepest), or one
        whose task was stopped before it ran."""
        self.pending.appendleft(number)

    def left(self) -> int:
        """Trials waiting to be taken (TPE: of those already asked)."""
        return len(self.pending)

    def finished(self, row: TrialRecord) -> None:
        """Nothing to learn from a finished trial."""


class TpeSource(Source):
    """TPE: trials a killed client had started first (same parameters), then new ones asked of Optuna."""

    def __init__(self, spec: SweepSpec, store: RunStore) -> None:
        from .tpe import TpeSearch, check_study_kept

        check_study_kept(spec.run_dir, sum(store.counts().values()))
        self.store = store
        self.search = TpeSearch(spec.name, spec.workload, spec.space, spec.params, int(spec.num_trials or 0),
                                spec.mode, spec.seed, spec.run_dir)
        # A killed client leaves Optuna trials RUNNING: asked but never recorded (run them now), or recorded
        # as finished in the store but never told (tell Optuna now, from the store).
        for number, params in self.search.unfinished():
            store.add_trial(number, params)
            row = store.trial(number)
            if row.state.is_finished:
                self.finished(row)
        super().__init__(store.unfinished())

    def take(self) -> int | None:
        number = super().take()
        if number is not None:
            return number
        asked = self.search.ask()
        if asked is None:
            return None
        self.store.add_trial(*asked)
        return asked[0]

    def finished(self, row: TrialRecord) -> None:
        """Tell Optuna the trial's best-epoch value (None: it ended without a model)."""
        self.search.tell(row.number, row.best if row.state.has_model else None)


def read_rung_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    from .loop import read_checkpoint

    return read_checkpoint(path)


def write_rung_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    from .run_dirs import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as handle:
        torch.save(state, handle)


def make_source(spec: SweepSpec, store: RunStore) -> Source:
    return TpeSource(spec, store) if spec.search == "tpe" else Source(store.unfinished())
