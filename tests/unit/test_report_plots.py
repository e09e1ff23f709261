"""A sweep draws its report's plots on a background thread; back-to-back sweeps in one process draw theirs
at once. matplotlib's text layout (the log axis' ``10^{-1}`` labels) is not thread-safe: the plots are drawn
one report at a time, and every one comes out whole."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from training.protocol import TrialOutcome, TrialRecord, TrialState, best_epoch
from training.report import RunSummary, write_plots
from training.store import RunStore
from training.sweep_spec import SweepSpec, write_spec_file


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


_CLOSING_SERVER = r"""
import importlib.util, os, sys
from pathlib import Path
from training import report, sweep
from training.protocol import TrialRecord, TrialState
from training.store import RunStore

missed = sys.argv[2]
assert "matplotlib" not in sys.modules and missed not in sys.modules
spec = importlib.util.find_spec(missed)
site = os.path.dirname(os.path.dirname(spec.origin))  # the sys.path entry it is found in
folder = "/nonexistent/dask-scratch-space/scheduler-x"


class ClosingServer:
    # The finder of a Dask server's folder on sys.path: the server closes (and takes its folder out of
    # sys.path) just as an import walks sys.path for `missed`, which is in the next entry.
    def find_spec(self, name, target=None):
        if name == missed and folder in sys.path:
            sys.path.remove(folder)
        return None


sys.path.insert(sys.path.index(site), folder)
sys.path_importer_cache[folder] = ClosingServer()
attempts = []
draw = report.write_plots
report.write_plots = lambda run: attempts.append(1) or draw(run)
sweep._draw(Path(sys.argv[1]))
print(len(attempts), "removed" if folder not in sys.path else "kept")
"""


@pytest.mark.parametrize("missed", ["fontTools", "kiwisolver"])
def test_plots_are_drawn_while_a_closing_dask_server_takes_its_folder_out_of_sys_path(tmp_path, missed):
    """A cluster closed right after its sweep removes its servers' folder from ``sys.path`` while the
    background thread imports matplotlib; the import then skips the entry after it and misses an installed
    module. Here the removal is made to land inside the walk for one: ``fontTools`` (imported deep in
    matplotlib, as CI saw) or ``kiwisolver`` (imported by ``matplotlib/__init__``, which fails and leaves its
    submodules behind). The first attempt fails, the second draws the plots, and nothing is logged."""
    import subprocess

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = SweepSpec.create(name="run", workload="xor", space={"lr": [0.1, 0.2, 0.3]}, epochs=2, metric="val_loss",
                            runs_dir=str(tmp_path))
    write_spec_file(spec)
    with RunStore(run_dir / "store.sqlite") as store:  # a finished sweep of three trials
        store.begin_run("run", spec.fingerprint(), spec.to_json(), spec.trials())
        for n in range(3):
            history = [{"epoch": e, "val_loss": 1.0 / (n + e)} for e in (1, 2)]
            store.trial_started(n, "cpu-0", 1.0)
            outcome = TrialOutcome(n, TrialState.COMPLETED, history=history, seconds=1.0)
            store.finish_trial(outcome, TrialState.COMPLETED, best_epoch(history, "val_loss", "min"), None)
    done = subprocess.run([sys.executable, "-c", _CLOSING_SERVER, str(run_dir), missed], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "removed"]  # the first attempt lost the entry and failed
    assert "Could not draw" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    for name in ("curves.png", "params.png"):
        assert (run_dir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_made_in_python_with_two_hundred_thousand_values_gets_its_report(tmp_path):
    """A sweep made in Python may list 100,000 values a hyperparameter: its run's sweep.yaml (2.9 MB here) is
    far larger than a sweep file may be, and the spec is read back from the run store's JSON for the report
    and `dask-train results` (its YAML read 4.8 s here for a 5 MB one). Its many curves are drawn, the unlabelled
    ones as one collection: one-epoch trials show as dots, longer ones as lines."""
    from training.limits import MAX_SWEEP_FILE_BYTES
    from training.report import read_run, write_report
    from training.space import choice

    rates, noises = [round(0.1 + n * 1e-6, 7) for n in range(100_000)], [n / 200_000 for n in range(100_000)]
    spec = SweepSpec.create(name="big", workload="xor", space={"lr": choice(rates), "noise": choice(noises)},
                            search="random", num_trials=40, epochs=3, metric="val_loss", runs_dir=str(tmp_path))
    run_dir = spec.run_dir
    run_dir.mkdir()
    write_spec_file(spec)
    assert (run_dir / "sweep.yaml").stat().st_size > 2 * 2**20 > 30 * MAX_SWEEP_FILE_BYTES
    with RunStore(run_dir / "store.sqlite") as store:
        store.begin_run("big", spec.fingerprint(), spec.to_json(), spec.trials())
        for n in range(40):  # half of them one epoch long, half three
            history = [{"epoch": e, "val_loss": 1.0 / (n + e)} for e in range(1, 2 + 2 * (n % 2))]
            store.trial_started(n, "cpu-0", 1.0)
            outcome = TrialOutcome(n, TrialState.COMPLETED, history=history, seconds=1.0)
            store.finish_trial(outcome, TrialState.COMPLETED, best_epoch(history, "val_loss", "min"), None)
    run = read_run(run_dir)
    assert run.spec == json.loads(json.dumps(spec.to_json())) and len(run.trials) == 40
    assert SweepSpec.create(**run.spec).fingerprint() == spec.fingerprint()
    folder = write_report(run)
    assert "# Sweep big" in (folder / "summary.md").read_text()
    for name in ("curves.png", "params.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
