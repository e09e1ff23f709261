"""TPE resume across the window where a killed client had recorded a trial but not told Optuna."""

from __future__ import annotations

import dataclasses

import optuna

from training.protocol import TrialOutcome, TrialState
from training.sources import TpeSource
from training.store import RunStore
from training.sweep_spec import SweepSpec


def _completed(number, value):
    return TrialOutcome(number, TrialState.COMPLETED, history=[{"epoch": 1, "val_accuracy": value}])


def test_a_trial_recorded_but_never_told_is_told_on_resume(tmp_path):
    spec = SweepSpec.create(name="t", workload="xor", search="tpe", num_trials=3,
                            space={"lr": {"uniform": [0.05, 0.5]}}, epochs=1, runs_dir=str(tmp_path))
    spec.run_dir.mkdir(parents=True)
    with RunStore(spec.run_dir / "store.sqlite") as store:
        store.begin_run(spec.name, spec.fingerprint(), spec.to_json(), [])
        first = TpeSource(spec, store)
        told, recorded, asked = first.take(), first.take(), first.take()
        first.finished(dataclasses.replace(store.trial(told), state=TrialState.COMPLETED, best=0.9))
        store.finish_trial(_completed(told, 0.9), TrialState.COMPLETED, (1, 0.9), None)
        # The client dies here: `recorded` is finished in the store but Optuna never heard; `asked` never ran.
        store.finish_trial(_completed(recorded, 0.8), TrialState.COMPLETED, (1, 0.8), None)

        resumed = TpeSource(spec, store)
        assert resumed.take() == asked and resumed.take() is None  # only the unrun trial is run again
    states = {t.number: t.state for t in resumed.search.study.trials}
    assert states[told] == states[recorded] == optuna.trial.TrialState.COMPLETE
    assert states[asked] == optuna.trial.TrialState.RUNNING and len(states) == 3
    assert resumed.search.study.trials[recorded].value == 0.8
