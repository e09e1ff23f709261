"""Workload data: real files and packaged data, checked against the seeds' own formats."""

from __future__ import annotations

import gzip
import json
import re
import struct

import numpy as np
import pytest
import torch

from training.errors import ConfigError, DataError
from training.params import resolve
from training.workloads import BUILTIN, get_workload
from training.workloads.digits import read_idx
from training.workloads.names import CHARACTERS, encode_windows, read_names


def _defaults(name: str, **overrides):
    work = get_workload(name)
    return work, resolve(work.params, overrides, owner=name)


def _seed_format_training_data(pet_names, str_len=8):
    """The Saturn Cloud seed's `format_training_data`, minus its one-hot step (the reference)."""
    characters = list(CHARACTERS)
    expanded = [[(n + "+")[0:j] for j in range(1, len(n) + 2)] for n in pet_names]
    flat = [list(item) for sub in expanded for item in sub]
    padded = [name[-(str_len + 1):] for name in flat]
    padded = [list((str_len + 1 - len(c)) * "*") + c for c in padded]
    numeric = [[characters.index(ch) for ch in name] for name in padded]
    return torch.tensor([n[:-1] for n in numeric]), torch.tensor([n[1:] for n in numeric])


def test_name_windows_match_the_seed_exactly():
    names = ["rex", "bo", "maximilian von der leyen", "a"]
    x, y = _seed_format_training_data(names)
    windows = encode_windows(names, 8)
    assert windows.dtype == torch.uint8
    assert torch.equal(windows[:, :-1].long(), x)
    assert torch.equal(windows[:, 1:].long(), y)


def test_names_default_corpus_is_the_census_lists_from_the_names_package():
    last = read_names("", "last", 0)
    first = read_names("", "first", 0)
    assert last[:3] == ["smith", "johnson", "williams"]
    assert len(last) == 88_799
    assert {"james", "mary"} <= set(first)
    assert len(read_names("", "all", 0)) == len(set(last) | set(first))


def test_names_from_user_json_and_text_files(tmp_path):
    (tmp_path / "pets.json").write_text(json.dumps(["Rex", "Bo", "Rex", "Mr. Whiskers", "Zoë"]))
    (tmp_path / "pets.txt").write_text("Rex\n\nLuna\n")
    # Duplicates collapse; names with characters outside the seed alphabet are dropped.
    assert read_names(str(tmp_path / "pets.json"), "all", 0) == ["rex", "bo", "mr. whiskers"]
    assert read_names(str(tmp_path / "pets.txt"), "all", 0) == ["rex", "luna"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("", "is empty"), ("[1, 2]", "JSON list of strings"),
     ("[oops", "does not parse"), ("Zoë\n", "No usable names")],
)
def test_bad_names_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "names.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_names(str(path), "all", 0)


def test_data_is_deterministic_under_a_seed_and_splits_are_disjoint():
    work, params = _defaults("names", corpus="first", max_names=500)
    a, b, c = work.load_data(params, 1), work.load_data(params, 1), work.load_data(params, 2)
    assert torch.equal(a.train[0], b.train[0])
    assert not torch.equal(a.train[0], c.train[0])
    train_rows = {tuple(r) for r in a.train[0].tolist()}
    # Names are split by name, so a validation name's full-length window never appears in training.
    full_val = [tuple(r) for r in a.val[0].tolist() if r[-1] == 1 and r[0] != 0]
    assert not any(r in train_rows for r in full_val)


def test_charlm_ships_a_shakespeare_excerpt_and_reads_user_text(tmp_path):
    work, params = _defaults("charlm")
    data = work.load_data(params, 0)
    vocab = data.meta["vocab"]
    text = "".join(vocab[i] for i in data.train[0][:, :-1].reshape(-1).tolist())
    assert text.startswith("THE SONNETS") and "From fairest creatures we desire increase" in text
    assert data.train[0].shape[1] == params["seq_len"] + 1
    (tmp_path / "t.txt").write_text("abcdefgh" * 100)
    small = work.load_data({**params, "data": str(tmp_path / "t.txt"), "seq_len": 16}, 0)
    assert small.meta["vocab"] == "abcdefgh"
    with pytest.raises(DataError, match="too short for seq_len=512"):
        work.load_data({**params, "data": str(tmp_path / "t.txt"), "seq_len": 512}, 0)
    with pytest.raises(DataError, match="does not exist"):
        work.load_data({**params, "data": str(tmp_path / "missing.txt")}, 0)


def test_digits_default_is_sklearn_8x8_digits_split_three_ways():
    work, params = _defaults("digits")
    data = work.load_data(params, 0)
    sizes = [len(data.train[1]), len(data.val[1]), len(data.test[1])]
    assert sum(sizes) == 1797
    assert data.train[0].shape[1:] == (1, 8, 8)
    assert abs(float(data.train[0].mean())) < 1e-3  # normalised with the training split's statistics


def _write_idx(path, array, gz=False):
    codes = {np.uint8: 0x08, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(header + body)


def test_mnist_idx_files_are_read_plain_or_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 40, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10])
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    work, params = _defaults("digits", data=str(tmp_path), arch="cnn")
    data = work.load_data(params, 0)
    assert data.train[0].shape[1:] == (1, 28, 28) and len(data.test[1]) == 10
    model = work.build_model(params, data.meta)
    assert model.fc1.in_features == 9216  # the course's CNN size for 28x28


def test_damaged_idx_files_get_clear_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="MNIST folder"):
        get_workload("digits").load_data(_defaults("digits", data=str(tmp_path / "nope"))[1], 0)


def test_xor_and_linreg_generate_the_seed_distributions():
    work, params = _defaults("xor")
    x, y = work.load_data(params, 0).train
    assert x.shape == (2500, 2) and set(y.unique().tolist()) == {0.0, 1.0}
    corners = x.round()
    assert torch.equal((corners.sum(1) == 1).float(), y)
    work, params = _defaults("linreg", samples=20_000)
    x, y = work.load_data(params, 0).train
    w, *_ = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), y)
    assert torch.allclose(w.view(-1), torch.tensor([2.0, -3.0, 10.0]), atol=0.1)


def test_every_builtin_declares_params_metrics_and_builds_a_model():
    for name, work in BUILTIN.items():
        params = resolve(work.params, {}, owner=name)
        assert work.metric.startswith("val_") and work.mode in ("min", "max")
        assert {"lr", "batch_size"} <= set(params)
        assert work.use in ("generate", "evaluate")


def test_unknown_workload_and_user_workload_import():
    with pytest.raises(ConfigError, match=r"Unknown workload 'nmaes'\. Did you mean 'names'"):
        get_workload("nmaes")
    with pytest.raises(ConfigError, match="Cannot import workload"):
        get_workload("no_such_module:Thing")
    with pytest.raises(ConfigError, match="not a Workload subclass"):
        get_workload("collections:OrderedDict")
    assert get_workload("training.workloads.xor:Xor").name == "xor"


@pytest.mark.parametrize(("source", "said"), [
    ("def broken(:\n", "its module raised SyntaxError: "),
    ("raise RuntimeError('no GPU here')\n", "its module raised RuntimeError: no GPU here."),
    ("from training.workloads.linreg import LinReg\nclass W(LinReg):\n    def __init__(self):\n"
     "        raise ValueError('needs a key')\n", "W() raised ValueError: needs a key."),
    ("from training.workloads.linreg import LinReg\nclass W(LinReg):\n    metrics = 'val_loss'\n",
     "metrics is 'val_loss', not a tuple of metric names"),
    ("from training.workloads.linreg import LinReg\nclass W(LinReg):\n    params = ('lr',)\n",
     "params is ('lr',), not a tuple of training.params.Param declarations."),
    ("from training.workloads.linreg import LinReg\nclass W(LinReg):\n"
     "    params = LinReg.params + LinReg.params[:1]\n",
     "params declares lr more than once."),
    ("from training.params import Param\nfrom training.workloads.linreg import LinReg\nclass W(LinReg):\n"
     "    params = (Param('lr', float, 'fast'),)\n", "the default of param 'lr' is not one it accepts"),
    ("from training.workloads.linreg import LinReg\nclass W(LinReg):\n    mode = 'best'\n",
     "mode is 'best', not 'min' or 'max'."),
])
def test_a_workload_of_your_own_that_fails_to_import_or_declares_badly_is_named_when_it_is_named(
        tmp_path, monkeypatch, source, said):
    """A module with a SyntaxError, one raising as it runs, a class raising as it is made, and declarations of
    another form (metrics of one string listed letter by letter, params of names, a name twice, a default it
    refuses, another mode) failed later, deep inside, or with the raw exception: one ConfigError, at once."""
    import sys

    (tmp_path / "my_wl_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_wl_mod", raising=False)
    with pytest.raises(ConfigError, match=re.escape(said)):
        get_workload("my_wl_mod:W")


def test_a_text_data_file_larger_than_the_limit_is_refused_where_it_is_read(tmp_path):
    """The client checks the data file's size before anything starts; a worker reading it checks again (it may
    see another file, or one grown since): names and charlm read it whole, so never more than MAX_TEXT_DATA."""
    from training.limits import MAX_TEXT_DATA
    from training.workloads.base import read_text_data

    big = tmp_path / "big.txt"
    with big.open("wb") as file:  # sparse: its size on paper
        file.truncate(MAX_TEXT_DATA + 1)
    with pytest.raises(DataError, match=r"Names file '.*big.txt' holds 64.0 MiB: .* at most 64 MiB"):
        read_text_data(big, "Names file")
    for workload in ("names", "charlm"):
        with pytest.raises(DataError, match="at most 64 MiB"):
            work = get_workload(workload)
            work.load_data(resolve(work.params, {"data": str(big)}, owner=workload), 0)
    fits = tmp_path / "fits.txt"
    fits.write_bytes(b"anna\r\nbob\rcy\n")  # newlines as reading text gives them: never a '\r' character
    assert read_text_data(fits, "Names file") == "anna\nbob\ncy\n"
