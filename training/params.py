"""Hyperparameters a workload declares: type, default, valid range, and one place that validates them."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .limits import short

_KINDS: dict[type, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default, and the values it accepts.

    Parameters
    ----------
    name : str
        The name users write (``lr``, ``batch_size``).
    kind : type
        ``int``, ``float``, ``str`` or ``bool``.
    default : Any
        The value used when the user gives none.
    help : str
        One line for ``dask-train workloads``.
    low, high : float, optional
        Inclusive bounds for numbers.
    choices : tuple, optional
        The only values accepted.
    path : {"file", "dir"}, optional
        The value (when not empty) names data on disk: see :func:`check_data_paths`.
    max_bytes : int, optional
        The most bytes that file may hold (a file read whole into memory).

    Examples
    --------
    >>> Param("lr", float, 1e-3, "learning rate", low=0.0, high=10.0).parse("0.01")
    0.01
    """

    name: str
    kind: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    path: str | None = None
    max_bytes: int | None = None

    def parse(self, value: Any) -> Any:
        """Coerce ``value`` (a string from the CLI, or a Python value) and check it is allowed."""
        coerced = self._coerce(value)
        self._check(coerced, value)
        return coerced

    def describe(self) -> str:
        """The accepted values, for help text and error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return f"{_KINDS[self.kind]} in [{_bound(self.low)}, {_bound(self.high)}]"
        if self.low is not None:
            return f"{_KINDS[self.kind]} >= {_bound(self.low)}"
        return _KINDS[self.kind]

    def _coerce(self, value: Any) -> Any:
        if self.kind is bool:
            return _to_bool(self.name, value)
        if isinstance(value, bool) and self.kind in (int, float):
            raise self._error(value, f"expected {_KINDS[self.kind]}")
        try:
            if self.kind is int:
                return _to_int(value)
            if self.kind is float:
                return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
            raise self._error(value, f"expected {_KINDS[self.kind]}") from None
        if not isinstance(value, str):
            raise self._error(value, "expected a string")
        return value

    def _check(self, value: Any, given: Any) -> None:
        """``value`` (coerced from ``given``) is allowed."""
        if self.choices is not None and value not in self.choices:
            raise self._error(value, f"expected {self.describe()}")
        if self.kind in (int, float):
            if isinstance(value, float) and not math.isfinite(value):  # an int is finite, however large
                raise self._error(given, "expected a finite number")  # as given: '1' * 5000 became inf
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise self._error(value, f"expected {self.describe()}")

    def _error(self, value: Any, why: str) -> ConfigError:
        return ConfigError(f"Invalid value {short(value)} for hyperparameter '{self.name}': {why}.")


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(value, str):
        return int(float(value)) if _is_integral_float(value) else int(value)
    return int(value)


def _is_integral_float(text: str) -> bool:
    try:
        number = float(text)
    except ValueError:
        return False
    return number.is_integer() and ("e" in text.lower() or "." in text)


def _bound(value: float) -> str:
    """A range's end as people write it: whole numbers in full (1048576, not 1.04858e+06), others by %g.

    Examples
    --------
    >>> _bound(1 << 20), _bound(1e-6), _bound(10_000_000), _bound(0.5)
    ('1048576', '1e-06', '10000000', '0.5')
    """
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}"


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"Invalid value {short(value)} for hyperparameter '{name}': expected true or false.")


def resolve(params: Iterable[Param], given: Mapping[str, Any], *, owner: str) -> dict[str, Any]:
    """Validate ``given`` against ``params`` and fill in defaults.

    Raises
    ------
    ConfigError
        For an unknown name (with the closest known one) or a value out of type or range.

    Examples
    --------
    >>> resolve([Param("lr", float, 0.1)], {"lr": "0.5"}, owner="xor")
    {'lr': 0.5}
    """
    by_name = {p.name: p for p in params}
    for name in given:
        if name not in by_name:
            raise ConfigError(_unknown_message(name, list(by_name), owner))
    return {name: (p.parse(given[name]) if name in given else p.default) for name, p in by_name.items()}


def check_data_paths(params: Iterable[Param], values: Iterable[Mapping[str, Any]], *, here: bool) -> None:
    """The data paths among ``values`` (one mapping of hyperparameters per trial), checked before any
    cluster starts: each must name a regular file (a folder for ``path="dir"``), never a device or a pipe
    a worker would read forever; with ``here`` (the workers run on this machine) it must exist too.

    Examples
    --------
    >>> check_data_paths([Param("data", str, "", path="file")], [{"data": "/dev/zero"}], here=False)
    Traceback (most recent call last):
    ...
    training.errors.ConfigError: data='/dev/zero' is not a regular file (a device or pipe). Pass a file.
    """
    checked: set[tuple[str, str]] = set()
    for param in (p for p in params if p.path):
        for trial in values:
            value = trial.get(param.name)
            if isinstance(value, str) and value and (param.name, value) not in checked:
                checked.add((param.name, value))
                _check_data_path(param, value, here)


def _check_data_path(param: Param, value: str, here: bool) -> None:
    import os
    import stat

    named = f"{param.name}={short(value)}"
    want = "a folder" if param.path == "dir" else "a file"
    try:
        mode = os.stat(value).st_mode
    except FileNotFoundError:
        if here:
            raise ConfigError(f"{named} does not exist. Pass {want} that exists.") from None
        return  # the workers may see what this machine does not
    except OSError as exc:
        raise ConfigError(f"{named} cannot be read: {exc.strerror}.") from None
    if param.path == "dir":
        if not stat.S_ISDIR(mode):
            raise ConfigError(f"{named} is not a folder. Pass {want}.")
    elif stat.S_ISDIR(mode):
        raise ConfigError(f"{named} is a folder. Pass {want}.")
    elif not stat.S_ISREG(mode):
        raise ConfigError(f"{named} is not a regular file (a device or pipe). Pass {want}.")
    elif param.max_bytes is not None:
        check_data_size(value, os.stat(value).st_size, param.max_bytes, named)


def check_data_size(path: str, size: int, most: int, named: str | None = None) -> None:
    """Refuse a data file of more than ``most`` bytes (read whole into memory) before it is read."""
    if size > most:
        raise ConfigError(f"{named or short(path)} holds {size / 2**20:,.1f} MiB: this workload reads its data "
                          f"file whole, and takes at most {most // 2**20} MiB. Pass a smaller file (e.g. its "
                          f"first part: head -c {most // 2**20 - 1}M FILE > part.txt).")


def _unknown_message(name: str, known: list[str], owner: str) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"Unknown hyperparameter {short(name)} for workload '{owner}'.{hint} "
        f"Known: {', '.join(known)} (see `dask-train workloads`)."
    )
