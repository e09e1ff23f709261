"""A sweep's specification: a frozen dataclass validated once, from Python or from a YAML file."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .limits import (
    MAX_EPOCHS,
    MAX_SPEC_BYTES,
    STALL_TIMEOUT,
    check_count,
    check_path,
    check_trial_count,
    clip,
    short,
)
from .params import Param
from .precision import check_precision
from .safe_yaml import read_yaml
from .space import Domain, distinct_combinations, grid_trials, random_trials, space_to_json, validate_space
from .workloads import get_workload, trusted_workload

if TYPE_CHECKING:
    from .protocol import TrialRecord

SEARCHES = ("grid", "random", "tpe")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: fullmatch
#: What does not change a sweep's trials or results: left out of its fingerprint (a rerun may change it).
NOT_FINGERPRINTED = ("name", "runs_dir", "max_concurrent", "trial_timeout", "stall_timeout", "checkpoint_every")
#: Fields added after runs were first recorded, fingerprinted only away from their default: a run recorded
#: before a field existed resumes unchanged.
_FINGERPRINTED_IF_NOT = {"precision": "fp32"}


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep trains, every field normalised and checked. Build it with :meth:`create` (Python,
    YAML and the CLI all do), which fills in the workload's defaults and parses the search space.

    Examples
    --------
    >>> spec = SweepSpec.create(name="demo", workload="xor", space={"lr": [0.05, 0.1]}, epochs=3)
    >>> [t["lr"] for t in spec.trials()], spec.metric, spec.mode
    ([0.05, 0.1], 'val_accuracy', 'max')
    """

    name: str
    workload: str
    #: Parsed: hyperparameter -> Domain (searched) or a fixed value.
    space: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    search: str = "grid"
    num_trials: int | None = None
    metric: str = "val_loss"
    mode: str = "min"
    epochs: int = 1
    seed: int = 0
    max_concurrent: int | None = None
    runs_dir: str = "runs"
    #: Early stopping: None, or "asha" with its grace period and reduction factor (epochs is the maximum).
    scheduler: str | None = None
    grace_epochs: int = 1
    reduction_factor: int = 3
    #: Seconds a trial may run (each attempt) before it is stopped as timed_out; None: no limit.
    trial_timeout: float | None = None
    #: Seconds without an epoch (or the start) before a trial is stopped as timed_out; None: never.
    stall_timeout: float | None = STALL_TIMEOUT
    #: A running trial saves its resume checkpoint every this many epochs (and at its last one).
    checkpoint_every: int = 1
    #: ``fp32``, ``bf16`` or ``fp16`` mixed precision (see :mod:`training.precision`).
    precision: str = "fp32"

    @classmethod
    def create(cls, *, workload: str, name: str | None = None, space: Mapping[str, Any] | None = None,
               params: Mapping[str, Any] | None = None, metric: str | None = None, mode: str | None = None,
               epochs: int | None = None, **rest: Any) -> SweepSpec:
        """Validate user input (Python, YAML, CLI) and return the normalised spec: the workload's metric,
        mode and epochs where none were given, the space and fixed params parsed against its hyperparameters.
        """
        _check(isinstance(workload, str), f"workload={short(workload)}: give a workload's name, e.g. 'xor' (see "
                                          "`dask-train workloads`).")
        for what, value in (("space", space), ("params", params)):
            _check(value is None or isinstance(value, Mapping),
                   f"{what}={short(value)}: give a mapping of hyperparameter names to values, e.g. "
                   "{'lr': [0.1, 0.2]}.")
            _check(all(isinstance(k, str) for k in value or {}),
                   f"{what} keys {short([k for k in value or {} if not isinstance(k, str)])}: hyperparameter "
                   "names are strings.")
        _check(name is None or isinstance(name, str), f"name={short(name)}: give a str (it names a folder).")
        if "runs_dir" in rest:  # a pathlib.Path too: kept as the text it is
            rest["runs_dir"] = check_path("runs_dir", rest["runs_dir"])
        work = get_workload(workload)
        space, params = dict(space or {}), dict(params or {})
        overlap = sorted(set(space) & set(params))
        _check(not overlap, f"{overlap} appear in both space and params; give each hyperparameter once.")
        metric = metric or work.metric
        known = ("train_loss", *work.metrics)
        _check(metric in known, f"metric={short(metric)} is not reported by '{work.name}': use one of "
                                f"{', '.join(known)}.")
        if mode is None:
            mode = work.mode if metric == work.metric else "min" if metric.endswith("loss") else "max"
        _check_int("epochs", epochs, allow_none=True)
        spec = cls(name=f"{work.name}-sweep" if name is None else name, workload=workload,
                   space=validate_space(space, work.params, work.name),
                   params=validate_space(params, work.params, work.name), metric=metric, mode=mode,
                   epochs=epochs or work.default_epochs, **rest)
        _check_written_size(spec)
        return spec

    def __post_init__(self) -> None:
        raw = [k for k, v in self.space.items() if isinstance(v, Mapping | list | tuple)]
        _check(not raw, f"space entries {raw} are not parsed: build the spec with SweepSpec.create(...), "
                        "which checks them against the workload.")
        _check(isinstance(self.name, str) and bool(NAME_PATTERN.fullmatch(self.name)),
               f"Sweep name {short(self.name)} must be 1-64 letters, digits, '_', '.' or '-' (it names a folder).")
        _check(self.search in SEARCHES, f"search={short(self.search)}: use one of {', '.join(SEARCHES)}.")
        _check(bool(self.space), "The search space is empty: give at least one hyperparameter under space "
                                 "(a list of values, or a range for random and tpe search).")
        _check(all(not isinstance(v, Domain) for v in self.params.values()),
               "params holds fixed values only; put ranges and lists under space.")
        _check(self.mode in ("min", "max"), f"mode={short(self.mode)}: use 'min' or 'max'.")
        for name in ("epochs", "grace_epochs"):
            check_count(name, getattr(self, name), MAX_EPOCHS)
        _check_int("seed", self.seed, low=0)
        _check_int("max_concurrent", self.max_concurrent, allow_none=True)
        _check_int("reduction_factor", self.reduction_factor, low=2)
        _check_int("checkpoint_every", self.checkpoint_every)
        check_precision(self.precision)
        for name in ("trial_timeout", "stall_timeout"):
            _check_seconds(name, getattr(self, name))
        if self.search in ("random", "tpe"):
            _check_int("num_trials", self.num_trials)
            check_trial_count(self.num_trials or 0, f"num_trials={self.num_trials}")
        elif self.num_trials is not None:
            raise ConfigError("num_trials is for search: random or tpe; grid search runs every combination once.")
        _check(self.scheduler in (None, "asha"), f"scheduler={short(self.scheduler)}: use 'asha' or leave it out.")
        self.asha()  # grace_epochs beyond epochs fails here
        self.trials()  # a grid over continuous ranges fails here, not on a worker

    def asha(self):
        """A fresh ASHA rung book for this sweep (None without early stopping)."""
        from .asha import Asha

        if self.scheduler != "asha":
            return None
        return Asha(self.grace_epochs, self.reduction_factor, self.epochs, self.mode)

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's full hyperparameters (defaults filled in), in trial-number order. Empty for TPE,
        whose trials are asked for one at a time while the sweep runs."""
        work = get_workload(self.workload)
        space = dict(self.space)
        if self.search == "tpe":
            return []
        if self.search == "grid":
            raw = grid_trials(space)
        else:
            raw = random_trials(space, self.num_trials or 0, self.seed)
        by_name = {p.name: p for p in work.params}
        from .params import resolve

        return [resolve(work.params, {**self.params, **{k: _coerce(by_name[k], v) for k, v in t.items()}},
                        owner=work.name) for t in raw]

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON, ranges written as ``{kind: [...]}``: :meth:`create` reads it back."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "space": space_to_json(self.space), "params": dict(self.params)}

    def fingerprint(self) -> str:
        """A hash of what decides the trials and their results (not the name, folder or concurrency)."""
        return fingerprint_of(self.to_json())

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def fingerprint_of(spec_json: Mapping[str, Any]) -> str:
    """:meth:`SweepSpec.fingerprint` of a spec's :meth:`~SweepSpec.to_json` (no workload imported)."""
    content = {k: v for k, v in spec_json.items()
               if k not in NOT_FINGERPRINTED and _FINGERPRINTED_IF_NOT.get(k, object()) != v}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


#: The fields a sweep file may set: the dataclass's own.
FIELDS = tuple(f.name for f in fields(SweepSpec))


def _coerce(param: Param, value: Any) -> Any:
    """Continuous samples for integer hyperparameters are rounded (uniform over 32..256 -> 117)."""
    return round(value) if param.kind is int and isinstance(value, float) else value


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_written_size(spec: SweepSpec) -> None:
    """Refuse a spec larger written out (the JSON its run store records) than a run's spec may be read
    back: only a sweep made in Python can list so many values (a sweep file is far smaller)."""
    size = len(json.dumps(spec.to_json()))  # ASCII: characters are bytes
    _check(size <= MAX_SPEC_BYTES,
           f"This sweep's spec takes {size:,} bytes written out, more than the limit of {MAX_SPEC_BYTES:,}: its "
           "space lists too many values, or too long ones. List fewer, or give numbers as a range (uniform, "
           "loguniform, randint).")


def _check_int(name: str, value: Any, *, allow_none: bool = False, low: int = 1) -> None:
    """A whole-number field in its range (:data:`_FIELD_RANGES`: a seed of 2**100 failed every trial on the
    workers), or a ConfigError naming it."""
    if value is None and allow_none:
        return
    high = _FIELD_RANGES.get(name, (low, None))[1]
    if high is not None:
        check_count(name, value, high, low=low)
    elif isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={short(value)}: expected a whole number >= {low}.")


def _check_seconds(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ConfigError(f"{name}={short(value)}: expected a number of seconds > 0 (leave it out for no limit).")


#: What each sweep-file field must be, checked before anything is built: (types, description).
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a name"), "workload": ((str,), "a workload name"), "space": ((dict,), "a mapping"),
    "params": ((dict,), "a mapping"), "search": ((str,), "a string"), "metric": ((str,), "a metric name"),
    "mode": ((str,), "min or max"), "runs_dir": ((str,), "a folder"), "scheduler": ((str,), "asha"),
    "num_trials": ((int,), "a whole number"), "epochs": ((int,), "a whole number"),
    "seed": ((int,), "a whole number"), "max_concurrent": ((int,), "a whole number"),
    "grace_epochs": ((int,), "a whole number"), "reduction_factor": ((int,), "a whole number"),
    "checkpoint_every": ((int,), "a whole number"), "trial_timeout": ((int, float), "a number of seconds"),
    "stall_timeout": ((int, float), "a number of seconds"), "precision": ((str,), "fp32, bf16 or fp16"),
}
#: Bounds of the whole-number fields (num_trials: see training.limits.max_trials).
_FIELD_RANGES = {"epochs": (1, MAX_EPOCHS), "grace_epochs": (1, MAX_EPOCHS), "seed": (0, 2**32 - 1),
                 "max_concurrent": (1, 100_000), "reduction_factor": (2, 1_000), "num_trials": (1, 10**18),
                 "checkpoint_every": (1, MAX_EPOCHS)}


def load_sweep_file(path: str | Path, *, allow: Iterable[str] = (), **overrides: Any) -> SweepSpec:
    """A SweepSpec from a YAML file; ``overrides`` (from the CLI) win over the file.

    The file is data: it is size-checked before it is read, every field is type- and range-checked before
    anything is built, and a ``module:Class`` workload it names is imported only if it is in ``allow``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.yaml"
    >>> _ = f.write_text("name: t\\nworkload: xor\\nspace: {lr: [0.1, 0.2]}\\n")
    >>> load_sweep_file(f).search
    'grid'
    """
    path = Path(path)
    where = f"Sweep file {short(str(path))}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist (see `dask-train sweep --examples`).")
    content = read_yaml(path)
    if not isinstance(content, dict):
        raise ConfigError(f"{where} must be a mapping with name, workload, space, ...")
    unknown = sorted(map(str, set(content) - set(FIELDS)))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {clip(', '.join(unknown))}; known: {', '.join(FIELDS)}.")
    if "workload" not in content:
        raise ConfigError(f"{where} has no 'workload'.")
    if content.get("name") is None:  # left out, or `name:` with no value
        content["name"] = path.stem
    content.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in content.items():
        _check_field(where, key, value)
    trusted_workload(content["workload"], allow, source=where)
    try:
        spec = SweepSpec.create(**content)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    check_new_sweep(spec, [k for k in ("grace_epochs", "reduction_factor") if content.get(k) is not None], where)
    return spec


def check_new_sweep(spec: SweepSpec, asha_options: Iterable[str] = (), where: str = "") -> None:
    """What a sweep made now (a sweep file, ``Sweep(...)``) may not ask for, though a run recorded before
    these checks may hold it (read back as it is): ASHA's options its author set (``asha_options``) without
    ``scheduler: asha`` (they would do nothing), or more random or TPE trials than the space holds.

    Examples
    --------
    >>> spec = SweepSpec.create(workload="xor", space={"lr": [0.1]})
    >>> check_new_sweep(spec, ["grace_epochs"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    training.errors.ConfigError: grace_epochs is for early stopping (scheduler: asha)...
    """
    prefix = f"{where}: " if where else ""
    given = sorted(asha_options)
    if given and spec.scheduler != "asha":
        names = " and ".join(given)
        raise ConfigError(f"{prefix}{names} {'is' if len(given) == 1 else 'are'} for early stopping (scheduler: "
                          f"asha), which this sweep does not use: add scheduler: asha, or leave {names} out.")
    distinct = distinct_combinations(spec.space) if spec.search in ("random", "tpe") else None
    if distinct is not None and (spec.num_trials or 0) > distinct:
        raise ConfigError(f"{prefix}num_trials={spec.num_trials} is more than the {distinct:,} different trials "
                          f"this space holds: {spec.search} search would train some twice, to the same result. "
                          f"Use search: grid to run each once, or num_trials: {distinct} or fewer.")


def _check_field(where: str, key: str, value: Any) -> None:
    """One sweep-file field against its type and range (None leaves a field to its default)."""
    if value is None:
        return
    types, expected = _FIELD_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ConfigError(f"{where}: {key}={short(value)} is not {expected}.")
    if key in _FIELD_RANGES:
        low, high = _FIELD_RANGES[key]
        check_count(f"{where}: {key}", value, high, low)


#: Fields every spec dask-train records holds: one read back without them it did not write.
_RECORDED = ("name", "workload", "search", "space", "metric", "mode", "epochs")


def spec_from_record(data: Mapping[str, Any], run_dir: Path) -> SweepSpec:
    """The spec a run directory's store records (:meth:`~training.store.RunStore.spec`), checked as any
    input is: a field missing or unknown, or a value of the wrong kind, is refused naming the run directory.
    Its ``runs_dir`` is where the run directory is now."""
    where = f"Run directory {short(str(run_dir))}"
    missing, unknown = [k for k in _RECORDED if k not in data], sorted(str(k) for k in data if k not in FIELDS)
    if missing or unknown:
        what = f"no {', '.join(missing)}" if missing else f"unknown fields {clip(', '.join(unknown))}"
        raise ConfigError(f"{where} records a sweep spec dask-train did not write ({what}). Pass a run directory "
                          "a dask-train sweep wrote.")
    try:
        return SweepSpec.create(**{**data, "runs_dir": str(run_dir.parent)})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(f"{where} records a sweep spec dask-train cannot read ({clip(str(exc))}). Pass a run "
                          "directory a dask-train sweep wrote.") from None


def recorded_size(data: Mapping[str, Any], store: Path) -> tuple[int, int]:
    """The most trials, and epochs a trial, the spec a run's store records (``data``, plain JSON) can have:
    what the rows of ``store`` are checked against before they are read. From its search, ``num_trials`` and
    the lengths of its grid lists alone (its workload is not imported: the run directory is not trusted yet).

    Examples
    --------
    >>> recorded_size({"search": "grid", "space": {"lr": [0.1, 0.2], "depth": {"choice": [1, 2, 3]}},
    ...                "epochs": 5}, Path("runs/x/store.sqlite"))
    (6, 5)
    >>> recorded_size({"search": "random", "num_trials": 40, "space": {}, "epochs": 2}, Path("x.sqlite"))
    (40, 2)
    """
    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{str(store)!r} records a sweep spec dask-train cannot read ({what}). Pass a run "
                           "directory a dask-train sweep wrote.")

    epochs, space, search = data.get("epochs"), data.get("space"), data.get("search")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= MAX_EPOCHS:
        raise refuse(f"epochs={short(epochs)}")
    if not isinstance(space, Mapping):
        raise refuse(f"space={short(space)}")
    if search == "grid":
        sizes = []
        for raw in space.values():  # a list, {grid: [...]} or {choice: [...]}; anything else is one value
            if isinstance(raw, Mapping) and len(raw) == 1 and next(iter(raw)) in ("grid", "choice"):
                raw = next(iter(raw.values()))
            sizes.append(len(raw) if isinstance(raw, list) and raw else 1)
        return math.prod(sizes), epochs
    trials = data.get("num_trials")
    if search not in SEARCHES or not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise refuse(f"search={short(search)}, num_trials={short(trials)}")
    return trials, epochs


def write_spec_file(spec: SweepSpec) -> None:
    """The run's sweep.yaml, the spec of its latest run for people to read (plain YAML, through libyaml where
    PyYAML has it: ten times faster); dask-train reads the one in the run store back."""
    import yaml

    from .run_dirs import replace_file

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    replace_file(spec.run_dir / "sweep.yaml",
                 yaml.dump(spec.to_json(), Dumper=dumper, sort_keys=False).encode("utf-8"))


def finished_trials(spec: SweepSpec) -> list[TrialRecord] | None:
    """Every trial of ``spec``'s run, when its run store already records them all finished: a rerun has
    nothing to run, and needs no cluster. None when there is something to run (or no store yet, or TPE,
    whose study decides). A store of another sweep of this name is refused now, as it would be once a
    cluster had started."""
    path = spec.run_dir / "store.sqlite"
    if not path.is_file():
        return None
    import sqlite3

    from .store import RunStore

    try:
        with RunStore(path) as store:
            recorded = store.check_sweep(spec.name, spec.fingerprint(), spec.to_json(), NOT_FINGERPRINTED)
            if recorded and spec.search == "tpe":
                from .tpe import check_study_kept

                check_study_kept(spec.run_dir, sum(store.counts().values()))
            if not recorded or spec.search == "tpe" or store.unfinished():  # TPE: its study decides
                return None
            rows = store.trials()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{str(path)!r} is not a dask-train run store ({exc}); pass --new (new=True) to set "
                          "the run aside and start afresh.") from None
    return rows if len(rows) == len(spec.trials()) else None
