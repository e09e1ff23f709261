"""The packages' lazily imported names (PEP 562) stay what they name once every submodule is imported: a
name equal to a submodule's would turn into that module (``from cluster import connect`` gave the module
``cluster.connect`` after anything had imported it)."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest


@pytest.mark.parametrize("package", ["cluster", "training"])
def test_no_public_name_is_shadowed_by_a_submodule(package):
    imported = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(imported.__path__)}
    clashes = sorted(set(imported.__all__) & submodules)
    assert not clashes, f"{package}: public names that are also submodules: {clashes}"
    for module in submodules - {"worker_main", "fork_preload", "__main__"}:
        importlib.import_module(f"{package}.{module}")
    for name in imported.__all__:
        assert not isinstance(getattr(imported, name), types.ModuleType), f"{package}.{name} is a module"
