"""``names``: the Saturn Cloud pet-name LSTM, trained on real name lists, generating new names."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataError
from ..limits import MAX_TEXT_DATA, short
from ..params import Param
from .base import Batch, Data, Workload, read_text_data, split_indices

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: The seed's alphabet: '*' pads a window on the left, '+' ends a name.
CHARACTERS = "*+abcdefghijklmnopqrstuvwxyz-. "
PAD, STOP = 0, 1
MAX_NAME_LENGTH = 30
#: Names sampled at once at most: memory stays bounded however many are asked for (sampling 10,000 at once
#: took ~700 MB, 100,000 would take ~6 GB).
GENERATE_BATCH = 1024
_CENSUS = {"last": ("dist.all.last",), "first": ("dist.male.first", "dist.female.first")}


class Names(Workload):
    name = "names"
    summary = "4-layer char-LSTM generating names (Saturn Cloud pet names); US census lists by default"
    default_epochs = 8
    use = "generate"
    params = (
        Param("lr", float, 1e-3, "Adam learning rate", low=1e-7, high=1.0),
        Param("batch_size", int, 4096, "samples per step", low=1, high=1 << 20),
        Param("hidden", int, 128, "LSTM hidden size", low=1, high=4096),
        Param("layers", int, 4, "LSTM layers", low=1, high=16),
        Param("dropout", float, 0.1, "dropout between LSTM layers", low=0.0, high=0.9),
        Param("window", int, 8, "characters of context", low=1, high=64),
        Param("data", str, "", "JSON list or text file of names (one a line); empty: census lists",
              path="file", max_bytes=MAX_TEXT_DATA),
        Param("corpus", str, "all", "census list when no data file is given", choices=("all", "last", "first")),
        Param("max_names", int, 0, "use only the first N names (0: all)", low=0),
        Param("val_fraction", float, 0.1, "share of names held out for validation", low=0.01, high=0.5),
    )

    def load_data(self, params: Mapping[str, Any], seed: int) -> Data:
        all_names = read_names(params["data"], params["corpus"], params["max_names"])
        if len(all_names) < 2:
            raise DataError(f"Need at least 2 names to train and validate, found {len(all_names)}.")
        val_idx, train_idx = split_indices(len(all_names), (params["val_fraction"],), seed)
        window = params["window"]
        train = [all_names[i] for i in train_idx.tolist()]
        val = [all_names[i] for i in val_idx.tolist()]
        return Data(
            train=(encode_windows(train, window),),
            val=(encode_windows(val, window),),
            meta={"characters": CHARACTERS, "window": window},
            artifacts={"known_names": sorted(all_names)},
        )

    def check_meta(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        if meta.get("window") != params["window"] or meta.get("characters") != CHARACTERS:
            raise ConfigError(f"its meta (window {short(meta.get('window'))}, characters "
                              f"{short(meta.get('characters'))}) is not what names data of window "
                              f"{params['window']} has: the model file was edited or damaged.")

    def build_model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> nn.Module:
        from .charlstm import CharLSTM

        return CharLSTM(len(meta["characters"]), params["hidden"], params["layers"], params["dropout"])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        from .charlstm import sequence_loss

        (windows,) = batch
        logits, _ = model(windows[:, :-1])
        return sequence_loss(logits, windows[:, 1:])

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        from .charlstm import sequence_sums

        (windows,) = batch
        logits, _ = model(windows[:, :-1])
        return sequence_sums(logits, windows[:, 1:])

    def generate(self, model: nn.Module, meta: Mapping[str, Any], artifacts: Mapping[str, Any],
                 count: int, *, seed: int | None = None, prompt: str = "") -> list[str]:
        """Up to ``count`` new names: sampled until the stop character, names seen in training dropped."""
        import torch

        prompt = prompt.lower()
        allowed = str(meta["characters"])[2:]  # not the padding and stop characters
        missing = sorted(set(prompt) - set(allowed))
        if missing:
            raise DataError(f"Prompt characters {missing} are not in the model's names' characters {allowed!r}.")
        if len(prompt) >= MAX_NAME_LENGTH:
            raise DataError(f"Prompt of {len(prompt)} characters: names are at most {MAX_NAME_LENGTH}, so a "
                            f"prompt may have at most {MAX_NAME_LENGTH - 1}.")
        known = {n.lower() for n in artifacts.get("known_names", ())}
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**31))
        found: dict[str, None] = {}
        batch = min(max(count, 16), GENERATE_BATCH)
        for _ in range(20 * -(-count // batch)):  # bounded: a model that only repeats training names must not loop
            with torch.no_grad():
                sampled = _sample_names(model, meta, batch, generator, prompt)
            for name in sampled:
                if name and name not in known:
                    found.setdefault(name.title(), None)
            if len(found) >= count:
                break
        return list(found)[:count]


def read_names(path: str, corpus: str, max_names: int) -> list[str]:
    """Names from a user file (JSON list or one a line) or the census lists, lower-cased, deduplicated."""
    raw = _read_user_names(Path(path)) if path else _read_census(corpus)
    allowed = set(CHARACTERS[2:])
    cleaned = [n.strip().lower() for n in raw]
    usable = [n for n in cleaned if n and set(n) <= allowed and len(n) <= MAX_NAME_LENGTH]
    dropped = sum(1 for n in cleaned if n) - len(usable)
    kept = list(dict.fromkeys(usable))
    if dropped:
        log.info("names: dropped %d names with characters outside %r or longer than %d",
                 dropped, CHARACTERS[2:], MAX_NAME_LENGTH)
    if not kept:
        source = path or f"census list '{corpus}'"
        raise DataError(f"No usable names in {source}: names may use only the characters "
                        f"{CHARACTERS[2:]!r}. Pass a JSON list or a text file with one name a line.")
    return kept[:max_names] if max_names else kept


def _read_user_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"Names file {str(path)!r} does not exist. Pass --data PATH to a JSON list or a "
                        "text file with one name a line, or leave --data out to use the census lists.")
    text = read_text_data(path, "Names file")
    if not text.strip():
        raise DataError(f"Names file {str(path)!r} is empty.")
    if text.lstrip().startswith("{"):
        raise DataError(f"Names file {str(path)!r} holds a JSON object: pass a JSON list of strings, or a text "
                        "file with one name a line.")
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"Names file {str(path)!r} looks like JSON but does not parse: {exc}.") from None
        if not all(isinstance(v, str) for v in values):
            raise DataError(f"Names file {str(path)!r} must be a JSON list of strings.")
        return values
    return text.splitlines()


def _read_census(corpus: str) -> list[str]:
    import names as names_package  # the PyPI package that ships the census lists

    folder = Path(names_package.__file__).parent
    files = _CENSUS["last"] + _CENSUS["first"] if corpus == "all" else _CENSUS[corpus]
    result: list[str] = []
    for filename in files:
        with open(folder / filename, encoding="ascii") as handle:
            result.extend(line.split()[0] for line in handle if line.strip())
    return result


def encode_windows(names: Sequence[str], window: int) -> torch.Tensor:
    """Every training window of the seed, as ``(n, window + 1)`` uint8 indices.

    A name ``s`` yields ``len(s) + 1`` windows: each prefix of ``s + '+'``, cut to its last
    ``window + 1`` characters and padded on the left with ``'*'``. Inputs are ``w[:, :-1]``,
    targets ``w[:, 1:]``. Built with one sliding view over all names at once.
    """
    import numpy as np

    lookup = np.zeros(256, dtype=np.uint8)
    lookup[np.frombuffer(CHARACTERS.encode(), dtype=np.uint8)] = np.arange(len(CHARACTERS))
    padded = "".join("*" * window + n + "+" for n in names).encode("ascii")
    flat = lookup[np.frombuffer(padded, dtype=np.uint8)]
    lengths = np.fromiter((len(n) + 1 for n in names), dtype=np.int64, count=len(names))
    starts = np.concatenate(([0], np.cumsum(lengths + window)[:-1]))
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    index = np.repeat(starts, lengths) + offsets
    views = np.lib.stride_tricks.sliding_window_view(flat, window + 1)
    import torch

    return torch.from_numpy(np.ascontiguousarray(views[index]))


def _sample_names(model: nn.Module, meta: Mapping[str, Any], count: int,
                  generator: torch.Generator, prompt: str) -> list[str]:
    """Sample ``count`` names in one batch, one character a step, until each hits the stop character."""
    import torch

    from .charlstm import sample

    characters, window = meta["characters"], int(meta["window"])
    model.eval()
    seqs = torch.full((count, window + MAX_NAME_LENGTH), PAD, dtype=torch.long)
    start = window
    for ch in prompt:
        seqs[:, start] = characters.index(ch)
        start += 1
    done = torch.zeros(count, dtype=torch.bool)
    for pos in range(start, window + MAX_NAME_LENGTH):
        logits, _ = model(seqs[:, pos - window : pos])
        nxt = sample(logits[:, -1], generator, banned=PAD)
        nxt[done] = STOP
        seqs[:, pos] = nxt
        done |= nxt == STOP
        if bool(done.all()):
            break
    return [_decode(row, characters) for row in seqs[:, window:].tolist()]


def _decode(row: list[int], characters: str) -> str:
    out = []
    for index in row:
        if index == STOP:
            break
        out.append(characters[index])
    return "".join(out)
