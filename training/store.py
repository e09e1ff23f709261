"""The run store: SQLite in the run directory (WAL mode), one row per trial and one per reported epoch.

Only the coordinating client writes it, from one thread. It is what makes a sweep resumable: trials
recorded as finished are not run again. Rows come back as :class:`~training.protocol.TrialRecord`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .limits import MAX_EPOCHS, short
from .protocol import TrialOutcome, TrialRecord, TrialState, checked_record, finished_states

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, fingerprint TEXT NOT NULL,
    spec TEXT NOT NULL, created REAL NOT NULL, runs INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY, params TEXT NOT NULL, state TEXT NOT NULL,
    worker TEXT, starts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, seconds REAL,
    epochs INTEGER NOT NULL DEFAULT 0, metrics TEXT, best REAL, error_type TEXT, error TEXT,
    traceback TEXT, model_dir TEXT, best_epoch INTEGER);
CREATE TABLE IF NOT EXISTS epochs (
    trial INTEGER NOT NULL, epoch INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (trial, epoch));
"""
_FINISHED = finished_states()
_NOT_FINISHED = f"state NOT IN ({','.join('?' * len(_FINISHED))})"


class RunStore:
    """A sweep's SQLite store. Use as a context manager; every write commits at once.

    ``read_only``: a store read as untrusted data (`dask-train results`, the report), which nothing here
    writes: see :func:`_open_read_only`."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        # Trials by state, kept up to date by this store's own writes (one query at first use, not one a
        # trial: a 10,000-trial sweep asks after every trial). None: count again.
        self._counts: dict[TrialState, int] | None = None
        self._params: dict[int, dict[str, Any]] = {}  # a trial's params never change once recorded
        self.read_only = read_only
        if read_only:
            self.db = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        _limit_values(self.db)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(trials)")}
        if "best_epoch" not in columns:  # a store written before best epochs were recorded
            self.db.execute("ALTER TABLE trials ADD COLUMN best_epoch INTEGER")

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing: a client killed mid-write leaves the previous state, never half of a trial.
        Inside :meth:`batch` it is a savepoint of the batch's transaction."""
        if self.db.in_transaction:
            with self._savepoint():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self.db.execute("SAVEPOINT one_write")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:  # SQLite ends the whole transaction itself on some errors (disk full)
                self.db.execute("ROLLBACK TO one_write")
                self.db.execute("RELEASE one_write")
            self._counts = None
            raise
        self.db.execute("RELEASE one_write")

    def _rollback(self) -> None:
        """Undo the open transaction (SQLite has already undone it after some errors, e.g. a full disk)."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self._counts = None  # what was counted in the undone writes is gone

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside into one commit (a sweep's round of events and results): one
        write to disk instead of one each. Each write inside stays whole on its own; on an error, what
        was written completely before it is still committed."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:  # e.g. a full disk: leave no transaction open behind the error
                self._rollback()
                raise

    def begin_run(self, name: str, fingerprint: str, spec: dict[str, Any], trials: list[dict[str, Any]],
                  free: tuple[str, ...] = ()) -> int:
        """Record the sweep (or check it matches the one recorded: ``free`` fields may change between
        runs) and its trials; return the run count."""
        recorded = self.check_sweep(name, fingerprint, spec, free)
        with self._transaction():
            if recorded:  # this run's spec is the one read back: its free fields may have changed
                self.record_spec(spec)
            else:
                self.db.execute("INSERT INTO sweep (id, name, fingerprint, spec, created, runs) "
                                "VALUES (1, ?, ?, ?, ?, 0)", (name, fingerprint, json.dumps(spec), time.time()))
                self.db.executemany("INSERT INTO trials (number, params, state) VALUES (?, ?, ?)",
                                    [(i, json.dumps(p), TrialState.PENDING.value) for i, p in enumerate(trials)])
            self.db.execute("UPDATE sweep SET runs = runs + 1 WHERE id = 1")
        self._counts = None
        return int(self.db.execute("SELECT runs FROM sweep WHERE id = 1").fetchone()[0])

    def record_spec(self, spec: dict[str, Any]) -> None:
        """Record ``spec`` as the sweep's (already recorded, with the same fingerprint): the spec of its
        latest run, which :meth:`spec` reads back."""
        with self._transaction():
            self.db.execute("UPDATE sweep SET spec = ? WHERE id = 1", (json.dumps(spec),))

    def spec(self) -> dict[str, Any]:
        """The spec the store records (its latest run's), as plain JSON, its size checked before it is read
        whole (:data:`~training.limits.MAX_SPEC_BYTES`). JSON written by dask-train: read back a hundred
        times faster than the run's sweep.yaml, which is for people."""
        from .limits import MAX_SPEC_BYTES

        name = repr(str(self.path))
        too_big = ConfigError(f"{name} records a sweep spec larger than the {MAX_SPEC_BYTES:,} bytes dask-train "
                              "writes: not one it wrote. Pass a run directory a dask-train sweep wrote.")
        try:
            if not hasattr(self.db, "setlimit"):  # Python 3.10: measured first
                size = self.db.execute("SELECT length(CAST(spec AS BLOB)) FROM sweep WHERE id = 1").fetchone()
                if size is not None and (size[0] or 0) > MAX_SPEC_BYTES:
                    raise too_big
            row = self.db.execute("SELECT spec FROM sweep WHERE id = 1").fetchone()
        except sqlite3.DataError:  # larger than the connection's length limit: never read whole
            raise too_big from None
        if row is None:
            raise ConfigError(f"{name} records no sweep: its first run stopped before it began. Run the sweep "
                              "again to start it.")
        text = row[0]
        if isinstance(text, str | bytes) and len(text) > MAX_SPEC_BYTES:
            raise too_big
        try:
            spec = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            spec = None
        if not isinstance(spec, dict):
            raise ConfigError(f"{name} records a sweep spec that is not a JSON mapping: not one dask-train wrote. "
                              "Pass a run directory a dask-train sweep wrote.")
        return spec

    def check_sweep(self, name: str, fingerprint: str, spec: dict[str, Any], free: tuple[str, ...] = (),
                    afresh: str = "pass --new (new=True)") -> bool:
        """Whether a sweep is recorded here; raises if it is not the one of ``fingerprint`` (``spec``, whose
        ``free`` fields may change between runs). ``afresh``: how the caller sets the old run aside."""
        row = self.db.execute("SELECT fingerprint FROM sweep WHERE id = 1").fetchone()
        if row is not None and row["fingerprint"] != fingerprint:
            try:
                old = self.spec()
            except ConfigError:  # not one dask-train wrote: what changed cannot be said
                old = {}
            changed = sorted(k for k in spec if k not in free and old.get(k) != spec[k]) if old else []
            raise ConfigError(
                f"A different sweep named '{name}' is already in {self.path.parent} (changed: "
                f"{', '.join(changed) or 'trials'}). Rerun it unchanged to resume, pick another name, or "
                f"{afresh} to set the old run aside and start afresh.")
        return row is not None

    def unfinished(self) -> list[int]:
        rows = self.db.execute(f"SELECT number FROM trials WHERE {_NOT_FINISHED} ORDER BY number", _FINISHED)
        return [r[0] for r in rows]

    def add_trial(self, number: int, params: dict[str, Any]) -> None:
        """Record a trial created during the run (TPE asks); a no-op if it is already there."""
        added = self.db.execute("INSERT OR IGNORE INTO trials (number, params, state) VALUES (?, ?, ?)",
                                (number, json.dumps(params), TrialState.PENDING.value)).rowcount
        if added:
            self._moved(None, TrialState.PENDING)

    def params(self, number: int) -> dict[str, Any]:
        if number not in self._params:
            row = self.db.execute("SELECT params FROM trials WHERE number = ?", (number,)).fetchone()
            self._params[number] = json.loads(row[0])
        return dict(self._params[number])

    def trial_started(self, number: int, worker: str, when: float) -> None:
        """A run of the trial began: count it; the trial's start is its first run's."""
        before = self._state(number)
        changed = self.db.execute(f"UPDATE trials SET state = ?, worker = ?, started = COALESCE(started, ?), "
                                  f"starts = starts + 1 WHERE number = ? AND {_NOT_FINISHED}",
                                  (TrialState.RUNNING.value, worker, when, number, *_FINISHED)).rowcount
        if changed:
            self._moved(before, TrialState.RUNNING)

    def cancel_trial(self, number: int) -> None:
        """A running trial was stopped by the user: not finished (a rerun resumes it). Its epochs are the
        ones it reported (the table showed 0 for a trial stopped at epoch 5)."""
        before = self._state(number)
        changed = self.db.execute(
            "UPDATE trials SET state = ?, epochs = (SELECT COUNT(*) FROM epochs WHERE trial = number) "
            f"WHERE number = ? AND {_NOT_FINISHED}", (TrialState.CANCELLED.value, number, *_FINISHED)).rowcount
        if changed:
            self._moved(before, TrialState.CANCELLED)

    def record_epoch(self, number: int, record: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO epochs (trial, epoch, record) VALUES (?, ?, ?)",
                        (number, int(record["epoch"]), json.dumps(record)))

    def finish_trial(self, outcome: TrialOutcome, state: TrialState, best: tuple[int, float] | None,
                     model_dir: str | None) -> None:
        """Record the end of a run of a trial (``state``: the outcome's, or the coordinator's verdict:
        promoted, pruned), its full history and its best epoch, in one transaction. Seconds add up over
        the runs of a trial that runs in stretches."""
        history, number = outcome.history, outcome.number
        before = self._state(number)
        with self._transaction():
            self.db.execute("DELETE FROM epochs WHERE trial = ?", (number,))
            self.db.executemany("INSERT INTO epochs (trial, epoch, record) VALUES (?, ?, ?)",
                                [(number, int(r["epoch"]), json.dumps(r)) for r in history])
            self.db.execute(
                "UPDATE trials SET state = ?, worker = COALESCE(?, worker), started = COALESCE(started, ?), "
                "finished = ?, seconds = COALESCE(seconds, 0) + ?, epochs = ?, metrics = ?, best = ?, "
                "best_epoch = ?, error_type = ?, error = ?, traceback = ?, model_dir = ? WHERE number = ?",
                (state.value, outcome.worker or None, outcome.started, outcome.finished, outcome.seconds,
                 len(history), json.dumps(history[-1] if history else {}), None if best is None else best[1],
                 None if best is None else best[0], outcome.error_type, outcome.error, outcome.traceback,
                 model_dir, number))
        if before is not None:
            self._moved(before, state)

    def check_rows(self, trials: int, epochs: int) -> None:
        """Refuse a store holding more trial rows than ``trials``, or more epoch rows than ``trials`` x
        ``epochs``, before any is read: what its spec allows (see
        :func:`~training.sweep_spec.recorded_size`). Counted by SQLite, nothing held here."""
        found = self.db.execute("SELECT (SELECT COUNT(*) FROM trials), (SELECT COUNT(*) FROM epochs)").fetchone()
        for count, most, what in ((found[0], trials, "trials"), (found[1], trials * epochs, "epoch records")):
            if count > most:
                raise ConfigError(f"{str(self.path)!r} holds {count:,} {what}, more than the {most:,} its sweep "
                                  "spec can have: not a store dask-train wrote. Pass a run directory a dask-train "
                                  "sweep wrote.")

    def trials(self) -> list[TrialRecord]:
        """Every trial, in number order (read-only: each field checked, ValueError for one of another form)."""
        rows = self.db.execute("SELECT * FROM trials ORDER BY number")
        return [_decode_checked(r) for r in rows] if self.read_only else [_decode(r) for r in rows]

    def trial(self, number: int) -> TrialRecord:
        """One trial."""
        return _decode(self.db.execute("SELECT * FROM trials WHERE number = ?", (number,)).fetchone())

    def history(self, number: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT record FROM epochs WHERE trial = ? ORDER BY epoch", (number,))
        return [json.loads(r[0]) for r in rows]

    def histories(self) -> dict[int, list[dict[str, Any]]]:
        """Every trial's history in one query, by trial number."""
        out: dict[int, list[dict[str, Any]]] = {}
        for trial, record in self.db.execute("SELECT trial, record FROM epochs ORDER BY trial, epoch"):
            data = json.loads(record)
            if self.read_only and not (isinstance(data, dict) and isinstance(data.get("epoch"), int)):
                raise ValueError(f"trial {short(trial)}: an epoch record of another form")
            out.setdefault(trial, []).append(data)
        return out

    def counts(self) -> dict[TrialState, int]:
        """How many trials are in each state (states with none left out)."""
        if self._counts is None:
            rows = self.db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")
            self._counts = {TrialState(state): count for state, count in rows}
        return {state: n for state, n in self._counts.items() if n}

    def _state(self, number: int) -> TrialState | None:
        row = self.db.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()
        return None if row is None else TrialState(row[0])

    def _moved(self, before: TrialState | None, after: TrialState) -> None:
        """A trial went from ``before`` (None: it is new) to ``after``: the counts follow."""
        if self._counts is None:
            return
        if before is not None:
            self._counts[before] = self._counts.get(before, 0) - 1
        self._counts[after] = self._counts.get(after, 0) + 1


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that reads a store and writes nothing, leaving no ``-wal`` or ``-shm`` file behind:
    read-only where a write-ahead log is beside the store (a sweep is writing it, or one was killed), else
    immutable (a sweep that starts writing it in the milliseconds of a read can make that read fail, never
    change the store). No value larger than a spec may be is read (Python 3.11+; 3.10: :meth:`spec` measures
    its spec first)."""
    real = path.resolve()  # the log is beside the file itself, where a link points
    log = real.with_name(real.name + "-wal")
    if log.exists() and not real.with_name(real.name + "-shm").exists() and not os.access(real.parent, os.W_OK):
        raise ConfigError(f"{str(path)!r} cannot be read here: a sweep writing it was killed (its {log.name} is "
                          "left) and its folder is read-only. Copy the run directory somewhere writable.")
    db = sqlite3.connect(f"{real.as_uri()}?{'mode=ro' if log.exists() else 'immutable=1'}", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    _limit_values(db)
    return db


def _limit_values(db: sqlite3.Connection) -> None:
    """No value larger than a spec may be (with room for its row) is read whole, or written (Python 3.11+)."""
    from .limits import MAX_SPEC_BYTES

    if hasattr(db, "setlimit"):
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_SPEC_BYTES + _ROW_ROOM)


#: Bytes a read-only store's values may have over the largest spec (the length limit SQLite puts on a read).
_ROW_ROOM = 64 * 1024


def _decode_checked(row: sqlite3.Row) -> TrialRecord:
    """A trial row read as untrusted data: every field of the type dask-train writes, else ValueError."""
    data = dict(row)
    record = checked_record(TrialRecord, {**data, "params": json.loads(data.get("params") or "null"),
                                          "metrics": json.loads(data.get("metrics") or "{}")})
    if record is None:
        raise ValueError(f"trial {short(data.get('number'))}: a field of another type")
    for name, low, high in _RANGES:
        value = getattr(record, name)
        if value is not None and not low <= value <= high:  # NaN too
            raise ValueError(f"trial {record.number}: {name}={short(value)}, out of the range dask-train writes")
    return record


#: The ranges of a trial row's numbers read as untrusted data: times in seconds since 1970 (to the year 2242;
#: a time out of range failed the results table with an OverflowError), counts of epochs and starts.
_RANGES = (("started", 0.0, 2.0**33), ("finished", 0.0, 2.0**33), ("seconds", 0.0, 2.0**33),
           ("epochs", 0, MAX_EPOCHS), ("best_epoch", 0, MAX_EPOCHS), ("starts", 0, 2**31))


def _decode(row: sqlite3.Row) -> TrialRecord:
    return TrialRecord.from_dict({**dict(row), "params": json.loads(row["params"]),
                                  "metrics": json.loads(row["metrics"] or "{}")})
