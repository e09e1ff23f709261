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


def test_a_study_journal_that_is_not_one_optuna_wrote_is_refused_before_it_is_read(tmp_path):
    """The journal is data: a link (to /dev/zero a rerun grew to 23 GB and was OOM-killed; Optuna appends
    through one), one larger than a study of its trials writes, one Optuna cannot replay, and none at all
    where the store records trials (a new study asked for them all again and retrained the finished ones):
    each is one ConfigError naming it, before anything is read or asked."""
    import os

    import pytest

    from training.errors import ConfigError
    from training.sweep_spec import finished_trials
    from training.tpe import STUDY_FILE

    spec = SweepSpec.create(name="t", workload="xor", search="tpe", num_trials=3,
                            space={"lr": {"uniform": [0.05, 0.5]}}, epochs=1, runs_dir=str(tmp_path))
    spec.run_dir.mkdir(parents=True)
    journal = spec.run_dir / STUDY_FILE
    with RunStore(spec.run_dir / "store.sqlite") as store:
        store.begin_run(spec.name, spec.fingerprint(), spec.to_json(), [])
        first = TpeSource(spec, store)
        number = first.take()
        store.finish_trial(_completed(number, 0.9), TrialState.COMPLETED, (1, 0.9), None)
        first.finished(dataclasses.replace(store.trial(number), state=TrialState.COMPLETED, best=0.9))
        kept = journal.read_bytes()

        journal.unlink()
        os.symlink("/dev/zero", journal)
        with pytest.raises(ConfigError, match=r"study\.journal. is not a regular file"):
            TpeSource(spec, store)
        journal.unlink()
        with journal.open("wb") as big:  # sparse: its size on paper, beyond what 3 trials of this space write
            big.truncate(64 * 2**20)
        with pytest.raises(ConfigError, match=r"more than a study of 3 trials writes"):
            TpeSource(spec, store)
        journal.write_bytes(kept + b'{"op_code": 99}\n')
        with pytest.raises(ConfigError, match="is not a study journal Optuna can read"):
            TpeSource(spec, store)
        journal.unlink()
        with pytest.raises(ConfigError, match="records 1 trial of this TPE sweep, but its study journal"):
            TpeSource(spec, store)
    with pytest.raises(ConfigError, match=r"its study journal study\.journal is missing"):
        finished_trials(spec)  # the CLI's check, before any cluster starts
    journal.write_bytes(kept)
    with RunStore(spec.run_dir / "store.sqlite") as store:
        assert TpeSource(spec, store).take() is not None  # the journal as Optuna wrote it goes on
