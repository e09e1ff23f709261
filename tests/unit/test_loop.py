"""The training loop on real workloads: quality thresholds, divergence, sharding, checkpoints."""

from __future__ import annotations

import math
import re

import pytest
import torch

from training import Shard, TrainingDiverged, load_model, shard_batches, train
from training.errors import ConfigError
from training.loop import Callback, Trainer, read_checkpoint
from training.params import resolve
from training.workloads import get_workload
from training.workloads.linreg import LinReg

SMALL_NAMES = {"corpus": "last", "max_names": 3000, "batch_size": 512, "lr": 3e-3, "hidden": 64, "layers": 2}


def test_xor_reaches_95_percent_validation_accuracy():
    trained = train("xor", seed=0)
    assert trained.history[-1]["val_accuracy"] >= 0.95
    assert trained.evaluate()["test_accuracy"] >= 0.95


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_digits_reach_95_percent_test_accuracy(arch):
    trained = train("digits", {"arch": arch}, seed=0)
    assert trained.evaluate()["test_accuracy"] >= 0.95
    assert trained.history[0]["lr"] == 1.0 and trained.history[1]["lr"] == pytest.approx(0.9)  # StepLR


def test_linreg_recovers_the_true_weights():
    report = train("linreg", seed=0).evaluate()
    assert report["weights"] == pytest.approx([2.0, -3.0], abs=0.05)
    assert report["bias"] == pytest.approx(10.0, abs=0.1)


def test_names_beats_the_uniform_baseline_and_generates_novel_names():
    trained = train("names", SMALL_NAMES, epochs=3, seed=0)
    losses = [r["val_loss"] for r in trained.history]
    assert losses[-1] < 0.6 * math.log(31), losses  # uniform over the 31 characters: ln 31 = 3.43
    generated = trained.generate(30, seed=0)
    known = set(trained.artifacts["known_names"])
    assert len(generated) == 30
    assert not any(name.lower() in known for name in generated)
    assert all(set(name.lower()) <= set("abcdefghijklmnopqrstuvwxyz-. ") for name in generated)
    # Many names are sampled in batches of at most GENERATE_BATCH (memory bounded however many are asked for),
    # novel and distinct across batches.
    import training.workloads.names as names_module

    sizes: list[int] = []
    sample = names_module._sample_names

    def counted(model, meta, count, generator, prompt):
        sizes.append(count)
        return sample(model, meta, count, generator, prompt)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(names_module, "GENERATE_BATCH", 16)
        patch.setattr(names_module, "_sample_names", counted)
        many = trained.generate(40, seed=1)
    assert len(many) == len(set(many)) == 40 and not any(name.lower() in known for name in many)
    assert len(sizes) >= 3 and set(sizes) == {16}


def test_charlm_loss_falls_and_sampling_prints_text():
    trained = train("charlm", epochs=4, seed=0)
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    assert trained.history[-1]["val_loss"] < trained.history[0]["val_loss"]
    text = trained.generate(120, seed=0, prompt="Thy")[0]
    assert text.startswith("Thy") and len(text) == 123
    assert set(text) <= set(trained.meta["vocab"])


class _SGDLinReg(LinReg):
    """linreg with plain SGD: at lr=1 on inputs in [-5, 5] every step overshoots, so the loss blows up."""

    def make_optimizer(self, model, params):
        return torch.optim.SGD(model.parameters(), lr=params["lr"])


def test_a_nan_loss_stops_with_training_diverged():
    params = {"lr": 1.0, "samples": 20_000, "batch_size": 100}
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf) at epoch 1, step \d+.*Lower the learning"):
        train(_SGDLinReg(), params, epochs=3)
    assert train(_SGDLinReg(), {**params, "lr": 1e-3}, epochs=1).history[0]["train_loss"] < 1e3


def test_save_load_gives_identical_predictions(tmp_path):
    trained = train("digits", {"arch": "cnn"}, epochs=2, seed=3)
    folder = trained.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "artifacts.json", "history.json", "model.json", "model.safetensors"]
    loaded = load_model(folder)
    x = get_workload("digits").load_data(trained.params, 3).test[0]
    with torch.no_grad():
        assert torch.equal(trained.model.eval()(x), loaded.model(x))
    assert loaded.history == trained.history and loaded.params == trained.params


def test_resume_continues_the_same_history(tmp_path):
    params = {"batch_size": 256}
    straight = train("xor", params, epochs=4, seed=5)
    checkpoint = tmp_path / "ckpt.pt"
    train("xor", params, epochs=2, seed=5, checkpoint=checkpoint)
    assert read_checkpoint(checkpoint)["epoch"] == 2
    resumed = train("xor", params, epochs=4, seed=5, checkpoint=checkpoint, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_trainer_can_skip_the_resume_point_after_its_last_epoch(tmp_path):
    """A sweep trial's last epoch ends it (its outcome carries the model), so it saves no checkpoint there;
    every earlier epoch is a resume point."""
    work = get_workload("xor")
    params = resolve(work.params, {"batch_size": 256}, owner="xor")
    trainer = Trainer(work, params, work.load_data(params, 0))
    saved: list[int] = []

    class Saved(Callback):
        def on_epoch_end(self, record):
            saved.append(read_checkpoint(checkpoint)["epoch"] if checkpoint.exists() else 0)

    checkpoint = tmp_path / "resume.pt"
    trainer.train(3, Saved(), checkpoint, save_last=False)
    assert saved == [1, 2, 2] and read_checkpoint(checkpoint)["epoch"] == 2


def test_resume_with_dropout_matches_too(tmp_path):
    """Dropout draws from the global RNG: the checkpoint must carry it for an exact resume."""
    params = {"corpus": "first", "max_names": 300, "batch_size": 256, "hidden": 16, "layers": 2, "dropout": 0.5}
    straight = train("names", params, epochs=2, seed=1)
    train("names", params, epochs=1, seed=1, checkpoint=tmp_path / "c.pt")
    resumed = train("names", params, epochs=2, seed=1, checkpoint=tmp_path / "c.pt", resume=True)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    """Other hyperparameters (the one that differs named), another seed (another data split: held-out data would
    be trained on) or other data (a changed --data file of the same vocabulary size) are refused before a weight
    is loaded; the same settings resume."""
    train("xor", {"batch_size": 256}, epochs=1, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=re.escape("(batch_size: 128 here, 256 in the checkpoint)")):
        train("xor", {"batch_size": 128}, epochs=2, checkpoint=tmp_path / "c.pt", resume=True)
    with pytest.raises(ConfigError, match="trained with seed 0, not 7: the seed picks the data split"):
        train("xor", {"batch_size": 256}, epochs=2, seed=7, checkpoint=tmp_path / "c.pt", resume=True)
    assert len(train("xor", {"batch_size": 256}, epochs=2, checkpoint=tmp_path / "c.pt", resume=True).history) == 2
    text = tmp_path / "text.txt"
    text.write_text("abc def ghi " * 200)
    params = {"data": str(text), "hidden": 8, "layers": 1, "seq_len": 16}
    train("charlm", params, epochs=1, checkpoint=tmp_path / "t.pt")
    text.write_text("jkl mno pqr " * 200)  # as many characters, other ones: the same model shape
    with pytest.raises(ConfigError, match="was trained on other data"):
        train("charlm", params, epochs=2, checkpoint=tmp_path / "t.pt", resume=True)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        train("xor", epochs=2, checkpoint=tmp_path / "junk.pt", resume=True)


def test_train_never_replaces_a_file_at_its_checkpoint_path_and_refuses_bad_arguments_before_training(tmp_path):
    """A file at ``checkpoint`` (a user's notes, a folder, an earlier run's checkpoint) is refused unless
    resume=True continues it: before the fix the notes became a torch zip (as root, so did /etc/passwd).
    Arguments of the wrong kind are refused by name, before any data loads."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(ConfigError, match=re.escape("notes.txt' already exists: train never replaces a file.")):
        train("xor", {"train_size": 200}, epochs=1, checkpoint=notes)
    assert notes.read_text() == "my notes"
    with pytest.raises(ConfigError, match="is a folder: give a file path"):
        train("xor", {"train_size": 200}, epochs=1, checkpoint=tmp_path)  # no temporary file beside it
    with pytest.raises(ConfigError, match="is a folder: give a file path"):
        train("xor", {"train_size": 200}, epochs=1, checkpoint=tmp_path, resume=True)
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(".tmp")) == []
    with pytest.raises(ConfigError, match=re.escape("notes.txt' is not a folder")):
        train("xor", {"train_size": 200}, epochs=1, checkpoint=notes / "c.pt")
    checkpoint = tmp_path / "deep" / "er" / "c.pt"
    train("xor", {"train_size": 200}, epochs=1, checkpoint=checkpoint)  # its folders are made
    saved = checkpoint.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):  # an earlier run's: continued, never restarted over
        train("xor", {"train_size": 200}, epochs=2, checkpoint=checkpoint)
    assert checkpoint.read_bytes() == saved
    assert len(train("xor", {"train_size": 200}, epochs=2, checkpoint=checkpoint, resume=True).history) == 2
    for kwargs, said in [({"checkpoint": 5}, "checkpoint=5: give a file path"),
                         ({"checkpoint": "a\0b"}, "give a file path"), ({"checkpoint": " "}, "give a file path"),
                         ({"checkpoint": tmp_path / "x.pt", "resume": "yes"}, "resume='yes': give True"),
                         ({"resume": True}, "resume=True needs checkpoint=PATH"),
                         ({"callback": print}, "give a training.Callback")]:
        with pytest.raises(ConfigError, match=re.escape(said)):
            train("xor", {"train_size": 200}, epochs=1, **kwargs)
    for workload in (5, None):
        with pytest.raises(ConfigError, match=f"workload={workload}: give a built-in workload's name"):
            train(workload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "notes.txt"]


def test_callbacks_see_every_batch_and_epoch():
    seen: list[tuple] = []

    class Recorder(Callback):
        def on_epoch_start(self, epoch, num_batches):
            seen.append(("start", epoch, num_batches))

        def on_epoch_end(self, record):
            seen.append(("end", record["epoch"]))

    train("xor", {"batch_size": 1000}, epochs=2, callback=Recorder())
    assert seen == [("start", 1, 3), ("end", 1), ("start", 2, 3), ("end", 2)]


def test_history_records_what_the_issue_asks_for():
    record = train("xor", epochs=1).history[0]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds", "samples_per_s", "lr"} <= set(record)
    assert record["samples_per_s"] > 0 and record["seconds"] > 0


def test_shards_are_disjoint_and_cover_every_full_global_batch():
    perm = torch.randperm(1003, generator=torch.Generator().manual_seed(0))
    shards = [torch.cat(shard_batches(perm, 100, Shard(r, 4))) for r in range(4)]
    together = torch.cat(shards)
    assert len(together) == len(set(together.tolist())) == 1000  # disjoint; only the partial batch dropped
    assert set(together.tolist()) == set(perm[:1000].tolist())
    batches = [shard_batches(perm, 100, Shard(r, 4)) for r in range(4)]
    assert all(len(b) == 10 and all(len(x) == 25 for x in b) for b in batches)
    assert torch.equal(torch.cat(shard_batches(perm, 100, Shard())), perm)  # single process keeps all
    with pytest.raises(ConfigError, match="does not split evenly over 3 ranks"):
        shard_batches(perm, 100, Shard(0, 3))


def test_trainer_keeps_data_on_the_device_as_compact_indices():
    work = get_workload("names")
    params = resolve(work.params, {"corpus": "first", "max_names": 100}, owner="names")
    trainer = Trainer(work, params, work.load_data(params, 0))
    assert trainer.data.train[0].dtype == torch.uint8
    assert trainer.data.train[0].device == trainer.device


@pytest.mark.parametrize("epochs", [0, -1, 1.5, True])
def test_bad_epochs_are_refused(epochs):
    with pytest.raises(ConfigError, match="Invalid epochs"):
        train("xor", epochs=epochs)


@pytest.mark.parametrize(("method", "returns", "said"), [
    ("loss", lambda self, model, batch: 0.5, "loss() returned 0.5 (float), not a scalar torch.Tensor"),
    ("loss", lambda self, model, batch: torch.zeros(3, requires_grad=True), "not a scalar torch.Tensor"),
    ("build_model", lambda self, params, meta: "model", "build_model() returned 'model' (str), not a torch.nn"),
    ("make_optimizer", lambda self, model, params: None, "make_optimizer() returned None (NoneType), not a torch"),
    ("eval_sums", lambda self, model, batch: None, "eval_sums() returned None (NoneType), not a dict of torch"),
    ("eval_sums", lambda self, model, batch: {"loss": 1.0}, "eval_sums() returned {'loss': 1.0} (dict), not a"),
    ("eval_sums", lambda self, model, batch: {"count": torch.tensor(1.0)},
     "epoch records have no 'val_loss', the metric its best epoch is chosen by (they hold epoch, train_loss, lr"),
])
def test_a_workload_returning_the_wrong_kind_is_named_with_its_method(method, returns, said):
    """What a workload of your own returns of another kind failed deep in the loop ("'float' object has no
    attribute 'backward'", "'NoneType' object has no attribute 'items'"), or, a metric missing from
    eval_sums, trained to the end with no best epoch (a 'completed' trial without a model): now one error names
    the method, what it returned and what the loop takes."""
    broken = type("Broken", (LinReg,), {method: returns, "name": "broken"})()
    with pytest.raises(ConfigError, match=re.escape(said)):
        train(broken, {"samples": 200}, epochs=1)
