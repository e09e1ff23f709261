"""The run store on real SQLite files: counts kept by its own writes match a fresh count, and a batch of
writes commits as one while each trial's write stays whole."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys

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


def _spec(path) -> dict:
    with RunStore(path, read_only=True) as store:
        return store.spec()


def test_a_runs_spec_is_read_back_as_its_latest_run_recorded_it_writing_nothing(tmp_path):
    """The spec read back is the latest run's (a free field, here a timeout, may change between runs). A
    store no sweep is writing is read as immutable, leaving every file as it was and no -wal or -shm file;
    one a sweep holds open (its write-ahead log beside it) is read read-only and gives what was committed,
    through a link to it too."""
    path, link = tmp_path / "store.sqlite", tmp_path / "elsewhere" / "store.sqlite"
    link.parent.mkdir()
    link.symlink_to(path)
    first, second = {"name": "s", "trial_timeout": None}, {"name": "s", "trial_timeout": 60.0}
    with RunStore(path) as store:
        store.begin_run("s", "f", first, [{"lr": 0.1}])
        assert _spec(path) == _spec(link) == first  # a sweep is writing it: its log is beside it
        store.begin_run("s", "f", second, [{"lr": 0.1}], free=("trial_timeout",))
        assert _spec(path) == _spec(link) == second
    before, beside_link = _files(tmp_path), _files(link.parent)
    assert set(before) == {"store.sqlite", "elsewhere"}
    assert _spec(path) == _spec(link) == second
    assert _files(tmp_path) == before and _files(link.parent) == beside_link


def _run_dir(folder, spec: str | None = "{}", schema: str | None = None):
    """A run directory whose store records ``spec`` as its sweep's (None: no sweep), or is made by
    ``schema``."""
    folder.mkdir()
    (folder / "sweep.yaml").write_text("name: s\n")
    if schema is not None:
        with sqlite3.connect(folder / "store.sqlite") as db:
            db.executescript(schema)
        return folder
    with RunStore(folder / "store.sqlite") as store:
        if spec is not None:
            store.begin_run("s", "f", {}, [])
    if spec is not None:
        with contextlib.closing(sqlite3.connect(folder / "store.sqlite")) as db, db:  # no length limit here
            db.execute("UPDATE sweep SET spec = ?", (spec,))
    return folder


_SWEEP_TABLE = "CREATE TABLE sweep (id INTEGER PRIMARY KEY, spec TEXT); INSERT INTO sweep"
_EPOCHS_TABLE = "CREATE TABLE epochs (trial INTEGER, epoch INTEGER, record TEXT)"
_ONE_TRIAL = '{"search": "grid", "space": {"lr": [0.1]}, "epochs": 2}'  # one trial of two epochs at most


@pytest.mark.parametrize(("spec", "schema", "said"), [
    (None, None, "records no sweep: its first run stopped before it began. Run the sweep again"),
    ("{not json", None, "records a sweep spec that is not a JSON mapping"),
    ("[1, 2]", None, "records a sweep spec that is not a JSON mapping"),
    ("[" * 4000, None, "records a sweep spec that is not a JSON mapping"),  # nested deeper than Python parses
    ('{"space": "' + "x" * 5000 + '"}', None, "records a sweep spec larger than the 4,096 bytes"),
    ("", "CREATE TABLE sweep (id INTEGER PRIMARY KEY, spec TEXT); INSERT INTO sweep VALUES (1, NULL);",
     "records a sweep spec that is not a JSON mapping"),
    ("", "CREATE TABLE sweep (id INTEGER PRIMARY KEY, spec TEXT); INSERT INTO sweep VALUES (1, '{}');",
     "records a sweep spec dask-train cannot read (epochs=None)"),
    ("", f"{_SWEEP_TABLE} VALUES (1, '{_ONE_TRIAL}');", "is not a dask-train run store (no such table: trials)"),
    ("", f"{_SWEEP_TABLE} VALUES (1, '{_ONE_TRIAL}'); {_EPOCHS_TABLE};"
         "CREATE TABLE trials (number INTEGER, params TEXT, metrics TEXT, state TEXT);"
         "INSERT INTO trials VALUES (0, '{}', '{}', 'exploded');",
     "records trials dask-train did not write"),
    # More rows than the spec can have: refused as counted, before one is read.
    ("", f"{_SWEEP_TABLE} VALUES (1, '{_ONE_TRIAL}'); {_EPOCHS_TABLE}; CREATE TABLE trials (number INTEGER);"
         "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999) "
         "INSERT INTO trials SELECT i FROM n;",
     "holds 100,000 trials, more than the 1 its sweep spec can have"),
    ("", f"{_SWEEP_TABLE} VALUES (1, '{_ONE_TRIAL}'); CREATE TABLE trials (number INTEGER); {_EPOCHS_TABLE};"
         "INSERT INTO epochs VALUES (0, 1, '{}'), (0, 2, '{}'), (0, 3, '{}');",
     "holds 3 epoch records, more than the 2 its sweep spec can have"),
    ("", "CREATE TABLE unrelated (x);", "is not a dask-train run store (no such table: sweep)"),
])
def test_a_bad_store_is_refused_by_name_and_left_as_it_was(tmp_path, monkeypatch, spec, schema, said):
    """What `dask-train results` and the report read: a store dask-train did not write is refused in one
    line naming it (values larger than a spec may be are never read whole), and nothing in its directory
    changes."""
    from training import limits
    from training.errors import ConfigError
    from training.report import read_run

    monkeypatch.setattr(limits, "MAX_SPEC_BYTES", 4096)
    run_dir = _run_dir(tmp_path / "run", spec, schema)
    before = _files(run_dir)
    with pytest.raises(ConfigError, match=re.escape(said)) as raised:
        read_run(run_dir)
    assert str(run_dir / "store.sqlite") in str(raised.value) and "\n" not in str(raised.value)
    assert _files(run_dir) == before


def test_a_file_that_is_no_store_is_refused_and_left_as_it_was(tmp_path):
    from training.errors import ConfigError
    from training.report import read_run

    run_dir = _run_dir(tmp_path / "run")
    (run_dir / "store.sqlite").write_bytes(b"not a database" * 100)
    before = _files(run_dir)
    with pytest.raises(ConfigError, match="is not a dask-train run store"):
        read_run(run_dir)
    assert _files(run_dir) == before


def _peak_growth_kb(setup: str, body: str, path) -> tuple[list[str], int]:
    """Run ``setup``, then ``body`` (``path`` is ``sys.argv[1]``) in a fresh interpreter: what ``body`` printed,
    and by how many KB the process's peak memory grew while it ran."""
    import subprocess

    peak = 'next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))'
    script = f"import sys\n{setup}\nbefore = {peak}\n{body}\nprint({peak} - before)\n"
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *said, grew = done.stdout.split()
    return said, int(grew)


def _huge_spec() -> str:
    return '{"space": "' + "x" * (64 * 2**20) + '"}'


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the read limit needs sqlite3's setlimit (3.11+)")
def test_a_spec_far_larger_than_the_limit_is_refused_without_being_read(tmp_path):
    """A store holding a 64 MB spec: refused, and the reader's peak memory grows by far less than the
    value (it grew by the whole value when the check measured it in SQLite)."""
    said, grew_kb = _peak_growth_kb(
        "from training import limits\nfrom training.errors import ConfigError\n"
        "from training.report import read_run\nlimits.MAX_SPEC_BYTES = 2**20",
        "try:\n    read_run(sys.argv[1])\n"
        "except ConfigError as refused:\n    print('larger than the' in str(refused))",
        _run_dir(tmp_path / "run", _huge_spec()))
    assert said == ["True"] and grew_kb < 16 * 1024, (said, grew_kb)


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


@pytest.mark.parametrize("spec", ["42", b"\x00\xff junk", "null", "[" * 5000])
def test_a_rerun_over_a_store_whose_spec_dask_train_did_not_write_is_refused_in_one_line(tmp_path, spec):
    """A changed sweep over a store whose recorded spec is not one dask-train wrote: the usual refusal,
    saying only that the trials changed (what else did cannot be told), never a Python error."""
    from training.errors import ConfigError

    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        store.begin_run("s", "f", {"epochs": 1}, [])
        store.db.execute("UPDATE sweep SET spec = ?", (spec,))
        with pytest.raises(ConfigError, match=r"A different sweep named 's' is already in .* \(changed: trials\)"):
            store.check_sweep("s", "g", {"epochs": 2})


def test_a_rerun_does_not_read_its_recorded_spec(tmp_path):
    """An unchanged rerun compares fingerprints only: a store holding a 64 MB spec (not one dask-train
    writes) does not make the rerun read it (it did, whole, and then wrote it back)."""
    said, grew_kb = _peak_growth_kb(
        "from training.store import RunStore",
        "with RunStore(sys.argv[1]) as store:\n    print(store.check_sweep('s', 'f', {'name': 's'}))",
        _run_dir(tmp_path / "run", _huge_spec()) / "store.sqlite")
    assert said == ["True"] and grew_kb < 16 * 1024, (said, grew_kb)


def test_a_cancelled_trial_counts_the_epochs_it_reported(tmp_path):
    with RunStore(tmp_path / "store.sqlite") as store:
        store.begin_run("s", "f", {}, [{"lr": 0.1}, {"lr": 0.2}])
        store.trial_started(0, "cpu-0", 1.0)
        for epoch in (1, 2, 3):
            store.record_epoch(0, {"epoch": epoch, "val_loss": 1.0 / epoch})
        store.cancel_trial(0)
        store.cancel_trial(1)  # never started: none
        assert [(t.state, t.epochs) for t in store.trials()] == [(TrialState.CANCELLED, 3),
                                                                 (TrialState.CANCELLED, 0)]
