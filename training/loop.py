"""The training loop: data on the device, batches sliced from a per-epoch permutation, a validation pass
each epoch, a per-epoch history, learning-rate schedules, divergence detection and resumable checkpoints.

Shared by ``dask-train train``, sweep trials and DDP ranks: a rank passes its :class:`Shard` and a
``reduce`` function (an all-reduce) and otherwise runs the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .callbacks import Callback
from .errors import ConfigError, TrainingDiverged
from .limits import MAX_EPOCHS, check_count, check_path, clip, safe_reason, short
from .model_file import TrainedModel
from .params import check_data_paths, resolve
from .precision import PRECISIONS, MixedPrecision, check_device_supports, check_precision, tf32_matmuls
from .protocol import better
from .workloads import Data, Workload, check_declarations, get_workload, workload_ref
from .workloads.base import Batch, take

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_EVAL_CHUNK = 4096


@dataclass(frozen=True)
class Shard:
    """Which part of every global batch this process trains on (rank 0 of 1 outside DDP)."""

    rank: int = 0
    world_size: int = 1


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` when a GPU is visible to this process and ``preference`` allows it, else ``cpu``.

    Examples
    --------
    >>> pick_device("cpu")
    device(type='cpu')
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"Unknown device {preference!r}: use 'auto', 'cpu' or 'cuda'.")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device='cuda' (--device cuda) was asked for but this process sees no CUDA GPU; use "
                          "--device auto (device='auto').")
    return torch.device("cuda", torch.cuda.current_device())


def shard_batches(perm: torch.Tensor, batch_size: int, shard: Shard) -> list[torch.Tensor]:
    """This rank's index batches for one epoch.

    Global batch ``i`` is ``perm[i*B:(i+1)*B]``; rank ``r`` of ``W`` takes the ``r``-th of ``W`` contiguous
    equal pieces of it. Outside DDP (``W == 1``) the last partial batch is kept; with ``W > 1`` it is
    dropped so every rank takes the same number of equal steps. Shards are disjoint and, with the
    exception of that last partial batch, cover the epoch.

    Examples
    --------
    >>> [b.tolist() for b in shard_batches(torch.arange(10), 4, Shard(1, 2))]
    [[2, 3], [6, 7]]
    """
    if batch_size % shard.world_size:
        raise ConfigError(f"batch_size={batch_size} does not split evenly over {shard.world_size} ranks; "
                          f"use a multiple of {shard.world_size}.")
    if shard.world_size == 1:
        return list(torch.split(perm, batch_size))
    local = batch_size // shard.world_size
    full = (len(perm) // batch_size) * batch_size
    grid = perm[:full].view(-1, shard.world_size, local)
    return list(grid[:, shard.rank])


@dataclass
class BestEpoch:
    """The best epoch so far by ``metric`` under ``mode``, with a CPU copy of its weights (like Lightning's
    ModelCheckpoint with ``save_top_k=1``): what a trial's or job's model directory holds."""

    metric: str
    mode: str
    epoch: int | None = None
    value: float | None = None
    weights: dict[str, torch.Tensor] | None = None

    def offer(self, record: Mapping[str, Any], model: torch.nn.Module) -> None:
        """Keep ``model``'s weights if ``record`` (its epoch's metrics) beats the best so far."""
        if better(record.get(self.metric), self.value, self.mode):
            self.epoch, self.value = int(record["epoch"]), float(record[self.metric])
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "epoch": self.epoch, "value": self.value,
                "weights": self.weights}

    def load(self, state: Mapping[str, Any] | None) -> None:
        """Continue from :meth:`state` (a checkpoint's); one kept for another metric starts afresh."""
        if state and state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.epoch, self.value, self.weights = state["epoch"], state["value"], state["weights"]


class Trainer:
    """Trains one model: :meth:`train` runs epochs; :meth:`save_checkpoint` / :meth:`load_checkpoint`
    make it resumable. ``reduce`` sums a tensor over DDP ranks (identity outside DDP). The weights of the
    best epoch by ``metric`` / ``mode`` (default: the workload's) are kept for :meth:`result`.
    ``precision``: ``fp32``, ``bf16`` or ``fp16`` (see :mod:`training.precision`)."""

    def __init__(self, workload: Workload, params: Mapping[str, Any], data: Data, *, seed: int = 0,
                 device: torch.device | None = None, shard: Shard = Shard(), wrap: Callable | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, metric: str | None = None,
                 mode: str | None = None, precision: str = "fp32") -> None:
        self.workload, self.params, self.seed, self.shard = workload, dict(params), seed, shard
        self.best = BestEpoch(metric or workload.metric, mode or workload.mode)
        self.device = device or pick_device()
        self.amp = MixedPrecision(precision, self.device)  # before any data moves: fp16 on a CPU fails here
        self.data = data.to(self.device)
        self.data_key = _data_key(data.meta)  # what its checkpoints record of the data, checked on resume
        self.model = _returned(workload, "build_model", workload.build_model(self.params, data.meta),
                               torch.nn.Module, "a torch.nn.Module").to(self.device)
        self.trained = wrap(self.model) if wrap else self.model
        self.optimizer = _returned(workload, "make_optimizer", workload.make_optimizer(self.model, self.params),
                                   torch.optim.Optimizer, "a torch.optim.Optimizer")
        self.scheduler = workload.make_scheduler(self.optimizer, self.params)
        self.generator = torch.Generator().manual_seed(seed)
        self.reduce = reduce or (lambda t: t)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.last_batches: list[torch.Tensor] = []  # the last epoch's sample indices, batch by batch
        # A sync per step is free on the CPU; on a GPU check every few steps (NaN stays NaN in the sum).
        self._check_every = 1 if self.device.type == "cpu" else 16

    def train(self, epochs: int, callback: Callback | None = None, checkpoint: Path | None = None,
              every: int = 1, resume_point_only: bool = False, save_last: bool = True) -> list[dict[str, Any]]:
        """Run until ``epochs`` epochs are done in total (a resumed trainer continues its count), saving
        ``checkpoint`` after every ``every``-th epoch and the last (before the epoch is reported, so a
        process lost after a report never has to train that epoch again). ``resume_point_only``: the
        checkpoint is only a resume point (a sweep trial, whose model travels back in its result), so a
        failed save (a full disk) is logged and training goes on. ``save_last=False``: not after the last
        epoch (a sweep trial's result ends it, and its resume point would be deleted at once)."""
        callback = callback or Callback()
        with tf32_matmuls(self.device):
            while self.epoch < epochs:
                record = self._run_epoch(self.epoch + 1, callback)
                self.epoch += 1
                self.history.append(record)
                if self.best.metric not in record:  # a best epoch could never be chosen: no model
                    held = clip(", ".join(record), 200)
                    raise ConfigError(f"Workload {self.workload.name}'s epoch records have no "
                                      f"{self.best.metric!r}, the metric its best epoch is chosen by (they hold "
                                      f"{held}): its eval_sums must return that sum (without 'val_').")
                if self.shard.rank == 0:  # every rank has the same metrics; one keeps the weights
                    self.best.offer(record, self.model)
                due = save_last if self.epoch == epochs else self.epoch % every == 0
                if checkpoint is not None and self.shard.rank == 0 and due:
                    self._save(checkpoint, resume_point_only)
                callback.on_epoch_end(record)
        return self.history

    def _run_epoch(self, epoch: int, callback: Callback) -> dict[str, Any]:
        started = time.perf_counter()
        perm = torch.randperm(self.data.num_train, generator=self.generator).to(self.device)
        batches = shard_batches(perm, self.params["batch_size"], self.shard)
        self.last_batches = batches
        callback.on_epoch_start(epoch, len(batches))
        self.trained.train()
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        for step, index in enumerate(batches, start=1):
            running += self._run_batch(take(self.data.train, index)) * len(index)
            seen += len(index)
            if step % self._check_every == 0 or step == len(batches):
                self._check_finite(running, epoch, step)
            callback.on_batch_end(epoch, step)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        train_seconds = time.perf_counter() - started
        totals = self.reduce(torch.stack([running, torch.tensor(float(seen), device=self.device,
                                                                dtype=torch.float64)]))
        record = {"epoch": epoch, "train_loss": float(totals[0] / max(float(totals[1]), 1.0))}
        record.update(self.evaluate())
        record.update(lr=lr, seconds=round(time.perf_counter() - started, 4),
                      samples_per_s=round(float(totals[1]) / max(train_seconds, 1e-9), 1))
        return record

    def _run_batch(self, batch: Batch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss = self.workload.loss(self.trained, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise _wrong_return(self.workload, "loss", loss, "a scalar torch.Tensor (one value)")
        self.amp.step(loss, self.optimizer)
        return loss.detach().to(torch.float64)

    def _check_finite(self, running: torch.Tensor, epoch: int, step: int) -> None:
        if not bool(torch.isfinite(running)):
            raise TrainingDiverged(
                f"Training loss became {float(running)} at epoch {epoch}, step {step} "
                f"(workload {self.workload.name}, params {self.params}). Lower the learning rate "
                "or the batch size, or check the data for NaN/inf values.", epoch=epoch, step=step)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics over the whole validation split (summed over ranks), as ``val_<name>``."""
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        num_val = int(self.data.val[0].shape[0])
        indices = torch.arange(num_val, device=self.device)
        for chunk in indices[self.shard.rank :: self.shard.world_size].split(_EVAL_CHUNK):
            with self.amp.autocast():
                sums = self.workload.eval_sums(self.model, take(self.data.val, chunk))
            if not isinstance(sums, dict) or not all(isinstance(v, torch.Tensor) for v in sums.values()):
                raise _wrong_return(self.workload, "eval_sums", sums, "a dict of torch.Tensor sums")
            for key, value in sums.items():
                totals[key] = totals.get(key, 0) + value.detach().to(torch.float64)
        keys = sorted(totals)
        summed = self.reduce(torch.stack([totals[k] for k in keys])) if keys else torch.zeros(0)
        values = dict(zip(keys, summed.tolist(), strict=True))
        count = values.pop("count", 0.0) or 1.0
        return {f"val_{k}": v / count for k, v in values.items()}

    def save_checkpoint(self, path: Path) -> None:
        """Write :meth:`state` to a temporary file and rename it, so a crash never leaves half a checkpoint
        (and a failed write, a full disk, leaves nothing)."""
        from .run_dirs import replacing

        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as handle:
            torch.save(self.state(), handle)

    def _save(self, path: Path, resume_point_only: bool) -> None:
        try:
            self.save_checkpoint(path)
        except OSError as exc:
            if not resume_point_only:
                raise
            log.warning("Epoch %d's checkpoint %s was not saved (%s): training goes on without this resume point",
                        self.epoch, path, exc.strerror or exc)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scheduler, epoch, RNG, history."""
        return {
            "format": CHECKPOINT_FORMAT,
            "workload": workload_ref(self.workload),
            "params": self.params,
            "seed": self.seed,
            "data": self.data_key,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "rng_perm": self.generator.get_state(),
            "history": self.history,
            "best": self.best.state(),
            "precision": self.amp.precision,
            "scaler": self.amp.state(),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (loaded with ``weights_only=True``)."""
        self.load_state(read_checkpoint(path), str(path))

    def load_state(self, state: dict[str, Any], source: str = "the checkpoint") -> None:
        """Continue from a :meth:`state` (a file's contents, or one shipped between tasks)."""
        _check_resumable(state, workload_ref(self.workload), self.params, self.seed, self.data_key, source,
                         self.amp.precision)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if self.device.type == "cuda":
            for index, rng in enumerate(restorable_cuda_states(state["rng_cuda"], torch.cuda.device_count())):
                torch.cuda.set_rng_state(rng, index)
        self.generator.set_state(state["rng_perm"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.best.load(state.get("best"))
        self.amp.load(state.get("scaler"))

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The best epoch's weights on the CPU (the current ones before any epoch has a metric value)."""
        if self.best.weights is not None:
            return self.best.weights
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def result(self) -> TrainedModel:
        """The model of the best epoch on the CPU, with what rebuilds it and the whole history."""
        model = self.workload.build_model(self.params, self.data.meta)
        model.load_state_dict(self.best_weights())
        return TrainedModel(workload_ref(self.workload), self.params, dict(self.data.meta),
                            dict(self.data.artifacts), list(self.history), model.eval(), self.seed,
                            best_epoch=self.best.epoch)


def restorable_cuda_states(saved: Sequence[torch.Tensor], device_count: int) -> list[torch.Tensor]:
    """The saved per-GPU RNG states this process can restore: those of the GPUs it sees (a checkpoint
    written where 8 GPUs were visible resumes where 1 is; the others' states have no device to go to).

    Examples
    --------
    >>> saved = [torch.full((2,), i, dtype=torch.uint8) for i in range(4)]
    >>> [int(s[0]) for s in restorable_cuda_states(saved, 1)], restorable_cuda_states(saved, 0)
    ([0], [])
    """
    return list(saved[: max(device_count, 0)])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded without executing pickled code."""
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise ConfigError(f"Checkpoint {str(path)!r} is not a regular file (a link to nothing, a device, a "
                              "folder): not one dask-train wrote. Move it away, or resume another run.")
        raise ConfigError(f"No checkpoint at {str(path)!r} to resume from; run without --resume (resume=False) "
                          "first.")
    return load_state(path, repr(str(path)))


def load_state(source: Path | BinaryIO, shown: str) -> dict[str, Any]:
    """A checkpoint's state from a file or its bytes (``shown`` in messages), loaded without executing
    pickled code: ConfigError for anything else."""
    try:
        with warnings.catch_warnings():  # torch's warnings about a foreign file's pickle protocol: noise here
            warnings.simplefilter("ignore")
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        why = f"{type(exc).__name__}: {safe_reason(exc)}"
        raise ConfigError(f"Checkpoint {shown} cannot be read ({why}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{shown} is not a dask-train checkpoint (format {CHECKPOINT_FORMAT}).")
    return state


def _data_key(meta: Mapping[str, Any]) -> str:
    """What a checkpoint records of the data it was trained on: its metadata (vocabulary, sizes), hashed."""
    text = json.dumps(meta, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_resumable_file(checkpoint: Path, workload: str, params: Mapping[str, Any], seed: int,
                         precision: str) -> None:
    """Refuse to resume ``checkpoint`` (if there is one) with another workload, other hyperparameters, another
    seed or another precision, before anything starts (the data is checked as it loads): `train --resume` before
    its data loads, `ddp --resume` before any worker starts (each rank would fail with it)."""
    if checkpoint.is_file():
        state = read_checkpoint(checkpoint)
        _check_resumable(state, workload, params, seed, str(state.get("data", "")), str(checkpoint), precision)


def _check_resumable(state: Mapping[str, Any], workload: str, params: Mapping[str, Any], seed: int,
                     data_key: str, source: str, precision: str) -> None:
    """Refuse to continue ``state`` with another workload, other hyperparameters (naming those that differ),
    another seed (it picks the data split: the held-out data would be trained on), other data (a changed
    ``--data`` file: its vocabulary, and so the model's inputs, differ) or another precision (its later
    epochs would not be comparable with its earlier ones; a sweep fingerprints it too)."""
    again = "Resume with the same settings, or start afresh in another folder without --resume (resume=False)."
    where = f"Checkpoint {source!r}"
    _check_history(state, where)
    if state["workload"] != workload:
        raise ConfigError(f"{where} is for workload {state['workload']!r}, not {workload!r}. {again}")
    recorded = state["params"]
    if recorded != params:
        if not isinstance(recorded, Mapping):
            raise ConfigError(f"{where} records hyperparameters {short(recorded)}, not a mapping. {again}")
        differ = [k for k in sorted(set(recorded) | set(params), key=str) if recorded.get(k) != params.get(k)]
        shown = "; ".join(f"{k}: {short(params.get(k, '(none)'), 40)} here, "
                          f"{short(recorded.get(k, '(none)'), 40)} in the checkpoint" for k in differ)
        raise ConfigError(f"{where} was trained with other hyperparameters ({clip(shown, 300)}). {again}")
    was = state.get("seed", seed)
    if was != seed:
        raise ConfigError(f"{where} was trained with seed {short(was)}, not {seed}: the seed picks the data "
                          f"split, so its held-out data would be trained on. Resume with --seed {short(was)} "
                          f"(seed={short(was)}), or start afresh in another folder.")
    if state.get("data", data_key) != data_key:  # a checkpoint written before it was recorded: not checked
        raise ConfigError(f"{where} was trained on other data (its vocabulary or sizes differ: was its --data "
                          f"file changed?). {again}")
    was = state.get("precision", precision)
    if was != precision:
        was = was if was in PRECISIONS else short(was)
        raise ConfigError(f"{where} was trained with --precision {was} (precision={was!r}), not {precision}. "
                          f"Resume with --precision {was}, or start afresh in another folder.")


def _check_history(state: Mapping[str, Any], where: str) -> None:
    """The checkpoint's epoch is the one its history ends with, numbered from 1 (what dask-train writes): an
    edited one resumed from epoch -4 and wrote 206 records with repeated epoch numbers."""
    epoch, history = state.get("epoch"), state.get("history")
    numbered = [r.get("epoch") if isinstance(r, dict) else None for r in history] if isinstance(history, list) \
        else None
    if (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCHS
            or numbered != list(range(1, epoch + 1))):
        raise ConfigError(f"{where} records epoch {short(epoch)} and a history that does not end there, one "
                          "record an epoch from 1: not as dask-train wrote it (edited or damaged). Start afresh "
                          "in another folder without --resume (resume=False).")


def train(workload: str | Workload, params: Mapping[str, Any] | None = None, *, epochs: int | None = None,
          seed: int = 0, device: str = "auto", callback: Callback | None = None,
          checkpoint: str | Path | None = None, resume: bool = False, precision: str = "fp32") -> TrainedModel:
    """Train one model in this process and return it on the CPU.

    Parameters
    ----------
    workload : str or Workload
        A built-in name (``names``, ``charlm``, ``digits``, ``xor``, ``linreg``) or a Workload.
    params : mapping, optional
        Hyperparameters; validated against the workload's declarations, defaults filled in.
    epochs : int, optional
        Total epochs (the workload's default when None).
    seed : int
        Seeds the data split, the initial weights and the batch order.
    device : {"auto", "cpu", "cuda"}
    callback : Callback, optional
        Progress hooks.
    checkpoint : path, optional
        Written after every epoch; with ``resume=True`` training continues from it.
    precision : {"fp32", "bf16", "fp16"}
        Mixed precision (autocast; fp16 with loss scaling, on a GPU only). On GPUs with TF32 tensor cores
        fp32 matmuls use TF32 (see :mod:`training.precision`).

    Examples
    --------
    >>> trained = train("xor", epochs=2, seed=1)
    >>> [round(r["val_accuracy"], 2) >= 0 for r in trained.history]
    [True, True]
    """
    if not isinstance(workload, str | Workload):
        raise ConfigError(f"workload={short(workload)}: give a built-in workload's name (`dask-train workloads` "
                          "lists them), 'module:Class', or a Workload instance.")
    if isinstance(workload, Workload):
        check_declarations(workload)  # get_workload checks the ones it imports
    work = get_workload(workload) if isinstance(workload, str) else workload
    _check_callback(callback)
    path = checkpoint_path(checkpoint, resume)
    resolved, total, dev = checked_run(work, params, epochs, seed, device, precision)
    with isolated_rng(dev):
        trainer = build_trainer(work, resolved, seed, dev, precision=precision)
        if resume and path is not None:
            trainer.load_checkpoint(path)
        trainer.train(total, callback, path)
        return trainer.result()


def _returned(workload: Workload, method: str, value: Any, kind: type, wanted: str) -> Any:
    """``value``, what ``workload.method`` returned, if it is a ``kind``; else :func:`_wrong_return`."""
    if isinstance(value, kind):
        return value
    raise _wrong_return(workload, method, value, wanted)


def _wrong_return(workload: Workload, method: str, value: Any, wanted: str) -> ConfigError:
    """A workload method returned ``value``, not what the loop takes (it failed deep inside the loop instead:
    "'float' object has no attribute 'backward'")."""
    return ConfigError(f"Workload {workload.name}: {method}() returned {short(value, 80)} "
                       f"({type(value).__name__}), not {wanted}.")


def checkpoint_path(checkpoint: object, resume: object) -> Path | None:
    """:func:`train`'s ``checkpoint`` as a path, checked before anything trains: a file it writes (an existing
    one only continued with ``resume=True``, never replaced: it may be anything, a user's file or a system's),
    in a folder that is one (made where missing)."""
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={short(resume)}: give True (continue from the checkpoint) or False.")
    if checkpoint is None:
        if resume:
            raise ConfigError("resume=True needs checkpoint=PATH: the checkpoint file to continue from.")
        return None
    text = check_path("checkpoint", checkpoint, kind="file")
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"checkpoint {text!r} is a folder: give a file path, e.g. {str(path / 'train.pt')!r}.")
    if not resume and (path.exists() or path.is_symlink()):
        raise ConfigError(f"checkpoint {text!r} already exists: train never replaces a file. Pass resume=True to "
                          "continue the checkpoint there, or choose another path (or remove it) to start afresh.")
    folder = next((p for p in path.absolute().parents if p.exists() or p.is_symlink()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"checkpoint {text!r}: {str(folder)!r} is not a folder. Choose a path in a folder.")
    return path


def _check_callback(callback: object) -> None:
    if callback is not None and not all(callable(getattr(callback, hook, None))
                                        for hook in ("on_epoch_start", "on_batch_end", "on_epoch_end")):
        raise ConfigError(f"callback={short(callback)}: give a training.Callback (subclass it and override the "
                          "hooks you need: on_epoch_start, on_batch_end, on_epoch_end), or None.")


def checked_run(work: Workload, params: Mapping[str, Any] | None, epochs: int | None, seed: int, device: str,
                precision: str) -> tuple[dict[str, Any], int, torch.device]:
    """What :func:`train` checks before it loads any data: the hyperparameters (resolved), their data files,
    the seed, the epochs (the workload's default for None), the device and the precision it supports."""
    resolved = resolve(work.params, params or {}, owner=work.name)
    check_data_paths(work.params, [resolved], here=True)
    check_count("seed", seed, 2**32 - 1, low=0)
    total = _check_epochs(epochs if epochs is not None else work.default_epochs)
    dev = pick_device(device)
    check_device_supports(check_precision(precision), dev.type)
    return resolved, total, dev


def isolated_rng(device: torch.device):
    """Leave a long-lived worker's global RNG as it was: a run must not depend on what ran before it."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def seed_generators(seed: int, device: torch.device) -> None:
    """``torch.manual_seed`` for the generators a run on ``device`` uses: the CPU's, and the GPUs' on a GPU
    (``manual_seed`` also queues a seed, with a captured stack, for every device kind not initialised yet:
    a millisecond a trial for nothing on a CPU worker)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def build_trainer(work: Workload, params: Mapping[str, Any], seed: int, device: torch.device,
                  **kwargs: Any) -> Trainer:
    """Data and initial weights from ``seed``: the same call in one process and in every DDP rank gives
    the same starting point (``kwargs`` go to :class:`Trainer`: shard, wrap, reduce, precision...)."""
    seed_generators(seed, device)
    return Trainer(work, params, work.load_data(params, seed), seed=seed, device=device, **kwargs)


def _check_epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"Invalid epochs {epochs!r}: expected a whole number >= 1.")
    return epochs

