"""The live sweep view, fed the coordinator's hooks in the order they arrive from a real sweep."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from training.progress import LiveSweep
from training.protocol import TrialRecord, TrialState
from training.results_view import results_table
from training.sweep_spec import SweepSpec


def _spec() -> SweepSpec:
    return SweepSpec.create(name="view", workload="xor", space={"lr": [0.001, 0.01, 0.1]}, epochs=2,
                            runs_dir="runs")


def _ended(number: int, worker: str, best: float) -> TrialRecord:
    return TrialRecord(number=number, params={"lr": 0.001}, state=TrialState.COMPLETED, worker=worker, epochs=2,
                       best=best, best_epoch=2, seconds=1.5, metrics={"val_accuracy": best})


def _view(terminal: bool) -> tuple[LiveSweep, io.StringIO]:
    out = io.StringIO()
    view = LiveSweep(Console(file=out, width=80, force_terminal=terminal, highlight=False))
    view.on_start(_spec(), total=3, todo=3, dashboard="http://127.0.0.1:8787/status")
    view.on_page("http://127.0.0.1:8787/training")
    return view, out


def test_a_start_on_a_worker_is_shown_after_the_end_of_its_previous_trial():
    view, out = _view(terminal=False)
    view.on_trial_start(0, "cpu-0")
    view.on_trial_start(1, "cpu-1")
    view.on_epoch(0, {"epoch": 1, "val_accuracy": 0.5, "train_loss": 0.7})
    view.on_trial_start(2, "cpu-0")  # its start event came in the same poll as trial 0's result
    view.on_trial_end(_ended(0, "cpu-0", 0.6), {}, None)
    lines = out.getvalue().splitlines()
    started_2 = next(i for i, line in enumerate(lines) if "trial 0002 started on cpu-0" in line)
    ended_0 = next(i for i, line in enumerate(lines) if "trial 0000 completed" in line)
    assert ended_0 < started_2
    assert any("trial 0000 cpu-0 epoch 1/2 val_accuracy=0.5 train_loss=0.7" in line for line in lines)


def test_a_start_held_back_is_shown_at_its_first_epoch_or_end_when_those_come_first():
    """Trial 0 fails in a task of several, and its end is known only when the task ends: trial 1, after it
    on the same worker, reports its epoch and its end first. Trial 1's start is shown then, once, with its
    worker, and the worker does not stay busy with it: trial 2's start shows at once."""
    view, out = _view(terminal=False)
    view.on_trial_start(0, "cpu-0")
    view.on_trial_start(1, "cpu-0")  # held back: cpu-0's trial 0 has not ended
    view.on_epoch(1, {"epoch": 1, "val_accuracy": 0.5})
    view.on_trial_end(_ended(1, "cpu-0", 0.6), {}, None)
    failed = TrialRecord(number=0, params={"lr": 0.001}, state=TrialState.FAILED, worker="cpu-0", epochs=0,
                         seconds=0.1, error_type="RuntimeError")
    view.on_trial_end(failed, {}, None)
    view.on_trial_start(2, "cpu-0")
    lines = out.getvalue().splitlines()
    at = {text: next(i for i, line in enumerate(lines) if text in line)
          for text in ("trial 0001 started on cpu-0", "trial 0001 cpu-0 epoch 1/2", "trial 0001 completed",
                       "trial 0000 failed RuntimeError", "trial 0002 started on cpu-0")}
    assert list(at.values()) == sorted(at.values())
    assert sum("trial 0001 started" in line for line in lines) == 1
    assert "1 running" in view.status_line()  # trial 2 only


def test_counts_follow_the_trials_actually_running_and_the_bar_moves_with_epochs():
    view, _ = _view(terminal=True)
    view.on_trial_start(0, "cpu-0")
    view.on_trial_start(1, "cpu-1")
    assert "2 running, 1 pending" in view.status_line()
    view.on_epoch(0, {"epoch": 1, "val_accuracy": 0.5})
    view.on_epoch(1, {"epoch": 1, "val_accuracy": 0.4})
    assert view.progress.tasks[0].completed == 2 and view.progress.tasks[0].total == 6
    view.on_epoch(0, {"epoch": 2, "val_accuracy": 0.6})  # the coordinator delivers a result's last epochs first
    view.on_trial_end(_ended(0, "cpu-0", 0.6), {}, _ended(0, "cpu-0", 0.6))
    assert view.status_line() == "trials: 1 running, 1 pending, 1 completed, best: trial 0000 val_accuracy=0.6"
    assert view.progress.tasks[0].completed == 3
    pruned = TrialRecord(number=1, params={}, state=TrialState.PRUNED, worker="cpu-1", epochs=1, best=0.4)
    view.on_trial_end(pruned, {}, _ended(0, "cpu-0", 0.6))
    assert view.progress.tasks[0].completed == 4  # its epoch, and the one it will never train


def test_the_running_table_has_one_row_per_running_trial_with_its_epoch_and_metrics():
    view, _ = _view(terminal=True)
    view.on_trial_start(0, "cpu-0")
    view.on_trial_start(1, "cpu-1")
    view.on_epoch(1, {"epoch": 1, "val_accuracy": 0.4, "train_loss": 0.69, "seconds": 0.2})
    out = io.StringIO()
    Console(file=out, width=80).print(view.running_table())
    rows = [line for line in out.getvalue().splitlines() if "cpu-" in line]
    assert len(rows) == 2
    assert "0001" in rows[1] and "1/2" in rows[1] and "val_accuracy=0.4 train_loss=0.69" in rows[1]
    assert "seconds" not in out.getvalue()


def test_at_80_columns_every_searched_value_is_distinct_and_nothing_is_cut():
    trials = [TrialRecord(number=i, params={"batch_size": b, "lr": lr, "dropout": 0.123456}, worker=f"cpu-{i % 2}",
                          state=TrialState.COMPLETED, best=0.5 + i / 1000, best_epoch=8, epochs=8, seconds=71.25,
                          metrics={"val_loss": 0.51})
              for i, (b, lr) in enumerate([(4096, 0.001), (4096, 0.01), (16384, 0.001), (16384, 0.01)])]
    out = io.StringIO()
    Console(file=out, width=80).print(results_table(trials, ["batch_size", "lr", "dropout"], "val_loss", "min",
                                                    width=80, title=f"Sweep in {Path('runs') / 'pets'}"))
    text = out.getvalue()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    rows = [line.split() for line in text.splitlines() if "cpu-" in line]
    assert [row[-1] if "cpu" in row[-1] else next(c for c in row if c.startswith("cpu-")) for row in rows] == \
        ["cpu-0", "cpu-1", "cpu-0", "cpu-1"]
    assert [next(c for c in row if c in ("0.001", "0.01")) for row in rows] == ["0.001", "0.01", "0.001", "0.01"]


def test_text_from_the_sweep_is_shown_as_it_is_never_as_markup_or_emoji_codes():
    """Run directories, worker names, hyperparameter names and values are data: on a console the caller made
    (rich reads markup and emoji codes by default), ``[bold]`` and ``:x:`` are printed, not applied."""
    out = io.StringIO()
    view = LiveSweep(Console(file=out, width=200, force_terminal=False))
    spec = SweepSpec.create(name="view", workload="xor", space={"lr": [0.1]}, epochs=1, runs_dir="runs/[bold]:x:")
    worker = "gpu-[red]-:smile:"
    with view:
        view.on_start(spec, total=2, todo=2, dashboard=None)
        view.on_trial_start(0, worker)
        view.on_trial_start(1, "cpu-[s]")
        view.on_trial_end(TrialRecord(number=0, params={"lr": 0.1}, state=TrialState.FAILED, worker=worker,
                                      error_type="Err[/]"), {TrialState.FAILED: 1}, None)
    Console(file=out, width=200).print(view.running_table())  # trial 1, running
    trials = [TrialRecord(number=0, params={"[i]": "[b]:fire:"}, state=TrialState.COMPLETED, worker="w[u]",
                          best=0.5, best_epoch=1, epochs=1, seconds=1.0)]
    Console(file=out, width=200).print(results_table(trials, ["[i]"], "val_loss", "min", width=200,
                                                     title="Sweep '[blink]'"))
    text = out.getvalue()
    for shown in ("runs/[bold]:x:", f"trial 0000 started on {worker}", "Err[/]", "[i]", "[b]:fire:", "w[u]",
                  "Sweep '[blink]'"):
        assert shown in text, shown
    running = [line.split()[:3] for line in text.splitlines() if line.startswith("0001")]
    assert running == [["0001", "cpu-[s]", "0/1"]]


def test_a_10000_trial_table_shows_the_best_and_the_failures_and_says_where_the_rest_are():
    from training.results_view import MAX_ROWS

    Row = TrialRecord
    rows = [Row(i, {"lr": i / 1e4}, TrialState.COMPLETED, best=1.0 + (i * 7919 % 10_000) / 1e4, epochs=1)
            for i in range(10_000)]
    rows[5_000] = Row(5_000, {"lr": 0.5}, TrialState.FAILED, error_type="ValueError")
    table = results_table(rows, ["lr"], "val_loss", "min", width=120, title="Sweep 'big'")
    shown = [int(str(c).rstrip(" *")) for c in table.columns[0].cells]
    assert len(shown) == MAX_ROWS and shown == sorted(shown)
    assert 0 in shown and 5_000 in shown  # the best (trial 0: 1.0) and the failed one
    assert "The best 59 of 10,000 trials and the first 1 that failed; results.csv has them all." in table.title


@pytest.mark.parametrize("terminal", [True, False])
def test_lines_above_the_live_area_are_printed_together_in_order_and_none_is_held_for_long(terminal):
    """Each print above the live area redraws it: a burst of trial starts and ends is printed a few lines
    at a time (at most every 0.25 s), in order, and the last of a burst comes out on its own within a
    moment, without waiting for the next event. The same into a log (no terminal: no live area)."""
    import time

    from tests.helpers import poll_for

    out = io.StringIO()
    view = LiveSweep(Console(file=out, width=100, force_terminal=terminal, highlight=False))
    assert view.live == terminal
    prints = []  # the view's own prints (the live area's refreshes print a control code)
    original = view.console.print
    view.console.print = lambda *a, **k: (a and isinstance(a[0], str) and prints.append(a), original(*a, **k))[1]
    with view:
        view.on_start(_spec(), total=200, todo=200, dashboard=None)
        prints.clear()
        started = time.monotonic()
        for number in range(200):
            view.on_trial_start(number, f"cpu-{number % 2}")
            view.on_trial_end(_ended(number, f"cpu-{number % 2}", 0.5), {}, None)
        took = time.monotonic() - started
        poll_for(lambda: "trial 0199 completed" in out.getvalue(), 10, what="the burst's last line")
        assert len(prints) <= 2 + took / 0.25, f"{len(prints)} prints for 400 lines in {took:.2f} s"
    text = out.getvalue()
    positions = [text.index(f"trial {n:04d} {what}") for n in range(200) for what in ("started", "completed")]
    assert positions == sorted(positions)
    print(f"400 lines in {len(prints)} prints over {took:.2f} s")
