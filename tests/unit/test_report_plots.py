"""A sweep draws its report's plots on a background thread; back-to-back sweeps in one process draw theirs
at once. matplotlib's text layout (the log axis' ``10^{-1}`` labels) is not thread-safe: the plots are drawn
one report at a time, and every one comes out whole."""

from __future__ import annotations

import sys
import threading

from training.protocol import TrialRecord, TrialState
from training.report import RunSummary, write_plots


def _run(folder, name: str) -> RunSummary:
    rates = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]  # a log axis: mathtext tick labels
    spec = {"name": name, "workload": "xor", "search": "random", "epochs": 3, "metric": "val_loss",
            "mode": "min", "space": {"lr": {"loguniform": [0.001, 0.3]}}}
    trials = [TrialRecord(number=n, params={"lr": lr}, state=TrialState.COMPLETED, worker="cpu-0", epochs=3,
                          best=1.0 / (n + 1), best_epoch=3, seconds=1.0) for n, lr in enumerate(rates)]
    histories = {n: [{"epoch": e, "val_loss": 1.0 / (n + e)} for e in (1, 2, 3)] for n in range(len(rates))}
    folder.mkdir()
    return RunSummary(folder, spec, trials, histories)


def test_reports_drawn_on_threads_at_once_all_come_out_whole(tmp_path):
    runs = [_run(tmp_path / f"run{i}", f"sweep-{i}") for i in range(6)]
    errors: list[BaseException] = []

    def draw(run: RunSummary) -> None:
        try:
            write_plots(run)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(run,)) for run in runs]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often: drawing at once overlaps in matplotlib's parser
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for run in runs:
        for name in ("curves.png", "params.png"):
            data = (run.run_dir / "report" / name).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
