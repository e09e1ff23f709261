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


def _files(folder) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_runs_spec_is_read_back_as_its_latest_run_recorded_it_writing_nothing(tmp_path):
    """The spec read back is the latest run's (a free field, here a timeout, may change between runs). A
    store no sweep is writing is read as immutable, leaving every file as it was and no -wal or -shm file;
    one a sweep holds open (its write-ahead log beside it) is read read-only and gives what was committed."""
    from training.store import read_spec

    path = tmp_path / "store.sqlite"
    first, second = {"name": "s", "trial_timeout": None}, {"name": "s", "trial_timeout": 60.0}
    with RunStore(path) as store:
        store.begin_run("s", "f", first, [{"lr": 0.1}])
        assert read_spec(path) == first  # a sweep is writing it: its log is beside it
        store.begin_run("s", "f", second, [{"lr": 0.1}], free=("trial_timeout",))
        assert read_spec(path) == second
    before = _files(tmp_path)
    assert set(before) == {"store.sqlite"}
    assert read_spec(path) == second
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("spec", "said"), [
    (None, "records no sweep"),
    ("{not json", "not a JSON mapping"),
    ("[1, 2]", "not a JSON mapping"),
    ('{"space": "' + "x" * 5000 + '"}', "records a sweep spec of 5,013 bytes, more than the 4,096"),
])
def test_a_bad_recorded_spec_is_refused_by_name_before_it_is_read_whole(tmp_path, monkeypatch, spec, said):
    from training import limits
    from training.errors import ConfigError
    from training.store import read_spec

    monkeypatch.setattr(limits, "MAX_SPEC_BYTES", 4096)
    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        if spec is not None:
            store.begin_run("s", "f", {}, [])
            store.db.execute("UPDATE sweep SET spec = ?", (spec,))
    with pytest.raises(ConfigError, match=said) as raised:
        read_spec(path)
    assert str(path) in str(raised.value)


def test_a_file_that_is_no_store_is_refused_and_left_as_it_was(tmp_path):
    from training.errors import ConfigError
    from training.store import read_spec

    path = tmp_path / "store.sqlite"
    path.write_bytes(b"not a database" * 100)
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match="is not a dask-train run store"):
        read_spec(path)
    assert _files(tmp_path) == before


def test_a_spec_larger_than_can_be_read_back_is_refused_when_it_is_made(monkeypatch):
    """Only a sweep made in Python can list so many values; it is refused when made, saying by how much,
    not once its trials have run."""
    from training import sweep_spec
    from training.errors import ConfigError
    from training.sweep_spec import SweepSpec

    monkeypatch.setattr(sweep_spec, "MAX_SPEC_BYTES", 10_000)
    SweepSpec.create(workload="xor", space={"lr": [0.001 * n for n in range(1, 300)]})  # ~7 KB
    with pytest.raises(ConfigError, match=r"spec takes [\d,]+ bytes written out, more than the limit of 10,000"):
        SweepSpec.create(workload="xor", space={"lr": [0.0001 * n for n in range(1, 1000)]})
