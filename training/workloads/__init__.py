"""The built-in workloads and how to find one by name (or a user's, as ``module:Class``)."""

from __future__ import annotations

import difflib
import importlib

from ..errors import ConfigError
from .base import Batch, Data, Workload
from .charlm import CharLM
from .digits import Digits
from .linreg import LinReg
from .names import Names
from .xor import Xor

__all__ = ["BUILTIN", "Batch", "Data", "Workload", "get_workload", "workload_ref"]

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
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"Cannot import workload '{spec}': {exc}.") from None
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise ConfigError(f"'{spec}' is not a Workload subclass (see training.workloads.base.Workload).")
    return cls()
