"""The run store on real SQLite files: counts kept by its own writes match a fresh count, and a batch of
writes commits as one while each trial's write stays whole."""

from __future__ import annotations

import sqlite3

import pytest

from training.protocol import TrialOutcome, TrialState
from training.store import RunStore


def _fresh_counts(path) -> dict[TrialState, int]:
    """What another process counts in the file: only committed rows."""
    with sqlite3.connect(path) as db:
        return {TrialState(s): n for s, n in db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")}


def _outcome(number: int, state: TrialState = TrialState.COMPLETED) -> TrialOutcome:
    return TrialOutcome(number, state, worker="cpu-0", finished=1.0, seconds=0.5,
                        history=[{"epoch": 1, "val_loss": 0.25 + number}])


def test_counts_follow_every_kind_of_write(tmp_path):
    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        store.begin_run("s", "f", {}, [{"lr": 0.1 * i} for i in range(6)])
        assert store.counts() == {TrialState.PENDING: 6}
        store.trial_started(0, "cpu-0", 1.0)
        store.trial_started(1, "cpu-1", 1.0)
        store.finish_trial(_outcome(0), TrialState.COMPLETED, (1, 0.25), None)
        store.finish_trial(_outcome(1, TrialState.FAILED), TrialState.FAILED, None, None)
        store.trial_started(1, "cpu-1", 2.0)  # a finished trial's late start event: no change
        store.trial_started(2, "cpu-0", 2.0)
        store.cancel_trial(2)
        store.cancel_trial(0)  # finished: stays completed
        store.add_trial(6, {"lr": 0.6})
        store.add_trial(6, {"lr": 0.6})  # already there
        expected = {TrialState.COMPLETED: 1, TrialState.FAILED: 1, TrialState.CANCELLED: 1, TrialState.PENDING: 4}
        assert store.counts() == expected == _fresh_counts(path)


def test_a_batch_commits_once_and_keeps_what_was_whole_before_an_error(tmp_path):
    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        store.begin_run("s", "f", {}, [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}])
        with store.batch():
            store.trial_started(0, "cpu-0", 1.0)
            store.record_epoch(0, {"epoch": 1, "val_loss": 0.5})
            assert _fresh_counts(path) == {TrialState.PENDING: 3}  # not committed yet: one commit at the end
        assert _fresh_counts(path)[TrialState.RUNNING] == 1
        with pytest.raises(TypeError), store.batch():
            store.finish_trial(_outcome(0), TrialState.COMPLETED, (1, 0.25), None)
            store.trial_started(1, "cpu-1", 1.0)
            bad = _outcome(1)
            object.__setattr__(bad, "history", [{"epoch": 1, "val_loss": object()}])  # not JSON
            store.finish_trial(bad, TrialState.COMPLETED, (1, 0.5), None)
        # Trial 0's end and trial 1's start were whole and are kept; trial 1's failed end left nothing behind.
        assert _fresh_counts(path) == {TrialState.COMPLETED: 1, TrialState.RUNNING: 1, TrialState.PENDING: 1}
        assert store.counts() == _fresh_counts(path)
        assert store.history(1) == [] and store.trial(1).state == TrialState.RUNNING
