from __future__ import annotations

import pytest

from training.errors import ConfigError
from training.params import Param, resolve

LR = Param("lr", float, 0.1, low=1e-6, high=10.0)
BATCH = Param("batch_size", int, 32, low=1)
ARCH = Param("arch", str, "mlp", choices=("mlp", "cnn"))
FLAG = Param("flag", bool, False)


def test_cli_strings_are_coerced_to_declared_types():
    assert resolve([LR, BATCH, ARCH, FLAG], {"lr": "0.5", "batch_size": "64", "arch": "cnn", "flag": "yes"},
                   owner="w") == {"lr": 0.5, "batch_size": 64, "arch": "cnn", "flag": True}


def test_defaults_fill_in_missing_values():
    assert resolve([LR, BATCH], {}, owner="w") == {"lr": 0.1, "batch_size": 32}


def test_integral_floats_are_accepted_for_ints_but_fractions_are_not():
    assert BATCH.parse("1e3") == 1000
    assert BATCH.parse(64.0) == 64
    with pytest.raises(ConfigError, match=r"Invalid value '1.5' for hyperparameter 'batch_size'.*integer"):
        BATCH.parse("1.5")


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        (LR, "-1", r"'lr'.*in \[1e-06, 10\]"),
        (LR, "abc", r"'lr'.*expected a number"),
        (LR, "nan", r"'lr'.*finite"),
        (LR, True, r"'lr'.*expected a number"),
        (BATCH, "0", r"'batch_size'.*>= 1"),
        (ARCH, "rnn", r"'arch'.*one of 'mlp', 'cnn'"),
        (FLAG, "maybe", r"'flag'.*true or false"),
    ],
)
def test_bad_values_name_the_value_and_what_is_accepted(param, value, message):
    with pytest.raises(ConfigError, match=message):
        param.parse(value)


def test_unknown_name_suggests_the_closest_known_one():
    with pytest.raises(ConfigError, match=r"Unknown hyperparameter 'btach_size' for workload 'w'\. "
                                          r"Did you mean 'batch_size'\?.*Known: lr, batch_size"):
        resolve([LR, BATCH], {"btach_size": 3}, owner="w")
