""""Best" is the best epoch, everywhere: a plain grid and an ASHA sweep in which trials peak before their
last epoch. The best trial and its value agree across SweepResult, results.csv, summary.md, `dask-train
results` and the Training page's data, and the saved model reproduces that value."""

from __future__ import annotations

import csv
import json
import re
import urllib.request

import pytest
import torch

from cluster import ClusterSpec, Target, open_client
from tests.helpers import poll_for, run_cli
from training import Sweep
from training.dashboard import enable_page
from training.loop import Trainer
from training.model_file import load_model
from training.workloads import get_workload

pytestmark = pytest.mark.timeout(300)

# 40 noisy points, a wide net and big steps: validation loss bottoms out, then climbs (overfitting).
OVERFIT = {"train_size": 40, "noise": 0.5, "hidden": 64, "batch_size": 8}


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        yield c


def _page_job(page: str, name: str) -> dict:
    with urllib.request.urlopen(page + "/data.json", timeout=10) as response:
        jobs = json.loads(response.read())["jobs"]
    return next((j for j in jobs if j["name"] == name and j["state"] == "finished"), None)


def _val_loss_of(model_dir) -> float:
    """The saved model's validation loss, computed afresh on the trial's own validation split."""
    trained = load_model(model_dir)
    work = get_workload(trained.workload)
    trainer = Trainer(work, trained.params, work.load_data(trained.params, trained.seed),
                      device=torch.device("cpu"))
    trainer.model.load_state_dict(trained.model.state_dict())
    return trainer.evaluate()["val_loss"]


@pytest.mark.parametrize("kind", ["grid", "asha"])
def test_every_view_names_the_same_best_trial_and_its_best_epoch(client, tmp_path, kind):
    # ASHA one trial at a time: the first trial to reach a rung is promoted, so trial 0 (lr 1.0, which
    # overfits late) runs all 27 epochs on every run, whatever the timing.
    extra = {"scheduler": "asha", "grace_epochs": 3, "reduction_factor": 3, "max_concurrent": 1} \
        if kind == "asha" else {}
    name = f"best-{kind}"
    result = Sweep("xor", {"lr": [1.0, 0.3, 2.0, 4.0]}, params=OVERFIT, epochs=27, metric="val_loss",
                   name=name, runs_dir=str(tmp_path), **extra).run(client)
    run_dir = tmp_path / name
    table = result.table.set_index("trial")
    # Some trial peaked well before its last epoch, so "best" and "last" really differ here.
    peaked = table[(table["best_epoch"] < table["epochs"])
                   & (table["final_val_loss"] > table["best_val_loss"] + 0.01)]
    assert len(peaked) >= 1, table[["state", "best_epoch", "epochs", "final_val_loss", "best_val_loss"]]
    if kind == "asha":
        assert (table["state"] == "pruned").any()

    # SweepResult: the best trial is the one with the lowest best-epoch value among those with a model.
    ranked = table[table["state"].isin(["completed", "pruned"])]
    number = int(ranked["best_val_loss"].idxmin())
    value, epoch = float(ranked.loc[number, "best_val_loss"]), int(ranked.loc[number, "best_epoch"])
    assert result.best_trial == number and result.best.extra["trial"] == number
    assert result.best.best_epoch == epoch and result.best.metrics["val_loss"] == pytest.approx(value)
    # results.csv marks the same trial, with the same value and epoch.
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    [marked] = [r for r in rows if r["best"] == "True"]
    assert int(marked["trial"]) == number and float(marked["best_val_loss"]) == pytest.approx(value)
    assert int(float(marked["best_epoch"])) == epoch
    # summary.md and `dask-train results`.
    summary = (run_dir / "report" / "summary.md").read_text()
    assert f"## Best trial: {number:04d}" in summary
    assert f"- val_loss: {value:.4g} at epoch {epoch} of 27" in summary
    shown = run_cli("results", str(run_dir))
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"Best trial: {number:04d} val_loss=\S+ at epoch {epoch} ", shown.stdout), shown.stdout
    # The Training page.
    page = enable_page(client)
    job = poll_for(lambda: _page_job(page, name), 30, what="the finished sweep on the Training page")
    assert job["best"] == number and job["best_value"] == pytest.approx(value)
    page_trial = next(t for t in job["trials"] if t["number"] == number)
    assert page_trial["best_epoch"] == epoch
    # The saved model is that best epoch's: evaluating it gives the recorded value.
    assert _val_loss_of(run_dir / "trials" / f"{number:04d}") == pytest.approx(value, rel=1e-5)
    for trial in peaked.index:  # and a trial that got worse afterwards saved its best, not its last
        if table.loc[trial, "state"] in ("completed", "pruned"):
            saved = _val_loss_of(run_dir / "trials" / f"{trial:04d}")
            assert saved == pytest.approx(table.loc[trial, "best_val_loss"], rel=1e-5)
            assert saved < table.loc[trial, "final_val_loss"]
