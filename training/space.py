"""Search spaces: fixed values, grid values, ``choice``, ``uniform``, ``loguniform``, ``randint``; validated
against a workload's hyperparameters before anything runs; expanded (grid) or sampled (random, seeded)."""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .limits import MAX_DOMAIN_VALUES, check_trial_count, clip, short
from .params import Param

_NUMERIC = (int, float)


@dataclass(frozen=True)
class Domain:
    """One hyperparameter's values to search: discrete ``values``, or a ``kind`` of range ``low..high``."""

    kind: str  # "grid", "choice", "uniform", "loguniform", "randint"
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0

    @property
    def discrete(self) -> bool:
        return self.kind in ("grid", "choice")

    @property
    def count(self) -> int | None:
        """How many values it holds: a list's, an integer range's (both ends in); None for a real range."""
        if self.discrete:
            return len(self.values)
        return int(self.high) - int(self.low) + 1 if self.kind == "randint" else None

    def nth(self, index: int) -> Any:
        """Its ``index``-th value (0 <= index < :attr:`count`)."""
        return self.values[index] if self.discrete else int(self.low) + index

    def sample(self, rng: random.Random) -> Any:
        if self.discrete:
            return rng.choice(self.values)
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.randint(int(self.low), int(self.high))

    def to_json(self) -> dict[str, Any]:
        return {self.kind: list(self.values)} if self.discrete else {self.kind: [self.low, self.high]}


def grid(values: Sequence[Any]) -> Domain:
    """Every value, each in its own trial (expanded as a product with the other grid dimensions)."""
    return Domain("grid", _values_of("grid", values))


def choice(values: Sequence[Any]) -> Domain:
    """One of ``values``: sampled by random search, enumerated by grid search."""
    return Domain("choice", _values_of("choice", values))


def _values_of(kind: str, values: Iterable[Any]) -> tuple[Any, ...]:
    """``values`` (a list, tuple, range, numpy array, generator ...) as a tuple of plain values; a string, a
    mapping or a single value is refused (``choice("mlp")`` meant its letters)."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise ConfigError(f"{kind}({short(values)}): give a list of values, e.g. {kind}(['a', 'b']).")
    to_list = getattr(values, "tolist", None)  # a numpy array: plain numbers
    return tuple(to_list() if callable(to_list) else values)


def uniform(low: float, high: float) -> Domain:
    """A float drawn uniformly from ``[low, high]``."""
    return Domain("uniform", low=low, high=high)


def loguniform(low: float, high: float) -> Domain:
    """A float whose logarithm is uniform: for learning rates. ``low`` must be > 0."""
    return Domain("loguniform", low=low, high=high)


def randint(low: int, high: int) -> Domain:
    """An integer in ``[low, high]``, both included."""
    return Domain("randint", low=low, high=high)


_MAKERS: dict[str, Any] = {
    "grid": grid, "choice": choice, "uniform": uniform, "loguniform": loguniform, "randint": randint}


def parse_domain(name: str, raw: Any) -> Domain | Any:
    """A YAML/JSON value as a Domain: a list is grid values, ``{kind: args}`` a domain, anything else fixed.

    Examples
    --------
    >>> parse_domain("lr", {"loguniform": [1e-4, 1e-1]})
    Domain(kind='loguniform', values=(), low=0.0001, high=0.1)
    >>> parse_domain("batch_size", [32, 64]).kind
    'grid'
    """
    if isinstance(raw, Domain):
        return raw
    if isinstance(raw, list | tuple):
        return grid(raw)
    if not isinstance(raw, Mapping):
        return raw
    if len(raw) != 1 or next(iter(raw)) not in _MAKERS:
        kinds = ", ".join(f"{{{k}: ...}}" for k in _MAKERS)
        raise ConfigError(f"Search space entry {short(name)}: {short(dict(raw))} is not a domain. Write one of "
                          f"{kinds}, a list of grid values, or a fixed value.")
    kind, args = next(iter(raw.items()))
    if kind in ("grid", "choice"):
        if not isinstance(args, list | tuple):
            raise ConfigError(f"Search space entry '{name}': {kind} needs a list of values, got {short(args)}.")
        return _MAKERS[kind](args)
    if not isinstance(args, list | tuple) or len(args) != 2:
        raise ConfigError(f"Search space entry '{name}': {kind} needs [low, high], got {short(args)}.")
    return _MAKERS[kind](*args)


def validate_space(space: Mapping[str, Any], params: Sequence[Param], owner: str) -> dict[str, Any]:
    """Check every entry against the workload's declared hyperparameters; return the parsed space."""
    by_name = {p.name: p for p in params}
    parsed: dict[str, Any] = {}
    for name, raw in space.items():
        if name not in by_name:
            from .params import resolve

            resolve(params, {name: None}, owner=owner)  # raises the unknown-name error with a suggestion
        parsed[name] = _validate_entry(by_name[name], parse_domain(name, raw))
    return parsed


def _validate_entry(param: Param, entry: Any) -> Any:
    if not isinstance(entry, Domain):
        return param.parse(entry)
    where = f"Search space entry '{param.name}'"
    if entry.discrete:
        if not entry.values:
            raise ConfigError(f"{where}: {entry.kind} has no values; give at least one.")
        if len(entry.values) > MAX_DOMAIN_VALUES:  # sized before any value is parsed
            raise ConfigError(f"{where}: {entry.kind} lists {len(entry.values):,} values, more than the limit of "
                              f"{MAX_DOMAIN_VALUES:,}. For a numeric range use uniform, loguniform or randint: "
                              "[low, high].")
        values = tuple(param.parse(v) for v in entry.values)
        seen: set[Any] = set()  # parsed values are plain scalars: hashable, and equal ones hash alike
        repeated: set[str] = set()
        for value in values:
            if value in seen:
                repeated.add(repr(value))
            seen.add(value)
        if repeated:
            shown = clip(", ".join(sorted(repeated)))
            raise ConfigError(f"{where}: {shown} given more than once; list each value once (a repeated value "
                              "would train the same trial twice).")
        return Domain(entry.kind, values)
    if param.kind not in _NUMERIC:
        raise ConfigError(f"{where}: {entry.kind} needs a numeric hyperparameter; '{param.name}' is "
                          f"{param.describe()}. Use choice: [...] instead.")
    for bound in (entry.low, entry.high):
        if isinstance(bound, bool) or not isinstance(bound, _NUMERIC):
            raise ConfigError(f"{where}: {entry.kind} bounds must be numbers, got {short(bound)}.")
    if entry.low > entry.high:
        raise ConfigError(f"{where}: low {entry.low!r} is greater than high {entry.high!r}.")
    if entry.kind == "loguniform" and entry.low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {entry.low!r}; use uniform for ranges "
                          "that include 0.")
    if entry.kind == "randint" and (param.kind is not int or not all(float(b).is_integer() for b in
                                                                       (entry.low, entry.high))):
        raise ConfigError(f"{where}: randint needs whole-number bounds and an integer hyperparameter.")
    param.parse(entry.low)  # the whole range must be valid for the workload
    param.parse(entry.high)
    return entry


def grid_size(space: Mapping[str, Any]) -> int:
    """How many trials a grid over ``space`` has, computed without building them.

    Examples
    --------
    >>> grid_size({"lr": grid([0.1, 0.2, 0.3]), "batch_size": choice([32, 64]), "epochs_x": 5})
    6
    """
    continuous = [n for n, d in space.items() if isinstance(d, Domain) and not d.discrete]
    if continuous:
        raise ConfigError(f"Grid search cannot enumerate {', '.join(continuous)} (continuous ranges): use "
                          "search: random, or give a list of values.")
    return math.prod(len(d.values) for d in space.values() if isinstance(d, Domain))


def distinct_combinations(space: Mapping[str, Any]) -> int | None:
    """How many different trials sampling ``space`` can give: None where a dimension is continuous (no
    bound); lists and integer ranges have as many values as they hold.

    Examples
    --------
    >>> distinct_combinations({"lr": choice([0.1, 0.2, 0.3]), "hidden": randint(32, 35), "epochs_x": 5})
    12
    >>> distinct_combinations({"lr": uniform(0.1, 0.2)}) is None
    True
    """
    sizes = [domain.count for domain in space.values() if isinstance(domain, Domain)]
    return None if None in sizes else math.prod(size for size in sizes if size is not None)


def grid_trials(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the discrete dimensions (fixed values included), in a stable order; refused
    beyond the trial limit (:func:`training.limits.max_trials`) before any is built."""
    check_trial_count(grid_size(space), "The grid")
    names = list(space)
    axes = [space[n].values if isinstance(space[n], Domain) else (space[n],) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def random_trials(space: Mapping[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` samples of the space, reproducible under ``seed``. A space of lists and integer ranges
    only is sampled without replacement (no trial twice, as long as ``count`` is at most
    :func:`distinct_combinations`), its combinations numbered, never built.

    Examples
    --------
    >>> trials = random_trials({"lr": choice([0.1, 0.2]), "hidden": randint(2, 3)}, count=4, seed=0)
    >>> sorted((t["lr"], t["hidden"]) for t in trials)
    [(0.1, 2), (0.1, 3), (0.2, 2), (0.2, 3)]
    """
    check_trial_count(count, f"num_trials={count}")
    rng = random.Random(seed)
    distinct = distinct_combinations(space)
    if distinct is None or count > distinct:
        return [{n: (d.sample(rng) if isinstance(d, Domain) else d) for n, d in space.items()}
                for _ in range(count)]
    if distinct <= sys.maxsize:
        numbers = rng.sample(range(distinct), count)
    else:  # beyond what range() can sample from: draw, and draw again on a repeat (rare in such a space)
        taken: dict[int, None] = {}
        while len(taken) < count:
            taken.setdefault(rng.randrange(distinct))
        numbers = list(taken)
    return [_combination(space, number) for number in numbers]


def _combination(space: Mapping[str, Any], number: int) -> dict[str, Any]:
    """The ``number``-th combination of a space of lists and integer ranges (mixed radix, first name
    fastest)."""
    trial = {}
    for name, domain in space.items():
        if not isinstance(domain, Domain):
            trial[name] = domain
            continue
        number, index = divmod(number, domain.count or 1)  # a list or an integer range here: count is set
        trial[name] = domain.nth(index)
    return trial


def space_to_json(space: Mapping[str, Any]) -> dict[str, Any]:
    """The space as plain JSON (for the run's spec file and its fingerprint)."""
    return {n: (d.to_json() if isinstance(d, Domain) else d) for n, d in space.items()}
