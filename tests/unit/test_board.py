"""The Training page's board: how training events become the picture the page shows (no cluster needed;
tests/integration/test_dashboard.py runs it on a real one)."""

from __future__ import annotations

import json

import pytest

from training.board import MAX_JOBS, Board


def job(board: Board, run: str = "r1") -> dict:
    return next(j for j in board.snapshot()["jobs"] if j["run"] == run)


def test_epochs_that_arrive_before_the_job_announcement_are_kept():
    board = Board()
    board.apply({"kind": "epoch", "job": "s", "run": "r1", "trial": 2, "worker": "tcp://w:1",
                 "record": {"epoch": 1, "val_loss": 0.9}})
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep", "metric": "val_loss", "mode": "min",
                 "epochs": 3, "trials": [{"number": 2, "params": {"lr": 0.1}},
                                         {"number": 3, "params": {"lr": 1}}]})
    view = job(board)
    assert [t["number"] for t in view["trials"]] == [2, 3]
    assert view["trials"][0]["curve"] == [[1, 0.9]] and view["trials"][0]["state"] == "running"
    assert view["trials"][1]["state"] == "queued" and view["counts"] == {"running": 1, "queued": 1}


def test_a_queued_announcement_that_comes_after_its_trials_start_leaves_it_running():
    """The coordinator's announcements gather for a moment before they leave; a trial's start comes from its
    worker at once, so its "queued" may come second: the trial stays running. A promoted ASHA trial's next
    stretch is queued again, and runs again when it starts."""
    board = Board()
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep"})
    board.apply({"kind": "start", "job": "s", "run": "r1", "trial": 0, "worker": "tcp://w:1"})
    board.apply({"kind": "queued", "job": "s", "run": "r1", "trial": 0, "params": {"lr": 0.1}})
    assert [(t["state"], t["params"]) for t in job(board)["trials"]] == [("running", {"lr": 0.1})]
    board.apply({"kind": "end", "job": "s", "run": "r1", "trial": 0, "state": "promoted", "best": 0.5})
    board.apply({"kind": "queued", "job": "s", "run": "r1", "trial": 0, "params": {"lr": 0.1}})
    assert job(board)["trials"][0]["state"] == "queued"
    board.apply({"kind": "start", "job": "s", "run": "r1", "trial": 0, "worker": "tcp://w:2"})
    assert job(board)["trials"][0]["state"] == "running"


def test_a_repeated_epoch_replaces_its_point_and_the_curve_stays_in_epoch_order():
    board = Board()
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep", "metric": "val_loss", "mode": "min"})
    for epoch, value in ((2, 0.5), (1, 0.8), (2, 0.4)):
        board.apply({"kind": "epoch", "job": "s", "run": "r1", "trial": 0, "record": {"epoch": epoch,
                                                                                      "val_loss": value}})
    trial = job(board)["trials"][0]
    assert trial["curve"] == [[1, 0.8], [2, 0.4]] and trial["epoch"] == 2 and trial["metrics"]["val_loss"] == 0.4


def test_best_follows_the_mode_among_trials_with_a_model_and_ties_go_to_the_lower_trial_number():
    board = Board()
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep", "metric": "acc", "mode": "max"})
    for trial, value in ((0, 0.7), (1, 0.9), (2, 0.9), (3, 0.95)):
        board.apply({"kind": "epoch", "job": "s", "run": "r1", "trial": trial,
                     "record": {"epoch": 1, "acc": value}})
    assert job(board)["best"] is None  # nothing has ended: no trial has a model yet
    for trial, state in ((0, "completed"), (1, "pruned"), (2, "completed"), (3, "failed")):
        board.apply({"kind": "end", "job": "s", "run": "r1", "trial": trial, "state": state,
                     "best": 0.7 if trial == 0 else 0.9 if trial < 3 else None})
    view = job(board)
    assert view["best"] == 1 and view["best_value"] == 0.9  # trial 3's curve was higher, but it failed


def test_job_end_closes_unfinished_trials_and_a_vanished_client_is_shown():
    board = Board()
    board.apply({"kind": "job", "job": "a", "run": "r1", "type": "sweep", "client": "c1",
                 "trials": [{"number": 0}, {"number": 1}]})
    board.apply({"kind": "end", "job": "a", "run": "r1", "trial": 0, "state": "completed", "best": 0.1})
    board.apply({"kind": "job-end", "job": "a", "run": "r1", "state": "stopped"})
    assert [t["state"] for t in job(board)["trials"]] == ["completed", "cancelled"]
    board.apply({"kind": "job", "job": "b", "run": "r2", "type": "ddp", "client": "c2",
                 "trials": [{"number": 0, "state": "running"}, {"number": 1, "state": "running"}]})
    board.remove_client(None, "c2")
    assert job(board, "r2")["state"] == "client gone" and job(board)["state"] == "stopped"


def test_a_ddp_restart_is_listed_and_ranks_it_went_on_without_are_cancelled():
    board = Board()
    ranks = [{"number": r, "worker": f"tcp://w:{r}", "state": "running"} for r in (0, 1)]
    board.apply({"kind": "job", "job": "d", "run": "r1", "type": "ddp", "trials": ranks})
    board.apply({"kind": "restart", "job": "d", "run": "r1", "attempt": 1, "reason": "rank 1 on tcp://w:1 left",
                 "world_size": 1, "epoch": 3, "time": 5.0})
    board.apply({"kind": "job", "job": "d", "run": "r1", "type": "ddp", "trials": ranks[:1]})
    view = job(board)
    assert view["restarts"] == [{"attempt": 1, "reason": "rank 1 on tcp://w:1 left", "epoch": 3, "world_size": 1,
                                 "time": 5.0}]
    assert [t["state"] for t in view["trials"]] == ["running", "cancelled"]
    assert "went on with 1 ranks" in view["trials"][1]["error"]


def test_old_finished_jobs_are_forgotten_but_running_ones_never():
    board = Board()
    board.apply({"kind": "job", "job": "long", "run": "running", "type": "sweep"})
    for i in range(MAX_JOBS + 10):
        board.apply({"kind": "job", "job": f"j{i}", "run": f"r{i}", "type": "sweep"})
        board.apply({"kind": "job-end", "job": f"j{i}", "run": f"r{i}", "state": "finished"})
    runs = [j["run"] for j in board.snapshot()["jobs"]]
    assert len(runs) <= MAX_JOBS + 1 and "running" in runs and f"r{MAX_JOBS + 9}" in runs and "r0" not in runs


def test_data_is_json_with_no_markup_even_for_markup_in_parameters():
    board = Board()
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep",
                 "trials": [{"number": 0, "params": {"tag": "</script><script>alert(1)</script>"}}]})
    text = board.snapshot_json()
    assert "<" not in text
    assert json.loads(text)["jobs"][0]["trials"][0]["params"]["tag"] == "</script><script>alert(1)</script>"
    assert board.snapshot_json() is text  # unchanged state: the same text, not serialised again


def test_what_a_workload_sends_stays_small_on_the_page():
    """3,000 metrics an epoch, a 20,000-character parameter and a 5 MB error made a 17 MB poll: the page keeps
    50 fields of a trial (its epoch and the sweep's metric among them), values and errors cut short."""
    board = Board()
    huge = {f"m{i}": float(i) for i in range(3000)}
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep", "metric": "m2999", "mode": "max",
                 "trials": [{"number": 0, "params": {"tag": "t" * 20000}}]})
    board.apply({"kind": "queued", "job": "s", "run": "r1", "trial": 1, "params": {"note": "n" * 20000}})
    board.apply({"kind": "epoch", "job": "s", "run": "r1", "trial": 0, "worker": "w",
                 "record": {"epoch": 1, **huge}})
    board.apply({"kind": "end", "job": "s", "run": "r1", "trial": 1, "state": "failed", "error": "e" * 5_000_000})
    board.apply({"kind": "job-end", "job": "s", "run": "r1", "state": "failed", "error": "j" * 5_000_000})
    text = board.snapshot_json()
    assert len(text) < 20_000, len(text)
    job = json.loads(text)["jobs"][0]
    first, second = job["trials"]
    assert len(first["metrics"]) == 50 and first["metrics"]["epoch"] == 1 and first["metrics"]["m2999"] == 2999.0
    assert first["curve"] == [[1, 2999.0]]  # the sweep's metric, though it came last of 3,000
    assert len(first["params"]["tag"]) <= 80 and len(second["params"]["note"]) <= 80
    assert len(second["error"]) <= 1000 and len(job["error"]) <= 1000
    long = "/home/user/projects/corpora/very-long-folder-name-for-datasets/2024-experiments/names_"
    board.apply({"kind": "job", "job": "p", "run": "r2", "type": "sweep",
                 "trials": [{"number": n, "params": {"data": f"{long}{tag}.txt"}} for n, tag in enumerate("ab")]})
    shown = [t["params"]["data"] for t in json.loads(board.snapshot_json())["jobs"][0]["trials"]]
    assert shown[0] != shown[1] and shown[1].endswith("names_b.txt"), shown  # its end tells them apart


@pytest.mark.parametrize("bad", [
    None, "text", [1, 2], {"kind": "epoch"}, {"kind": "nonsense", "job": "s", "run": "r1"},
    {"kind": "epoch", "job": "s", "run": "r1", "trial": "zero", "record": {"epoch": 1}},
    {"kind": "epoch", "job": "s", "run": "r1", "trial": 0, "record": "not a dict"},
    {"kind": "end", "job": "s", "run": "r1", "trial": 0, "state": "exploded"},
    {"kind": "job", "job": "s", "run": "r1", "trials": "many"},
    {"kind": "job", "job": ["s"], "run": "r1"},
])
def test_a_malformed_event_is_dropped_and_the_page_keeps_working(bad):
    board = Board()
    board.apply({"kind": "job", "job": "s", "run": "r1", "type": "sweep", "trials": [{"number": 0}]})
    board.apply(bad)
    board.apply({"kind": "job", "job": "s", "run": "r1", "trials": [{"number": 1, "state": "bogus"}]})
    board.apply({"kind": "epoch", "job": "s", "run": "r1", "trial": 0, "record": {"epoch": "one"}})
    view = json.loads(board.snapshot_json())["jobs"][0]
    assert [t["number"] for t in view["trials"]] == [0] and view["trials"][0]["state"] == "queued"


def test_a_resumed_trial_whose_announced_curve_came_as_tuples_goes_on_with_its_next_epochs():
    """A rerun announces each trial's curve so far; msgpack delivers its points as tuples, later epochs come
    as lists: the curve goes on in epoch order (mixing the two once broke the page's fold), and what is not a
    point is dropped."""
    board = Board()
    board.log_event("dask-train-page", ({"kind": "job", "job": "s", "run": "r1", "type": "sweep",
                                         "metric": "val_loss", "mode": "min", "trials": (
                                             {"number": 0, "state": "running", "curve": ((2, 0.6), (1, 0.9))},
                                             {"number": 1, "state": "running", "curve": "junk"},
                                             {"number": 2, "state": "running",
                                              "curve": ((1, "x"), (True, 1.0), (3,), [1, 0.8])})},))
    board.log_event("dask-train", {"kind": "epoch", "job": "s", "run": "r1", "trial": 0,
                                   "record": {"epoch": 3, "val_loss": 0.4}})
    board.log_event("dask-train", {"kind": "epoch", "job": "s", "run": "r1", "trial": 2,
                                   "record": {"epoch": 2, "val_loss": 0.7}})
    curves = {t["number"]: t["curve"] for t in job(board)["trials"]}
    assert curves == {0: [[1, 0.9], [2, 0.6], [3, 0.4]], 1: [], 2: [[1, 0.8], [2, 0.7]]}


def test_a_10000_trial_sweep_gives_the_page_a_bounded_selection_with_the_best_and_the_running_ones():
    board = Board()
    board.apply({"kind": "job", "job": "big", "run": "r1", "type": "sweep", "metric": "val_loss", "mode": "min",
                 "epochs": 2, "total": 10_000, "trials": []})
    batch = []
    for n in range(10_000):
        batch.append({"kind": "queued", "job": "big", "run": "r1", "trial": n, "params": {"lr": n / 1e4}})
        if n < 9_990:  # the last 10 are still running
            batch += [{"kind": "epoch", "job": "big", "run": "r1", "trial": n,
                       "record": {"epoch": 1, "val_loss": 1.0 + (n * 7919 % 10_000) / 1e4}},
                      {"kind": "end", "job": "big", "run": "r1", "trial": n, "state": "completed", "time": n + 1,
                       "best": 0.5 + (n * 7919 % 10_000) / 1e4, "best_epoch": 2,
                       "record": {"epoch": 2, "val_loss": 0.5 + (n * 7919 % 10_000) / 1e4}}]
        else:
            batch.append({"kind": "start", "job": "big", "run": "r1", "trial": n, "worker": "tcp://w:1"})
    board.log_event("dask-train-page", tuple(batch))  # announcements arrive in batches (msgpack: tuples)
    view = job(board)
    shown = {t["number"]: t for t in view["trials"]}
    assert len(shown) <= 200 and view["hidden"] == 10_000 - len(shown)
    assert view["counts"] == {"completed": 9_990, "running": 10}  # counts cover every trial
    assert view["best"] == 0 and view["best_value"] == 0.5 and shown[0]["curve"] == [[1, 1.0], [2, 0.5]]
    assert set(range(9_990, 10_000)) <= set(shown)  # every running trial
    assert set(range(9_940, 9_990)) <= set(shown)  # the latest finished
    assert sum(1 for t in shown.values() if t["curve"]) == 20  # curves of the best only
    assert len(board.snapshot_json()) < 200_000
