"""The built-in workloads and how to find one by name (or a user's, as ``module:Class``)."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable

from ..errors import ConfigError
from ..limits import clip, short
from .base import Batch, Data, Workload
from .charlm import CharLM
from .digits import Digits
from .linreg import LinReg
from .names import Names
from .xor import Xor

__all__ = ["BUILTIN", "Batch", "Data", "Workload", "get_workload", "trusted_workload", "workload_ref"]

#: Built-in workloads by name. Workloads are stateless, so one instance each is shared.
BUILTIN: dict[str, Workload] = {w.name: w for w in (Names(), CharLM(), Digits(), Xor(), LinReg())}


def get_workload(name: str) -> Workload:
    """The workload called ``name``: a built-in, or ``package.module:ClassName`` for your own.

    Examples
    --------
    >>> get_workload("xor").default_epochs
    100
    """
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        return _import_workload(name)
    close = difflib.get_close_matches(name, list(BUILTIN), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"Unknown workload '{name}'.{hint} Built-in: {', '.join(BUILTIN)}; "
        "or name your own as 'package.module:ClassName' (a Workload subclass importable on every worker)."
    )


def trusted_workload(name: object, allow: Iterable[str] = (), *, source: str = "this file") -> Workload:
    """The workload a *file* names (a model directory, a run directory, a sweep file), imported only if the
    user allowed it: a built-in, or a ``module:Class`` listed in ``allow`` (what the user named on the
    command line or in code). A file never makes dask-train import code by itself.

    Raises
    ------
    ConfigError
        If ``name`` is not a string, or names code that is not in ``allow``; nothing was imported.

    Examples
    --------
    >>> trusted_workload("xor").name
    'xor'
    >>> try:
    ...     trusted_workload("os:system")
    ... except ConfigError as exc:
    ...     print(str(exc)[:46])
    this file names workload 'os:system', which is
    """
    if not isinstance(name, str):
        raise ConfigError(f"{source} names workload {short(name)}: expected a workload name (a string). "
                          f"Built-in: {', '.join(BUILTIN)}.")
    if name in BUILTIN or name in ({allow} if isinstance(allow, str) else set(allow)):  # one name, or several
        return get_workload(name)
    if ":" not in name:
        return get_workload(name)  # unknown plain name: the usual "did you mean" error, nothing imported
    raise ConfigError(f"{source} names workload {short(name)}, which is not built in; dask-train imports code "
                      f"only where you name it: pass --allow-workload {short(name, 60)[1:-1]} "
                      f"(Python: allow=[{short(name, 60)}]) if you trust it.")


def workload_ref(work: Workload) -> str:
    """How to name ``work`` so any process can get it back with :func:`get_workload` (model files, tasks).

    Examples
    --------
    >>> workload_ref(get_workload("xor")), workload_ref(get_workload("training.workloads.xor:Xor"))
    ('xor', 'xor')
    """
    builtin = BUILTIN.get(work.name)
    if builtin is not None and type(builtin) is type(work):
        return work.name
    cls = type(work)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_workload(spec: str) -> Workload:
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"Invalid workload name {short(spec)}: name your own as 'package.module:ClassName'.")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:  # the last two: e.g. '.x:Y' (relative)
        raise ConfigError(f"Cannot import workload {short(spec)}: {exc}.") from None
    except Exception as exc:  # its module failed as it ran (a SyntaxError, an error at import time)
        raise ConfigError(f"Cannot import workload {short(spec)}: its module raised {type(exc).__name__}: "
                          f"{clip(' '.join(str(exc).split()), 300)}.") from None
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise ConfigError(f"{short(spec)} is not a Workload subclass (see training.workloads.base.Workload).")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigError(f"{short(spec)} is an abstract Workload (it does not define {clip(missing)}): name a "
                          "subclass that defines them.")
    try:
        work = cls()
    except Exception as exc:
        raise ConfigError(f"Workload {short(spec)} could not be made: {class_name}() raised {type(exc).__name__}: "
                          f"{clip(' '.join(str(exc).split()), 300)}.") from None
    check_declarations(work)
    return work


def check_declarations(work: Workload) -> None:
    """A workload's class declarations of the form the loop and the CLI read (a ``metrics`` of one string was
    taken letter by letter; a ``params`` of names failed deep inside), else a ConfigError naming the field."""
    from ..params import Param

    owner = type(work).__name__
    params = getattr(work, "params", None)
    if not isinstance(params, tuple | list) or not all(isinstance(p, Param) for p in params):
        raise ConfigError(f"Workload {owner}: params is {short(params, 80)}, not a tuple of "
                          "training.params.Param declarations.")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"Workload {owner}: params declares {', '.join(twice)} more than once.")
    for param in params:
        if param.default is None:  # no default: the workload handles its absence
            continue
        try:
            param.parse(param.default)
        except ConfigError as exc:
            raise ConfigError(f"Workload {owner}: the default of param '{param.name}' is not one it accepts "
                              f"({exc})") from None
    metrics = getattr(work, "metrics", None)
    if not isinstance(metrics, tuple | list) or not all(isinstance(m, str) for m in metrics) or not metrics:
        raise ConfigError(f"Workload {owner}: metrics is {short(metrics, 80)}, not a tuple of metric names "
                          "(e.g. ('val_loss', 'val_accuracy')).")
    if getattr(work, "mode", None) not in ("min", "max"):
        raise ConfigError(f"Workload {owner}: mode is {short(getattr(work, 'mode', None), 80)}, not 'min' or "
                          "'max'.")
