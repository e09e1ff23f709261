"""The Python API's entry points refuse what is not a Dask client, naming it, before anything starts."""

from __future__ import annotations

import re

import pytest

import cluster
from training import Sweep, train_ddp


@pytest.mark.parametrize("call", [
    lambda client: train_ddp(client, "xor", epochs=1),
    lambda client: Sweep("xor", {"lr": [0.1]}, epochs=1).run(client),
    lambda client: Sweep("xor", {"lr": [0.1]}, epochs=1).submit(client),
], ids=["train_ddp", "Sweep.run", "Sweep.submit"])
def test_a_context_manager_passed_as_the_client_says_how_to_use_it(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"is not a Dask Client: open_client\(\) is a context manager, use "
                                        r"`with cluster.open_client\(\) as client:`"):
        call(cluster.open_client())
    with pytest.raises(TypeError, match=r"client='tcp://10.0.0.5:8786' is not a Dask Client\. Pass a "):
        call("tcp://10.0.0.5:8786")
    assert list(tmp_path.iterdir()) == [], "nothing is written before the client is checked"


def test_save_refuses_a_file_or_a_folder_of_someone_elses_files(tmp_path):
    """As `train --out` does: nothing written, a ConfigError saying what to do."""
    from training import train
    from training.errors import ConfigError

    trained = train("xor", epochs=1)
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        trained.save(tmp_path / "afile")
    with pytest.raises(ConfigError, match="holds files dask-train did not write"):
        trained.save(tmp_path / "notes")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["mine.txt"]
    assert (trained.save(tmp_path / "model") / "model.json").is_file()


@pytest.mark.parametrize(("given", "named"), [
    ({"workers": "2"}, "workers='2'"), ({"params": [1, 2]}, "params=[1, 2]"), ({"runs_dir": 5}, "runs_dir=5"),
    ({"resume": "no"}, "resume='no'"), ({"workload": 3}, "workload=3"), ({"seed": -1}, "seed=-1"),
    ({"timeout": float("inf")}, "timeout=inf"), ({"timeout": float("nan")}, "timeout=nan")])
def test_train_ddp_refuses_arguments_of_the_wrong_kind_by_name_before_any_cluster(given, named):
    from training import train_ddp
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        train_ddp(None, **{"workload": "xor", **given})


@pytest.mark.parametrize(("given", "named"), [
    ({"workload": None}, "workload=None"), ({"workload": 5}, "workload=5"), ({"space": "lr"}, "space='lr'"),
    ({"space": {1: [0.1]}}, "space keys [1]"), ({"params": [1]}, "params=[1]"), ({"runs_dir": 5}, "runs_dir=5"),
    ({"name": 5}, "name=5"), ({"name": ""}, "Sweep name ''"),
    # Accepted before, then every trial failed on the workers, or the folder was made with a newline in its name:
    ({"seed": 2**100}, "seed=1267650600228229401496703205376: expected a whole number from 0 to 4,294,967,295"),
    ({"max_concurrent": 10**9}, "max_concurrent=1000000000: expected a whole number from 1 to 100,000"),
    ({"name": "nl\n"}, "Sweep name 'nl\\n' must be"),
    # OverflowError (int too large to convert to float), and a number that became inf named as inf:
    ({"space": {"lr": [10**400]}}, "(401 characters) for hyperparameter 'lr': expected a number"),
    ({"space": {"hidden": [10**400]}}, "(401 characters) for hyperparameter 'hidden': expected an integer in"),
    ({"space": {"lr": ["1" * 400]}}, "(402 characters) for hyperparameter 'lr': expected a finite number"),
    ({"runs_dir": "a\0b"}, "runs_dir='a\\x00b' holds a NUL character")])
def test_a_sweep_refuses_arguments_of_the_wrong_kind_by_name(given, named):
    """Each was a TypeError or ValueError from deep inside (``'NoneType' is not iterable``, ``dictionary update
    sequence element #0``, difflib's), or accepted and failed later (runs_dir=5 at run, name='' as xor-sweep)."""
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        Sweep(**{"workload": "xor", "space": {"lr": [0.1]}, **given})


def test_the_python_api_takes_paths_as_pathlib_and_refuses_values_of_other_kinds(tmp_path):
    """runs_dir as a pathlib.Path (a TypeError: not JSON serialisable); choice of a string (its letters), a
    prompt or a model path of another kind, progress that is not hooks (ignored silently)."""
    from training import load_model, train
    from training.errors import ConfigError
    from training.space import choice

    assert Sweep("xor", {"lr": [0.1]}, runs_dir=tmp_path / "runs").spec.run_dir == tmp_path / "runs" / "xor-sweep"
    with pytest.raises(ConfigError, match=re.escape("choice('mlp'): give a list of values")):
        choice("mlp")
    import numpy as np

    from training.space import grid

    assert grid(np.array([0.1, 0.5])).values == (0.1, 0.5)  # arrays, ranges, generators: their values
    assert choice(range(3)).values == (0, 1, 2) and choice(n for n in (4, 8)).values == (4, 8)
    with pytest.raises(ConfigError, match="path=None: give a folder path"):
        load_model(None)
    trained = train("xor", epochs=1)
    with pytest.raises(ConfigError, match="path=None: give a folder path"):
        trained.save(None)
    with pytest.raises(ConfigError, match=re.escape("progress='yes': give True")):
        Sweep("xor", {"lr": [0.1]}).run(progress="yes")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("file", "edit", "said"), [
    ("model.json", {"version": "2"}, "field 'version' is '2', not a format version"),
    ("model.json", {"version": None}, "field 'version' is None, not a format version"),
    ("model.json", {"seed": -1}, "field 'seed' is -1, not a whole number from 0 to 4294967295"),
    ("model.json", {"best_epoch": "x"}, "field 'best_epoch' is 'x', not an epoch of its history"),
    ("model.json", {"best_epoch": 999}, "field 'best_epoch' is 999, not an epoch of its history"),
    ("model.json", {"extra": [1]}, "field 'extra' is [1], not a mapping"),
    ("history.json", {"a": 1}, "history.json is {'a': 1}, not a list of epoch records"),
    ("history.json", [1, 2, 3], "history.json is [1, 2, 3], not a list of epoch records"),
    ("artifacts.json", [1], "artifacts.json is [1], not a mapping"),
])
def test_an_edited_model_directory_is_refused_by_name_as_it_loads(tmp_path, file, edit, said):
    """Each file of a model directory of another form is a ModelFileError naming the directory and the field,
    at load: before, a version of "2" was a TypeError and an edited history an AttributeError when the
    model's metrics were read."""
    import json

    from training import train
    from training.errors import ModelFileError
    from training.model_file import load_model

    folder = train("xor", {"train_size": 200}, epochs=2).save(tmp_path / "m")
    assert load_model(folder).metrics["epoch"] in (1, 2)
    data = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**data, **edit} if isinstance(edit, dict) and file == "model.json"
                                          else edit))
    with pytest.raises(ModelFileError, match=re.escape(said)) as refused:
        load_model(folder)
    assert str(folder) in str(refused.value)


def test_wait_for_report_says_why_the_plots_were_not_drawn(tmp_path, caplog):
    """A run directory gone before its plots were drawn: the drawing thread logged a traceback and
    wait_for_report returned the folder as if drawn. Now it raises, saying why and what draws them again; a
    timeout of another kind is refused by name."""
    from training.errors import ConfigError, DaskTrainError
    from training.sweep import SweepResult, _start_drawing

    spec = Sweep("xor", {"lr": [0.1]}, name="gone", runs_dir=str(tmp_path)).spec
    result = SweepResult(spec, tmp_path / "gone", plotting=_start_drawing(tmp_path / "gone"))
    said = re.escape(f"Could not draw the plots of {tmp_path / 'gone'} (")
    with pytest.raises(DaskTrainError, match=said) as err:
        result.wait_for_report(timeout=60)
    assert str(err.value).endswith(f"`dask-train results {tmp_path / 'gone'} --plot` draws them again.")
    for bad in ("x", float("nan"), -1, True):
        with pytest.raises(ConfigError, match="give a number of seconds >= 0"):
            result.wait_for_report(timeout=bad)


@pytest.mark.parametrize(("given", "named"), [({"target": "tcp://x"}, "target='tcp://x': give a cluster.Target"),
                                              ({"new": "no"}, "new='no': give True")])
def test_sweep_run_refuses_a_target_or_new_of_another_kind_before_anything_starts(tmp_path, given, named):
    """target='tcp://x' was an AttributeError ('str' object has no attribute 'embedded'); new='no' was taken
    as True and set the previous run aside unasked."""
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        Sweep("xor", {"lr": [0.1]}, name="kinds", runs_dir=str(tmp_path)).run(**given)
    assert list(tmp_path.iterdir()) == []
