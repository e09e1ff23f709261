"""Bounded input, unit by unit: sweep-file YAML, trial counts, grid values, model.json ranges, addresses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster import check_address
from cluster.local import ClusterSpec, max_local_workers
from training.errors import ConfigError, ModelFileError
from training.limits import DEFAULT_MAX_TRIALS, max_trials, short
from training.safe_yaml import read_yaml
from training.space import choice, grid, grid_size
from training.sweep_spec import SweepSpec, load_sweep_file


@pytest.mark.parametrize(("text", "message"), [
    ("a: &x [1]\nb: *x\n", "aliases"),
    ("a: 1\na: 2\n", "appears twice"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nested more than"),
    ("a: !!python/name:os.system\n", "YAML tags .* are not allowed"),
    ("a: !!float '1'\n", "YAML tags .* are not allowed"),
    ("a: {<<: {b: 1}}\n", "merge keys"),
])
def test_yaml_that_could_hurt_is_refused(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)


def test_a_big_or_binary_file_is_refused_before_parsing(tmp_path):
    (tmp_path / "big.yaml").write_text("a: 1\n" + "#" * 70_000)
    with pytest.raises(ConfigError, match="more than the 65,536"):
        read_yaml(tmp_path / "big.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"a: 1\n\x00\x01")
    with pytest.raises(ConfigError, match="binary"):
        read_yaml(tmp_path / "bin.yaml")


def test_the_grid_is_counted_not_built_and_capped(monkeypatch):
    space = {"lr": grid([0.1 * i for i in range(1, 101)]), "batch_size": choice(list(range(1, 101))),
             "hidden": grid(list(range(1, 101)))}
    assert grid_size(space) == 10**6
    with pytest.raises(ConfigError, match="makes 1,000,000 trials, more than the limit of 10,000"):
        SweepSpec.create(workload="xor", space=space)
    monkeypatch.setenv("DASK_TRAIN_MAX_TRIALS", "20")
    assert max_trials() == 20
    wide = {"lr": {"uniform": [0.1, 0.2]}}
    assert len(SweepSpec.create(workload="xor", space=wide, search="random", num_trials=20).trials()) == 20
    with pytest.raises(ConfigError, match="num_trials=21 makes 21 trials"):
        SweepSpec.create(workload="xor", space=wide, search="random", num_trials=21)


def test_default_trial_limit_and_num_trials_of_a_trillion(monkeypatch):
    monkeypatch.delenv("DASK_TRAIN_MAX_TRIALS", raising=False)
    assert max_trials() == DEFAULT_MAX_TRIALS
    with pytest.raises(ConfigError, match="more than the limit"):
        SweepSpec.create(workload="xor", space={"lr": {"uniform": [0.1, 1]}}, search="random", num_trials=10**12)


def test_a_value_list_longer_than_its_limit_is_refused_before_its_values_are_read(monkeypatch):
    import training.space

    monkeypatch.setattr(training.space, "MAX_DOMAIN_VALUES", 500)
    values = [i * 1e-6 for i in range(1, 502)]
    with pytest.raises(ConfigError, match=r"choice lists 501 values, more than the limit of 500\. For a numeric "
                                          r"range use uniform"):
        SweepSpec.create(workload="xor", space={"lr": {"choice": values}}, search="random", num_trials=10)
    spec = SweepSpec.create(workload="xor", space={"lr": {"choice": values[:500]}}, search="random", num_trials=10)
    assert len(spec.space["lr"].values) == 500


def test_a_choice_may_list_more_values_than_the_sweep_has_trials(monkeypatch):
    """The value limit is not the trial limit: a spec read back elsewhere (results, a detached sweep) does not
    depend on that reader's DASK_TRAIN_MAX_TRIALS."""
    monkeypatch.setenv("DASK_TRAIN_MAX_TRIALS", "50")
    values = [i * 1e-6 for i in range(1, 20_001)]
    spec = SweepSpec.create(workload="xor", space={"lr": {"choice": values}}, search="random", num_trials=10)
    assert len(spec.space["lr"].values) == 20_000


def test_a_long_value_list_is_checked_for_repeats_in_linear_time(monkeypatch):
    """10,000 values: checked with a set (a pairwise check took 0.26 s for 8,000, 1.7 s for 20,000)."""
    monkeypatch.delenv("DASK_TRAIN_MAX_TRIALS", raising=False)
    values = [i * 1e-6 for i in range(1, 10_001)]
    spec = SweepSpec.create(workload="xor", space={"lr": {"choice": values}}, search="random", num_trials=10)
    assert len(spec.space["lr"].values) == 10_000
    again = [*values[:-1], values[4_999]]
    with pytest.raises(ConfigError, match=re.escape(f"{values[4_999]!r} given more than once")):
        SweepSpec.create(workload="xor", space={"lr": {"choice": again}}, search="random", num_trials=10)


def test_repeated_values_and_an_empty_space_are_refused():
    with pytest.raises(ConfigError, match=r"0\.1 given more than once"):
        SweepSpec.create(workload="xor", space={"lr": [0.1, "0.1"]})
    with pytest.raises(ConfigError, match="search space is empty"):
        SweepSpec.create(workload="xor", space={})


def test_sweep_file_fields_are_type_checked_before_building(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("workload: xor\nspace: {lr: [0.1]}\nepochs: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"epochs=\[1, 2\] is not a whole number"):
        load_sweep_file(path)


@pytest.mark.parametrize("search", ["random", "tpe"])
def test_more_trials_than_a_space_holds_are_refused_before_any_is_trained_twice(search):
    from training import Sweep
    from training.space import choice, randint, uniform
    from training.sweep_spec import spec_from_record

    space = {"lr": choice([0.1, 0.2]), "hidden": randint(2, 3)}  # 4 different trials
    with pytest.raises(ConfigError, match=rf"num_trials=5 is more than the 4 different trials this space holds: "
                                          rf"{search} search would train some twice.*num_trials: 4 or fewer"):
        Sweep("xor", space, search=search, num_trials=5)
    # A run recorded before the check still reads back, as it is (results, resume).
    recorded = SweepSpec.create(workload="xor", space=space, search=search, num_trials=5, name="old")
    assert spec_from_record(recorded.to_json(), Path("runs") / "old").num_trials == 5
    every = SweepSpec.create(workload="xor", space=space, search=search, num_trials=4)
    if search == "random":  # sampled without replacement: each of the 4 once
        assert sorted((t["lr"], t["hidden"]) for t in every.trials()) == [(0.1, 2), (0.1, 3), (0.2, 2), (0.2, 3)]
    wide = {**space, "noise": uniform(0.0, 0.2)}  # a continuous range: no bound
    assert Sweep("xor", wide, search=search, num_trials=50).spec.num_trials == 50
    huge = {"batch_size": randint(1, 2**20), "hidden": randint(1, 1024), "train_size": randint(2, 10**7),
            "lr": choice([0.01 * (i + 1) for i in range(1000)])}  # 1.07e19: more than range() samples from
    trials = Sweep("xor", huge, search="random", num_trials=20).spec.trials()
    assert len({tuple(t[k] for k in huge) for t in trials}) == 20


def test_early_stopping_options_without_early_stopping_are_refused(tmp_path):
    """They would do nothing: a user who set them meant ASHA (the sweep trained every trial to the end)."""
    from training import Sweep

    path = tmp_path / "s.yaml"
    path.write_text("workload: xor\nspace: {lr: [0.1]}\nepochs: 9\ngrace_epochs: 2\n")
    with pytest.raises(ConfigError, match=r"s\.yaml'?: grace_epochs is for early stopping \(scheduler: asha\).*"
                                          r"add scheduler: asha, or leave grace_epochs out"):
        load_sweep_file(path)
    with pytest.raises(ConfigError, match="reduction_factor is for early stopping"):
        Sweep("xor", {"lr": [0.1]}, reduction_factor=4)
    path.write_text("workload: xor\nspace: {lr: [0.1]}\nepochs: 9\ngrace_epochs: 2\nscheduler: asha\n")
    assert load_sweep_file(path).asha() is not None
    assert Sweep("xor", {"lr": [0.1]}, epochs=9, grace_epochs=2, scheduler="asha").spec.grace_epochs == 2


def test_a_file_named_workload_needs_the_allow_list(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("workload: tests.integration.tagged:TaggedXor\nspace: {lr: [0.1, 0.2]}\n")
    with pytest.raises(ConfigError, match=r"--allow-workload tests\.integration\.tagged:TaggedXor"):
        load_sweep_file(path)
    assert load_sweep_file(path, allow=["tests.integration.tagged:TaggedXor"]).workload.endswith("TaggedXor")


def test_model_json_hyperparameters_outside_the_declared_range_are_refused(tmp_path):
    from training import load_model, train

    folder = train("xor", epochs=1).save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["params"]["hidden"] = 10**9
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="Invalid value 1000000000 for hyperparameter 'hidden'"):
        load_model(folder)


@pytest.mark.parametrize("seed", [2**70, -5, 1.5])
def test_a_model_json_seed_dask_train_never_writes_is_refused(tmp_path, seed):
    """2**70 was Python's 'Overflow when unpacking long long' (exit 1) at evaluate; -5 evaluated on a split
    no run had."""
    from training import load_model, train

    folder = train("xor", epochs=1).save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["seed"] = seed
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"field 'seed' is .*not a whole number from 0 to 4294967295"):
        load_model(folder)


def test_messages_never_render_a_huge_value():
    assert len(short("x" * 10**6)) < 120
    with pytest.raises(ConfigError) as info:
        SweepSpec.create(workload="xor", space={"lr": ["9" * 10**5]})
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("address", ["http://10.0.0.5:8786", "tcp://10.0.0.5", "tcp://:8786",
                                     "tcp://10.0.0.5:99999"])
def test_addresses_need_a_known_scheme_host_and_port(address):
    with pytest.raises(ValueError, match="Address"):
        check_address(address)
    assert check_address("10.0.0.5:8786") == "10.0.0.5:8786"


def test_more_workers_than_the_machine_can_run_are_refused():
    with pytest.raises(ValueError, match="can run at most"):
        ClusterSpec(workers=max_local_workers() + 1)


@pytest.mark.parametrize("raw", ["0", "-3", "lots", "10000000000000", "1000001"])
def test_the_trial_limit_is_raised_within_what_memory_holds(monkeypatch, raw):
    """DASK_TRAIN_MAX_TRIALS=10**13 let a grid of 10**12 trials be built (6 GB, then a MemoryError): beyond a
    million it is refused, naming the value, as a non-number is."""
    from training.limits import max_trials

    monkeypatch.setenv("DASK_TRAIN_MAX_TRIALS", raw)
    said = f"DASK_TRAIN_MAX_TRIALS='{raw}': expected a whole number from 1 to 1,000,000"
    with pytest.raises(ConfigError, match=re.escape(said)):
        max_trials()
    monkeypatch.setenv("DASK_TRAIN_MAX_TRIALS", "1000000")
    assert max_trials() == 1_000_000
