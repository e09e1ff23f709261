"""The coordinator's intake of its workers' events, on a real store: a trial's events count only from the
task it runs in now, so a stopped task that went on to its next trial before its worker ended does not
start, advance or end that trial, which was put back to run under a new key."""

from __future__ import annotations

from typing import Any

from training.coordinator import _Events
from training.protocol import EpochEnded, Event, TrialDone, TrialOutcome, TrialStarted, TrialState
from training.store import RunStore
from training.sweep import SweepProgress


class Arrived:
    """The events that reached the sweep's inbox, in order (what :class:`training.events.Inbox` drains)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def drain(self) -> list[Event]:
        out, self.events = self.events, []
        return out


class Hooks(SweepProgress):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_trial_start(self, number: int, worker: str) -> None:
        self.seen.append(("start", number, worker))

    def on_epoch(self, number: int, record: dict[str, Any]) -> None:
        self.seen.append(("epoch", number, record["epoch"]))


def _epoch(loss: float) -> dict[str, Any]:
    return {"epoch": 1, "val_loss": loss}


def _done(trial: int, key: str) -> TrialDone:
    outcome = TrialOutcome(trial, TrialState.COMPLETED, worker="cpu-1", history=[_epoch(0.5)],
                           model_dir=f"trials/{trial:04d}")
    return TrialDone("s", "r", time=3.0, trial=trial, worker="tcp://b:2", key=key, outcome=outcome.to_dict())


def test_a_stopped_tasks_late_events_do_not_count_for_the_trials_it_put_back(tmp_path):
    with RunStore(tmp_path / "store.sqlite") as store:
        store.begin_run("s", "f", {}, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}])
        inbox, hooks = Arrived(), Hooks()
        events = _Events(inbox, store, hooks, relay=None)  # type: ignore[arg-type]  (no checkpoints relayed)
        # Trials 0-1 ran in task "old", which was stopped. Both were put back (no task: ""); trial 1 was
        # submitted again as "new", trial 0 waits for a slot.
        events.key_of.update({0: "", 1: "new"})
        inbox.events = [
            TrialStarted("s", "r", time=0.9, trial=0, worker="tcp://a:1", worker_name="cpu-0", key="old"),
            TrialStarted("s", "r", time=1.0, trial=1, worker="tcp://a:1", worker_name="cpu-0", key="old"),
            EpochEnded("s", "r", time=1.1, trial=1, worker="cpu-0", record=_epoch(9.0), key="old"),
            _done(1, "old"),
            TrialStarted("s", "r", time=2.0, trial=1, worker="tcp://b:2", worker_name="cpu-1", key="new"),
            EpochEnded("s", "r", time=2.1, trial=1, worker="cpu-1", record=_epoch(0.5), key="new"),
            _done(1, "new"),
            # A trial run outside a Dask task sends no key: its events count.
            TrialStarted("s", "r", time=2.5, trial=2, worker="", worker_name="local"),
        ]
        arrived: list[tuple[str, int]] = []
        events.apply(lambda key, outcome: arrived.append((key, outcome.number)))
        assert hooks.seen == [("start", 1, "cpu-1"), ("epoch", 1, 1), ("start", 2, "local")]
        assert arrived == [("new", 1)]
        assert events.worker_of[1] == "tcp://b:2" and 0 not in events.started
        assert store.trial(0).starts == 0
        assert store.trial(1).starts == 1 and store.trial(1).worker == "cpu-1"
        assert store.history(1) == [_epoch(0.5)]
