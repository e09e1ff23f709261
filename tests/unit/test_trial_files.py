"""Where a sweep trial leaves its model: a worker that sees the coordinator's own run directory (its mark
holds this run's token) writes the model directory there and sends only its path; one that does not (a
folder of the same path on another machine) sends the weights, so no model is left where nobody looks."""

from __future__ import annotations

from training import load_model
from training.loop import read_checkpoint
from training.params import resolve
from training.protocol import TrialState
from training.trial import TrialSpec, mark_run_dir, run_trial
from training.workloads import get_workload


def _spec(run_dir, run: str) -> TrialSpec:
    params = resolve(get_workload("xor").params, {"batch_size": 256}, owner="xor")
    return TrialSpec(job="marks", run=run, number=3, workload="xor", params=params, epochs=2, metric="val_loss",
                     mode="min", checkpoint=str(run_dir / "trials" / "0003" / "checkpoint.pt"),
                     run_mark=str(run_dir / ".coordinator"))


def test_a_worker_that_sees_this_run_directory_writes_the_model_there(tmp_path):
    mark_run_dir(tmp_path, "run-a")
    outcome = run_trial(_spec(tmp_path, "run-a"))
    assert outcome.state == TrialState.COMPLETED and outcome.state_dict is None
    assert outcome.model_dir == "trials/0003"
    model = load_model(tmp_path / "trials" / "0003")
    assert model.extra == {"sweep": "marks", "trial": 3} and [r["epoch"] for r in model.history] == [1, 2]
    assert model.best_epoch == outcome.best_epoch
    # The resume point is epoch 1's: none is saved after the last epoch (the coordinator drops it then).
    assert read_checkpoint(tmp_path / "trials" / "0003" / "checkpoint.pt")["epoch"] == 1


def test_a_folder_of_the_same_path_but_another_run_gets_nothing_and_the_weights_travel(tmp_path):
    mark_run_dir(tmp_path, "someone-else")
    outcome = run_trial(_spec(tmp_path, "run-b"))
    assert outcome.state == TrialState.COMPLETED and outcome.model_dir is None
    assert outcome.state_dict and set(outcome.state_dict) == set(load_model_keys())
    assert not (tmp_path / "trials").exists()


def load_model_keys() -> list[str]:
    work = get_workload("xor")
    params = resolve(work.params, {"batch_size": 256}, owner="xor")
    return list(work.build_model(params, {}).state_dict())
