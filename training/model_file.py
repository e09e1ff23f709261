"""A trained model and its directory on disk: safetensors weights plus the JSON that rebuilds the model.

Loading never executes pickled code: weights are safetensors, everything else is JSON.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, ModelFileError
from .limits import MAX_GENERATE, check_count, check_path, short
from .params import resolve
from .run_dirs import MODEL_MARKERS, check_run_dir, replace_file, replacing_path
from .workloads import trusted_workload

FORMAT = "dask-train-model"
VERSION = 1
WEIGHTS, METADATA, HISTORY, ARTIFACTS = "model.safetensors", "model.json", "history.json", "artifacts.json"


@dataclass
class TrainedModel:
    """A trained model on the CPU with everything that rebuilds it (like nanoGPT's ``model_args``).

    Examples
    --------
    >>> from training import train
    >>> trained = train("xor", epochs=1)
    >>> trained.workload, sorted(trained.history[-1])[:2]
    ('xor', ['epoch', 'lr'])
    """

    workload: str
    params: dict[str, Any]
    meta: dict[str, Any]
    artifacts: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: The epoch whose weights ``model`` holds (the best by the run's metric); None: the last one.
    best_epoch: int | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        """The record of the epoch whose weights the model holds (empty before any epoch)."""
        return epoch_record(self.history, self.best_epoch)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model directory (created if needed) and return its path. A folder already holding a model
        is refused (ConfigError, nothing written) unless ``overwrite``: another model's files are never
        replaced by mistake."""
        return save_model(self, path, overwrite=overwrite)

    def generate(self, count: int, *, seed: int | None = None, prompt: str = "") -> list[str]:
        """Names or text sampled from a generative model (``names``, ``charlm``): at most
        :data:`~training.limits.MAX_GENERATE`."""
        check_count("count", count, MAX_GENERATE)
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt={short(prompt)}: give the start of every sample as a str.")
        if seed is not None:
            check_count("seed", seed, 2**32 - 1, low=0)
        return self._workload().generate(self.model, self.meta, self.artifacts, count, seed=seed, prompt=prompt)

    def evaluate(self) -> dict[str, Any]:
        """The workload's report on its held-out test data (accuracy, recovered weights)."""
        work = self._workload()
        return work.evaluate(self.model, work.load_data(self.params, self.seed))

    def _workload(self):
        from .workloads import get_workload

        return get_workload(self.workload)


def epoch_record(history: list[dict[str, Any]], epoch: int | None) -> dict[str, Any]:
    """The record of ``epoch`` in ``history`` (the last one when ``epoch`` is None or absent).

    Examples
    --------
    >>> epoch_record([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 3.0}], 1)
    {'epoch': 1, 'loss': 2.0}
    """
    found = next((r for r in history if r.get("epoch") == epoch), None) if epoch is not None else None
    return dict(found if found is not None else history[-1]) if history else {}


def save_model(trained: TrainedModel, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``trained`` as a model directory: weights, metadata, history, artifacts. A file there, a folder
    of files dask-train did not write, or (unless ``overwrite``) one holding a model is refused (ConfigError)
    before anything is written."""
    check_run_dir(check_path("path", path), MODEL_MARKERS, what="model directory")
    if not overwrite and (held := [m for m in (METADATA, WEIGHTS) if (Path(path) / m).exists()]):
        raise ConfigError(f"{short(str(path))} already holds a model ({', '.join(held)}): save to another folder, "
                          "or pass overwrite=True to replace it.")
    return write_model_dir(path, trained.model.state_dict(), workload=trained.workload, params=trained.params,
                           meta=trained.meta, artifacts=trained.artifacts, history=trained.history,
                           seed=trained.seed, extra=trained.extra, best_epoch=trained.best_epoch)


def write_model_dir(path: str | Path, state_dict: dict[str, torch.Tensor], *, workload: str,
                    params: dict[str, Any], meta: dict[str, Any], artifacts: dict[str, Any],
                    history: list[dict[str, Any]], seed: int = 0, extra: dict[str, Any] | None = None,
                    best_epoch: int | None = None) -> Path:
    """Write a model directory straight from a state dict (no model is built: a sweep's coordinator saves
    what a worker sent). ``best_epoch``: the epoch the weights are from (None: the last)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with replacing_path(folder / WEIGHTS) as tmp:  # streamed, not held twice in memory as bytes
        mode = tmp.stat().st_mode & 0o777  # the umask's: save_file leaves its file 0600
        save_file(state, str(tmp))
        tmp.chmod(mode)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "workload": workload,
        "params": params,
        "meta": meta,
        "seed": seed,
        "metrics": epoch_record(history, best_epoch),
        "best_epoch": best_epoch,
        "epochs": len(history),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        **({"extra": extra} if extra else {}),
    }
    _write_json(folder / METADATA, metadata)
    _write_json(folder / HISTORY, history)
    _write_json(folder / ARTIFACTS, artifacts)
    return folder


def load_model(path: str | Path, *, allow: Iterable[str] = ()) -> TrainedModel:
    """Rebuild a model saved by :func:`save_model`, on the CPU, in eval mode.

    Reading the directory never runs code it names: its workload must be built in, or a ``module:Class``
    in ``allow`` (one you name yourself); its hyperparameters must be in the workload's declared ranges,
    and the model it describes must match the weights' shapes before anything is allocated.

    Raises
    ------
    ModelFileError
        If ``path`` is not a dask-train model directory, is damaged, or names code not in ``allow``.

    Examples
    --------
    >>> import tempfile
    >>> from training import train
    >>> folder = train("xor", epochs=1).save(tempfile.mkdtemp())
    >>> load_model(folder).workload
    'xor'
    """
    folder = Path(check_path("path", path))
    metadata = _read_metadata(folder)
    try:  # its message names the directory already
        work = trusted_workload(metadata.get("workload"), allow, source=f"Model directory {str(folder)!r}")
    except ConfigError as exc:
        raise ModelFileError(str(exc)) from None
    try:
        params = resolve(work.params, _mapping(metadata, "params"), owner=work.name)
        meta = _mapping(metadata, "meta")
        work.check_meta(params, meta)
        _check_shapes(folder / WEIGHTS, _shapes_of(work, params, meta))
        model = work.build_model(params, meta)
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except ModelFileError:
        raise
    except ConfigError as exc:
        raise ModelFileError(f"Model directory {str(folder)!r} cannot be rebuilt: {exc}") from None
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise ModelFileError(f"Model directory {str(folder)!r} has damaged or mismatched weights "
                             f"({type(exc).__name__}: {short(str(exc), 200)}).") from None
    history, artifacts = _read_json(folder / HISTORY, default=[]), _read_json(folder / ARTIFACTS, default={})
    seed, extra, best = _checked_fields(folder, metadata, history, artifacts)
    return TrainedModel(workload=metadata["workload"], params=params, meta=meta, artifacts=artifacts,
                        history=history, model=model.eval(), seed=seed, extra=extra, best_epoch=best)


def _checked_fields(folder: Path, metadata: dict[str, Any], history: Any,
                    artifacts: Any) -> tuple[int, dict[str, Any], int | None]:
    """The seed, extra and best epoch of a model directory, and its history and artifacts, each of the form
    dask-train writes, else a ModelFileError naming the directory (an edited history failed later, as the
    model's metrics were read)."""
    def refuse(what: str) -> ModelFileError:
        return ModelFileError(f"Model directory {str(folder)!r}: {what}: the file was edited or is not "
                              "dask-train's.")

    try:
        seed = _seed(metadata)
    except ConfigError as exc:
        raise ModelFileError(f"Model directory {str(folder)!r}: {exc}") from None
    if not isinstance(history, list) or not all(isinstance(r, dict) and _whole(r.get("epoch")) for r in history):
        raise refuse(f"{HISTORY} is {short(history, 80)}, not a list of epoch records")
    if not isinstance(artifacts, dict):
        raise refuse(f"{ARTIFACTS} is {short(artifacts, 80)}, not a mapping")
    extra = metadata.get("extra") or {}
    if not isinstance(extra, dict):
        raise refuse(f"{METADATA} field 'extra' is {short(extra, 80)}, not a mapping")
    best = metadata.get("best_epoch")
    if best is not None and not (_whole(best) and any(r["epoch"] == best for r in history)):
        raise refuse(f"{METADATA} field 'best_epoch' is {short(best, 80)}, not an epoch of its history")
    return seed, extra, best


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(metadata: dict[str, Any], key: str) -> dict[str, Any]:
    value = metadata.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{METADATA} field {key!r} is {short(value)}, not a mapping.")
    return value


def _seed(metadata: dict[str, Any]) -> int:
    seed = metadata.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"{METADATA} field 'seed' is {short(seed)}, not a whole number from 0 to 4294967295 "
                          "(what dask-train writes): the file was edited or is not dask-train's.")
    return seed


def _shapes_of(work: Any, params: dict[str, Any], meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameter shapes the metadata describes, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = work.build_model(params, meta)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(weights: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The weights file holds exactly the tensors ``expected`` (read from its header only)."""
    with safe_open(str(weights), framework="pt") as handle:
        found = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    if found != expected:
        wrong = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise ModelFileError(f"{str(weights)!r} does not match the model its {METADATA} describes "
                             f"(tensors {short(wrong)} differ); the directory is damaged or was edited.")


def _read_metadata(folder: Path) -> dict[str, Any]:
    hint = "Pass a directory written by `dask-train train` (it holds model.json and model.safetensors)."
    if not folder.is_dir():
        raise ModelFileError(f"{str(folder)!r} is not a directory. {hint}")
    if not (folder / METADATA).is_file() or not (folder / WEIGHTS).is_file():
        if (folder / "model" / METADATA).is_file():  # a DDP job's run directory
            hint = f"It is a DDP job's run directory: its model is {str(folder / 'model')!r}, pass that."
        elif (folder / "trials").is_dir() and (folder / "sweep.yaml").is_file():  # a sweep's run directory
            hint = (f"It is a sweep's run directory: pass one of its trials' models, "
                    f"{str(folder / 'trials' / 'NNNN')!r} (`dask-train results {shlex.quote(str(folder))}` names "
                    "the best).")
        raise ModelFileError(f"{str(folder)!r} is not a dask-train model directory "
                             f"(no {METADATA} or {WEIGHTS}). {hint}")
    metadata = _read_json(folder / METADATA, default=None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{str(folder / METADATA)!r} is not dask-train model metadata. {hint}")
    version = metadata.get("version", 0)
    if not _whole(version) or version < 0:
        raise ModelFileError(f"{str(folder / METADATA)!r} field 'version' is {short(version, 80)}, not a format "
                             f"version: the file was edited or is not dask-train's. {hint}")
    if version > VERSION:
        raise ModelFileError(f"{str(folder)!r} was written by a newer dask-train (format version "
                             f"{metadata['version']}); upgrade dask-train to load it.")
    return metadata


#: The most bytes each JSON file of a model directory may hold (its metadata, a history of MAX_EPOCHS epochs,
#: a names model's known names), checked before it is read: one larger was not written by dask-train.
_JSON_LIMITS = {METADATA: 16 * 2**20, HISTORY: 128 * 2**20, ARTIFACTS: 256 * 2**20}


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    size, limit = path.stat().st_size, _JSON_LIMITS[path.name]
    if size > limit:
        raise ModelFileError(f"{str(path)!r} is {size:,} bytes, more than the {limit:,} a model directory's "
                             f"{path.name} holds: it was not written by dask-train, or is damaged.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{str(path)!r} is not valid JSON ({short(str(exc), 200)}).") from None


def _write_json(path: Path, value: Any) -> None:
    replace_file(path, _json_text(value).encode("utf-8"))


def _json_text(value: Any) -> str:
    """``value`` as JSON with each top-level entry on a line of its own (a history's epochs, the metadata's
    fields): readable, and written by json's C encoder, which an indent turns off (a sweep writes a model
    directory a trial).

    Examples
    --------
    >>> print(_json_text({"epochs": 2, "params": {"lr": 0.1}}), end="")
    {
     "epochs": 2,
     "params": {"lr": 0.1}
    }
    >>> json.loads(_json_text([{"epoch": 1}, {"epoch": 2}])), _json_text([]).strip()
    ([{'epoch': 1}, {'epoch': 2}], '[]')
    """
    if isinstance(value, dict) and value:
        lines = [json.dumps({key: item})[1:-1] for key, item in value.items()]  # keys as json writes them
    elif isinstance(value, list) and value:
        lines = [json.dumps(item) for item in value]
    else:
        return json.dumps(value) + "\n"
    opening, closing = "{}" if isinstance(value, dict) else "[]"
    return opening + "\n " + ",\n ".join(lines) + "\n" + closing + "\n"
