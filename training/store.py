"""The run store: SQLite in the run directory (WAL mode), one row per trial and one per reported epoch.

Only the coordinating client writes it, from one thread. It is what makes a sweep resumable: trials
recorded as finished are not run again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

FINISHED = ("completed", "failed", "diverged", "pruned")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, fingerprint TEXT NOT NULL,
    spec TEXT NOT NULL, created REAL NOT NULL, runs INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS trials (
    number INTEGER PRIMARY KEY, params TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    worker TEXT, starts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, seconds REAL,
    epochs INTEGER NOT NULL DEFAULT 0, metrics TEXT, best REAL, error_type TEXT, error TEXT,
    traceback TEXT, model_dir TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    trial INTEGER NOT NULL, epoch INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (trial, epoch));
"""


class RunStore:
    """A sweep's SQLite store. Use as a context manager; every write commits at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """All or nothing: a client killed mid-write leaves the previous state, never half of a trial."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def begin_run(self, name: str, fingerprint: str, spec: dict[str, Any], trials: list[dict[str, Any]]) -> int:
        """Record the sweep (or check it matches the one recorded) and its trials; return the run count."""
        row = self.db.execute("SELECT fingerprint, spec FROM sweep WHERE id = 1").fetchone()
        if row is not None and row["fingerprint"] != fingerprint:
            old = json.loads(row["spec"])
            changed = sorted(k for k in spec if k not in ("runs_dir", "max_concurrent") and old.get(k) != spec[k])
            raise ConfigError(
                f"A different sweep named '{name}' is already in {self.path.parent} (changed: "
                f"{', '.join(changed) or 'trials'}). Rerun it unchanged to resume, pick another name, or pass "
                "--new (new=True) to set the old run aside and start afresh.")
        with self._transaction():
            if row is None:
                self.db.execute("INSERT INTO sweep (id, name, fingerprint, spec, created, runs) "
                                "VALUES (1, ?, ?, ?, ?, 0)", (name, fingerprint, json.dumps(spec), time.time()))
                self.db.executemany("INSERT INTO trials (number, params) VALUES (?, ?)",
                                    [(i, json.dumps(p)) for i, p in enumerate(trials)])
            self.db.execute("UPDATE sweep SET runs = runs + 1 WHERE id = 1")
        return int(self.db.execute("SELECT runs FROM sweep WHERE id = 1").fetchone()[0])

    def unfinished(self) -> list[int]:
        marks = ",".join("?" * len(FINISHED))
        rows = self.db.execute(f"SELECT number FROM trials WHERE state NOT IN ({marks}) ORDER BY number", FINISHED)
        return [r[0] for r in rows]

    def add_trial(self, number: int, params: dict[str, Any]) -> None:
        """Record a trial created during the run (TPE asks); a no-op if it is already there."""
        self.db.execute("INSERT OR IGNORE INTO trials (number, params) VALUES (?, ?)",
                        (number, json.dumps(params)))

    def params(self, number: int) -> dict[str, Any]:
        return json.loads(self.db.execute("SELECT params FROM trials WHERE number = ?", (number,)).fetchone()[0])

    def trial_started(self, number: int, worker: str, when: float) -> None:
        self.db.execute("UPDATE trials SET state = 'running', worker = ?, started = ?, starts = starts + 1 "
                        "WHERE number = ? AND state NOT IN ('completed', 'failed', 'diverged', 'pruned')",
                        (worker, when, number))

    def record_epoch(self, number: int, record: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO epochs (trial, epoch, record) VALUES (?, ?, ?)",
                        (number, int(record["epoch"]), json.dumps(record)))

    def finish_trial(self, number: int, outcome: dict[str, Any], best: float | None,
                     model_dir: str | None) -> None:
        """Record a trial's end (state, metrics, error) and its full history in one transaction."""
        history = outcome.get("history", [])
        with self._transaction():
            self.db.execute("DELETE FROM epochs WHERE trial = ?", (number,))
            self.db.executemany("INSERT INTO epochs (trial, epoch, record) VALUES (?, ?, ?)",
                                [(number, int(r["epoch"]), json.dumps(r)) for r in history])
            self.db.execute(
                "UPDATE trials SET state = ?, worker = COALESCE(?, worker), started = COALESCE(?, started), "
                "finished = ?, seconds = ?, epochs = ?, metrics = ?, best = ?, error_type = ?, error = ?, "
                "traceback = ?, model_dir = ? WHERE number = ?",
                (outcome["state"], outcome.get("worker"), outcome.get("started"), outcome.get("finished"),
                 outcome.get("seconds"), len(history), json.dumps(history[-1] if history else {}), best,
                 outcome.get("error_type"), outcome.get("error"), outcome.get("traceback"), model_dir, number))

    def trials(self) -> list[dict[str, Any]]:
        """Every trial row, parameters and last metrics decoded."""
        return [_decode(r) for r in self.db.execute("SELECT * FROM trials ORDER BY number")]

    def trial(self, number: int) -> dict[str, Any]:
        """One trial row, decoded."""
        return _decode(self.db.execute("SELECT * FROM trials WHERE number = ?", (number,)).fetchone())

    def history(self, number: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT record FROM epochs WHERE trial = ? ORDER BY epoch", (number,))
        return [json.loads(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state")}


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "params": json.loads(row["params"]), "metrics": json.loads(row["metrics"] or "{}")}


def best_of(history: Iterable[dict[str, Any]], metric: str, mode: str) -> float | None:
    """The best value of ``metric`` over a history (None when it was never finite)."""
    values = [r[metric] for r in history if isinstance(r.get(metric), int | float)]
    if not values:
        return None
    return min(values) if mode == "min" else max(values)
