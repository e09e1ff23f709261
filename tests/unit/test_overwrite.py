"""Never overwrite what dask-train did not write: run directories, --new, model directories, TLS material."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from cluster import ClusterError, make_tls_files, remove_tls_files
from tests.helpers import run_cli
from training.errors import ConfigError
from training.run_dirs import DDP_MARKERS, MODEL_MARKERS, SWEEP_MARKERS, check_run_dir, set_aside
from training.store import RunStore
from training.sweep import Sweep

pytestmark = pytest.mark.timeout(120)


def _sweep_run(folder):
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text("name: x\nworkload: xor\n")
    sqlite3.connect(folder / "store.sqlite").close()
    return folder


def _someone_elses(folder):
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine\n")
    return folder


def test_a_run_directory_may_be_new_empty_or_ours(tmp_path):
    assert check_run_dir(tmp_path / "new", SWEEP_MARKERS) == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", SWEEP_MARKERS)
    check_run_dir(_sweep_run(tmp_path / "ours"), SWEEP_MARKERS)
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("markers", [SWEEP_MARKERS, DDP_MARKERS, MODEL_MARKERS])
def test_someone_elses_directory_or_a_file_is_refused(tmp_path, markers):
    with pytest.raises(ConfigError, match="holds files dask-train did not write"):
        check_run_dir(_someone_elses(tmp_path / "theirs"), markers)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_run_dir(tmp_path / "file", markers)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine\n"


def test_an_unwritable_parent_is_refused():
    with pytest.raises(ConfigError, match="Cannot write in"):
        check_run_dir("/proc/dask-train-test/run", SWEEP_MARKERS)


def test_new_sets_aside_only_a_dask_train_run(tmp_path):
    theirs = _someone_elses(tmp_path / "theirs")
    with pytest.raises(ConfigError, match="--new sets aside only a sweep run dask-train wrote"):
        set_aside(theirs)
    assert (theirs / "notes.txt").exists()
    aside = set_aside(_sweep_run(tmp_path / "ours"))
    assert aside is not None and (aside / "store.sqlite").exists() and not (tmp_path / "ours").exists()


def test_a_sweep_into_someone_elses_directory_fails_before_any_cluster_starts(tmp_path):
    _someone_elses(tmp_path / "theirs")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="did not write"):
        Sweep("xor", {"lr": [0.1]}, name="theirs", runs_dir=str(tmp_path)).run()
    assert time.monotonic() - started < 5  # no cluster was started
    assert sorted(os.listdir(tmp_path / "theirs")) == ["notes.txt"]


def test_tls_material_goes_into_a_fresh_private_folder_and_only_it_is_removed(tmp_path):
    files = make_tls_files(tmp_path / "tls")
    folder = tmp_path / "tls"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct(os.stat(files.key).st_mode & 0o777) == "0o600"
    (folder / "yours.txt").write_text("keep")
    remove_tls_files(files)
    assert sorted(os.listdir(folder)) == ["yours.txt"]


def test_an_existing_tls_folder_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "tls"
    folder.mkdir(mode=0o755)
    (folder / "key.pem").write_text("someone's key")
    os.chmod(folder / "key.pem", 0o644)
    with pytest.raises(ClusterError, match="already exists"):
        make_tls_files(folder)
    assert (folder / "key.pem").read_text() == "someone's key"
    assert oct((folder / "key.pem").stat().st_mode & 0o777) == "0o644"


def test_cluster_up_tls_never_deletes_a_folder_it_did_not_create(tmp_path):
    folder = tmp_path / "sched-tls"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep")
    (tmp_path / "sched.json").write_text('{"address": "tcp://127.0.0.1:1"}')
    result = run_cli("cluster", "up", "--tls", "--workers", "1", "--gpus", "off",
                     "--scheduler-file", str(tmp_path / "sched.json"), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    assert (folder / "precious.txt").read_text() == "keep"
    assert (tmp_path / "sched.json").exists()  # another cluster's scheduler file stays too


def test_the_cli_refuses_a_run_directory_before_starting_any_worker(tmp_path, monkeypatch):
    """`dask-train sweep` starts its workers early (as soon as the sweep file is read), but not for a run
    directory it will refuse: nothing is started that would only have to be ended."""
    from click.testing import CliRunner

    import cluster
    from training.cli.sweep_cmd import resolve_sweep_file, sweep_command
    from training.sweep_spec import load_sweep_file

    started: list[object] = []
    monkeypatch.setattr(cluster, "start_early", started.append)
    name = load_sweep_file(resolve_sweep_file("pets-quick")).name
    theirs = _someone_elses(tmp_path / "runs" / name)
    out = CliRunner().invoke(sweep_command, ["pets-quick", "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(out.exception, ConfigError) and "did not write" in str(out.exception)
    assert started == [] and (theirs / "notes.txt").read_text() == "mine\n"


def test_the_cli_refuses_new_for_someone_elses_directory_before_starting_any_worker(tmp_path, monkeypatch):
    """--new sets aside only a sweep run dask-train wrote: anything else is refused before the workers start."""
    from click.testing import CliRunner

    import cluster
    from training.cli.sweep_cmd import resolve_sweep_file, sweep_command
    from training.sweep_spec import load_sweep_file

    started: list[object] = []
    monkeypatch.setattr(cluster, "start_early", started.append)
    theirs = _someone_elses(tmp_path / "runs" / load_sweep_file(resolve_sweep_file("pets-quick")).name)
    out = CliRunner().invoke(sweep_command, ["pets-quick", "--new", "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(out.exception, ConfigError) and "--new sets aside only" in str(out.exception)
    assert started == [] and (theirs / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("search", ["grid", "tpe"])
def test_a_changed_or_damaged_run_is_refused_before_a_cluster_is_needed(tmp_path, search):
    """What a sweep's run store says is read before any cluster starts: another sweep of the same name (grid
    or TPE alike) and a damaged store are refused with one clear error."""
    from training.sweep_spec import SweepSpec, finished_trials

    extra = {"num_trials": 4, "space": {"lr": {"loguniform": [0.01, 0.5]}}} if search == "tpe" else \
        {"space": {"lr": [0.1, 0.2]}}
    spec = SweepSpec.create(workload="xor", name="x", runs_dir=str(tmp_path), search=search, **extra)
    spec.run_dir.mkdir()
    (spec.run_dir / "sweep.yaml").write_text("name: x\nworkload: xor\n")
    with RunStore(spec.run_dir / "store.sqlite") as store:
        store.begin_run("x", "another sweep's fingerprint", {"epochs": 99}, [{"lr": 0.3}])
    with pytest.raises(ConfigError, match="A different sweep named 'x'"):
        finished_trials(spec)
    (spec.run_dir / "store.sqlite").write_bytes(b"not a database" * 100)
    for leftover in spec.run_dir.glob("store.sqlite-*"):
        leftover.unlink()
    with pytest.raises(ConfigError, match="is not a dask-train run store"):
        finished_trials(spec)


@pytest.mark.parametrize("command", ["sbatch", "manifest"])
def test_generated_files_go_only_into_a_new_file(tmp_path, command):
    """`cluster sbatch/manifest --out` writes a new file; one that is there (anyone's) is refused, unchanged."""
    kept = tmp_path / "precious.txt"
    kept.write_text("mine\n")
    refused = run_cli("cluster", command, "--out", str(kept))
    assert refused.returncode == 2 and "already exists" in refused.stderr, refused
    assert kept.read_text() == "mine\n"
    new = tmp_path / f"new.{command}"
    written = run_cli("cluster", command, "--out", str(new))
    assert written.returncode == 0, written.stderr
    assert new.stat().st_size > 100
    if command == "sbatch":  # its header says to submit the file it is in
        assert f"# Submit with `sbatch {new}`" in new.read_text()


def test_cluster_up_removes_its_scheduler_file_only_while_it_is_still_its_own(tmp_path):
    """A stopping cluster removes the scheduler file it wrote, not one another cluster has written there since."""
    from cluster import write_scheduler_file
    from cluster.security import holds_address

    path = write_scheduler_file(tmp_path / "scheduler.json", "tcp://127.0.0.1:8786", None)
    assert holds_address(path, "tcp://127.0.0.1:8786")
    write_scheduler_file(path, "tcp://127.0.0.1:9999", None)  # another cluster's now
    assert not holds_address(path, "tcp://127.0.0.1:8786")
    path.write_text("garbage")
    assert not holds_address(path, "tcp://127.0.0.1:8786")


def test_a_ddp_run_directory_and_a_train_model_directory_are_told_apart(tmp_path):
    """A DDP job's run directory (checkpoint.pt, model/) given where a model directory goes names its model
    folder; `train --out` refuses it, and `ddp --name` refuses a `train` model directory (it has a checkpoint.pt
    too): each one line, exit 2, nothing changed."""
    from training import load_model, train
    from training.errors import ModelFileError

    job = tmp_path / "runs" / "xor-ddp"
    train("xor", epochs=1, checkpoint=job / "checkpoint.pt").save(job / "model")
    with pytest.raises(ModelFileError, match=r"DDP job's run directory: its model is .*xor-ddp/model"):
        load_model(job)
    assert load_model(job / "model").workload == "xor"
    onto_job = run_cli("train", "xor", "--epochs", "1", "--out", str(job), cwd=tmp_path)
    assert onto_job.returncode == 2 and "is a DDP job's run directory" in onto_job.stderr, onto_job
    assert sorted(p.name for p in job.iterdir()) == ["checkpoint.pt", "model"]
    single = tmp_path / "runs" / "single"
    train("xor", epochs=1, checkpoint=single / "checkpoint.pt").save(single)
    onto_model = run_cli("ddp", "xor", "--name", "single", "--resume", "--workers", "1", cwd=tmp_path)
    assert onto_model.returncode == 2 and "is a model directory of `dask-train train`" in onto_model.stderr


def test_a_sweeps_run_directory_given_for_a_model_says_where_its_models_are(tmp_path):
    from training import load_model
    from training.errors import ModelFileError

    run = tmp_path / "runs" / "s"
    (run / "trials" / "0000").mkdir(parents=True)
    (run / "sweep.yaml").write_text("name: s\n")
    with pytest.raises(ModelFileError, match=r"sweep's run directory: pass one of its trials' models, "
                                             r"'.*/runs/s/trials/NNNN' \(`dask-train results .*/runs/s` names"):
        load_model(run)


def test_an_empty_runs_dir_and_an_out_linked_to_nothing_are_refused(tmp_path):
    """`--runs-dir ''` wrote the run into the current folder unasked; an --out link to a missing folder said
    only 'cannot be made (File exists)'."""
    from training import Sweep

    for args in (("ddp", "xor", "--runs-dir", "", "--workers", "1"), ("train", "xor", "--out", " ")):
        done = run_cli(*args, cwd=tmp_path)
        said = done.stderr
        assert done.returncode == 2 and ("is empty: give a folder path" in said or "--out is empty" in said), done
    with pytest.raises(ConfigError, match="runs_dir='' is empty"):
        Sweep("xor", {"lr": [0.1]}, runs_dir="")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    done = run_cli("train", "xor", "--epochs", "1", "--out", "link", cwd=tmp_path)
    assert done.returncode == 2 and f"'link' is a link to '{tmp_path / 'gone'}', which does not exist" in \
        done.stderr, done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


@pytest.mark.parametrize("edit", [{"epoch": -5}, {"epoch": 10**6}, {"epoch": 2}, {"history": "x"}])
def test_a_checkpoint_whose_epoch_and_history_disagree_is_refused(tmp_path, edit):
    """An edited epoch of -5 resumed from there and wrote 206 history records with repeated epoch numbers."""
    import torch

    from training import train

    path = tmp_path / "checkpoint.pt"
    train("xor", epochs=3, checkpoint=path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, **edit}, path)
    with pytest.raises(ConfigError, match="and a history that does not end there"):
        train("xor", epochs=5, checkpoint=path, resume=True)


def test_a_run_directory_in_use_is_refused_until_its_run_ends(tmp_path):
    """Two runs on one directory at once (two terminals) would both write its checkpoint and model: while one
    process holds it (here, this test's), `train --out` and `ddp --name` on it are refused, one line, exit 2,
    nothing written; once it is let go, it can be had again."""
    from training.run_dirs import exclusive_run

    model, job = tmp_path / "model", tmp_path / "runs" / "job"
    with exclusive_run(model, "training", "choose another --out"), exclusive_run(job, "job", "another --name"):
        with exclusive_run(model, "training", "choose another --out"):
            pass  # taken again by the process that holds it (the CLI, then the Python API it calls)
        trained = run_cli("train", "xor", "--epochs", "1", "--out", str(model), cwd=tmp_path)
        assert trained.returncode == 2 and "is in use" in trained.stderr, trained
        ddp = run_cli("ddp", "xor", "--epochs", "1", "--name", "job", "--workers", "1", cwd=tmp_path, timeout=120)
        assert ddp.returncode == 2 and "is in use" in ddp.stderr, ddp
        assert not any(model.iterdir()) and not any(job.iterdir())
    with exclusive_run(model, "training", "choose another --out"):
        pass  # let go: had again


def test_new_never_moves_a_running_sweep_and_a_filesystem_without_folder_locks_runs_unlocked(tmp_path,
                                                                                             monkeypatch):
    """`--new` refuses to set aside a sweep run that another process holds (moved, its lock would go with it
    and a second sweep would start beside it); where flock on a folder fails (NFS: EBADF, Lustre: ENOSYS),
    a run goes on without the lock."""
    import errno
    import fcntl

    from training.run_dirs import exclusive_run, set_aside

    running = _sweep_run(tmp_path / "runs" / "pets")
    (tmp_path / "pets.yaml").write_text("name: pets\nworkload: xor\nspace: {lr: [0.1]}\nruns_dir: runs\n")
    with exclusive_run(running, "run of sweep 'pets'", "another --name"):
        refused = run_cli("sweep", "pets.yaml", "--new", cwd=tmp_path)
        rerun = run_cli("sweep", "pets.yaml", cwd=tmp_path)  # refused before a cluster starts for it (it did)
    assert refused.returncode == 2 and "is in use" in refused.stderr, refused
    assert rerun.returncode == 2 and rerun.stdout == "", rerun
    assert rerun.stderr.startswith("Error: runs/pets is in use: another run of sweep 'pets' is running"), rerun
    assert sorted(p.name for p in running.parent.iterdir()) == ["pets"]  # nothing moved
    assert set_aside(running, "run of sweep 'pets'").name.startswith("pets.old-")  # let go

    def no_folder_locks(fd, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", no_folder_locks)
    with exclusive_run(tmp_path / "nfs-run", "training", "another --out"):
        assert (tmp_path / "nfs-run").is_dir()


def test_saving_a_model_never_replaces_another_one_unless_told_to(tmp_path):
    """TrainedModel.save into a folder holding a model (another workload's, or another trial's) replaced it
    silently; it is refused, naming the folder, and replaced only with overwrite=True."""
    from training import load_model, train

    names = tmp_path / "model"
    train("xor", {"batch_size": 256}, epochs=1, seed=1).save(names)
    before = {p.name: p.read_bytes() for p in names.iterdir()}
    other = train("xor", {"batch_size": 128}, epochs=1, seed=2)
    with pytest.raises(ConfigError, match=r"model' already holds a model \(model\.json, model\.safetensors\)"):
        other.save(names)
    assert {p.name: p.read_bytes() for p in names.iterdir()} == before
    other.save(names, overwrite=True)
    assert load_model(names).params["batch_size"] == 128


def test_a_run_refused_as_another_takes_its_new_folder_removes_nothing_of_it(tmp_path, monkeypatch):
    """B finds runs/s missing, A makes and takes it, B is refused: B then removed the folders it had found
    missing, A's held run directory and runs/ with it (A's store could not be opened). Only folders a run made
    itself, and never ones another run holds, are removed."""
    import threading

    import training.run_dirs as run_dirs

    run_dir = tmp_path / "runs" / "s"
    found, taken = threading.Event(), threading.Event()
    nearest = run_dirs._nearest_existing

    def slowed(path):
        where = nearest(path)
        if threading.current_thread().name == "B":
            found.set()  # B has seen which folders are missing
            assert taken.wait(30)  # A makes them and holds the run meanwhile
        return where

    monkeypatch.setattr(run_dirs, "_nearest_existing", slowed)
    said: list[str] = []

    def refused() -> None:
        try:
            with run_dirs.exclusive_run(run_dir, "run of sweep 's'", "choose another --name"):
                said.append("B ran")
        except ConfigError as exc:
            said.append(str(exc))

    other = threading.Thread(target=refused, name="B")
    other.start()
    assert found.wait(30)
    with run_dirs.exclusive_run(run_dir, "run of sweep 's'", "choose another --name"):
        taken.set()
        other.join(timeout=30)
        assert run_dir.is_dir(), "the held run directory was removed"
        (run_dir / "store.sqlite").write_text("kept")
    assert not other.is_alive() and len(said) == 1 and "is in use" in said[0], said
