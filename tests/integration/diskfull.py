"""A workload that fills its disk on purpose, importable by name (``tests.integration.diskfull:FillingXor``)."""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from pathlib import Path

from training.params import Param
from training.workloads.xor import Xor


class FillingXor(Xor):
    """xor whose trial with lr == ``fill_on_lr`` grows the file ``fill`` until its filesystem is full, then
    trains on: the disk fills up mid-sweep, once every other trial is recorded as completed in a run store
    beside ``fill`` (recording a trial deletes its resume checkpoint: space freed after the fill would let
    the sweep's own writes through). Once only: ``fill``.once marks it done (a rerun does not fill it
    again)."""

    name = "filling-xor"
    params = (*Xor.params,
              Param("fill", str, "", "the file to grow until the disk is full (empty: never)"),
              Param("fill_on_lr", float, 0.0, "only the trial with this lr fills it", low=0.0, high=100.0))

    def load_data(self, params, seed):
        if params["fill"] and params["lr"] == params["fill_on_lr"]:
            _fill_once(Path(params["fill"]), params["fill_on_lr"])
        return super().load_data(params, seed)


def _fill_once(path: Path, lr: float) -> None:
    once = path.with_name(path.name + ".once")
    if once.exists():
        return
    once.touch()
    _wait_for_the_others(path.parent, lr)
    chunk = b"\0" * (1 << 16)
    with path.open("ab") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def _wait_for_the_others(runs: Path, lr: float, timeout: float = 120.0) -> None:
    """Until every trial but the filling one (``lr``) is recorded as completed in a run store under ``runs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for store in runs.glob("*/store.sqlite"):
            try:
                with sqlite3.connect(store, timeout=5) as db:
                    rows = db.execute("SELECT params, state FROM trials").fetchall()
            except sqlite3.OperationalError:  # still being created
                continue
            others = [state for params, state in rows if json.loads(params).get("lr") != lr]
            if others and all(state == "completed" for state in others):
                return
        time.sleep(0.05)
    raise TimeoutError(f"the other trials did not complete in a run store under {runs} within {timeout:.0f} s")
