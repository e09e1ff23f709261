"""A workload that fills its disk on purpose, importable by name (``tests.integration.diskfull:FillingXor``)."""

from __future__ import annotations

import errno
import sqlite3
import time
from pathlib import Path

from training.params import Param
from training.workloads.xor import Xor


class FillingXor(Xor):
    """xor whose trial with lr == ``fill_on_lr`` grows the file ``fill`` until its filesystem is full, then
    trains on: the disk fills up mid-sweep, once a trial is recorded as completed in a run store beside
    ``fill``. Once only: ``fill``.once marks it done (a rerun does not fill it again)."""

    name = "filling-xor"
    params = (*Xor.params,
              Param("fill", str, "", "the file to grow until the disk is full (empty: never)"),
              Param("fill_on_lr", float, 0.0, "only the trial with this lr fills it", low=0.0, high=100.0))

    def load_data(self, params, seed):
        if params["fill"] and params["lr"] == params["fill_on_lr"]:
            _fill_once(Path(params["fill"]))
        return super().load_data(params, seed)


def _fill_once(path: Path) -> None:
    once = path.with_name(path.name + ".once")
    if once.exists():
        return
    once.touch()
    _wait_for_a_completed_trial(path.parent)
    chunk = b"\0" * (1 << 16)
    with path.open("ab") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def _wait_for_a_completed_trial(runs: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for store in runs.glob("*/store.sqlite"):
            try:
                with sqlite3.connect(store, timeout=5) as db:
                    if db.execute("SELECT COUNT(*) FROM trials WHERE state = 'completed'").fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # still being created
                pass
        time.sleep(0.1)
    raise TimeoutError(f"no trial completed in a run store under {runs} within {timeout:.0f} s")
