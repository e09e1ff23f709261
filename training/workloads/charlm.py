"""``charlm``: a char-LSTM language model over any text, sampled with its state carried along."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from ..limits import MAX_TEXT_DATA
from ..params import Param
from .base import Batch, Data, Workload, read_text_data

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Shakespeare's sonnets I-L (Project Gutenberg, public domain), shipped for demos and tests.
DEMO_TEXT = "sonnets_1-50.txt"


class CharLM(Workload):
    name = "charlm"
    summary = "char-LSTM language model over a text file; ships Shakespeare's sonnets I-L for demos"
    default_epochs = 10
    use = "generate"
    params = (
        Param("lr", float, 3e-3, "Adam learning rate", low=1e-7, high=1.0),
        Param("batch_size", int, 32, "sequences per step", low=1, high=1 << 16),
        Param("seq_len", int, 64, "characters per training sequence", low=2, high=4096),
        Param("hidden", int, 128, "LSTM hidden size", low=1, high=4096),
        Param("layers", int, 1, "LSTM layers", low=1, high=16),
        Param("dropout", float, 0.0, "dropout between LSTM layers", low=0.0, high=0.9),
        Param("data", str, "", "text file to learn; empty: the shipped sonnets excerpt", path="file",
              max_bytes=MAX_TEXT_DATA),
        Param("val_fraction", float, 0.1, "share of the text (its end) held out", low=0.01, high=0.5),
    )

    def load_data(self, params: Mapping[str, Any], seed: int) -> Data:
        text = read_text(params["data"])
        vocab = "".join(sorted(set(text)))
        seq_len = params["seq_len"]
        cut = int(len(text) * (1 - params["val_fraction"]))
        if min(cut, len(text) - cut) < seq_len + 1:
            raise DataError(f"Text of {len(text)} characters is too short for seq_len={seq_len}: "
                            f"each split needs at least {seq_len + 1} characters. Lower --seq-len or "
                            "pass a longer text file.")
        codes = encode(text, vocab)
        return Data(
            train=(chunk(codes[:cut], seq_len),),
            val=(chunk(codes[cut:], seq_len),),
            meta={"vocab": vocab},
            artifacts={},
        )

    def build_model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> nn.Module:
        from .charlstm import CharLSTM

        return CharLSTM(len(meta["vocab"]), params["hidden"], params["layers"], params["dropout"])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        from .charlstm import sequence_loss

        (seqs,) = batch
        logits, _ = model(seqs[:, :-1])
        return sequence_loss(logits, seqs[:, 1:])

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        from .charlstm import sequence_sums

        (seqs,) = batch
        logits, _ = model(seqs[:, :-1])
        return sequence_sums(logits, seqs[:, 1:])

    def generate(self, model: nn.Module, meta: Mapping[str, Any], artifacts: Mapping[str, Any],
                 count: int, *, seed: int | None = None, prompt: str = "") -> list[str]:
        """``count`` characters sampled after ``prompt`` (default: the first character of the vocabulary
        that is a capital letter), carrying the LSTM state from one character to the next."""
        import torch

        from .charlstm import sample

        vocab = meta["vocab"]
        prompt = prompt or next((c for c in vocab if c.isupper()), vocab[0])
        missing = sorted(set(prompt) - set(vocab))
        if missing:
            raise DataError(f"Prompt characters {missing} are not in the model's vocabulary {vocab!r}.")
        generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.seed() % 2**31))
        model.eval()
        out = []
        with torch.no_grad():
            logits, state = model(encode(prompt, vocab).long().unsqueeze(0))
            for _ in range(count):
                nxt = sample(logits[:, -1], generator)
                out.append(vocab[int(nxt)])
                logits, state = model(nxt.view(1, 1), state)
        return [prompt + "".join(out)]


def read_text(path: str) -> str:
    """The user's text file, or the shipped excerpt when ``path`` is empty."""
    if not path:
        return resources.files("training.workloads").joinpath("data", DEMO_TEXT).read_text("utf-8")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"Text file {path!r} does not exist. Pass --data PATH to a text file, or leave it "
                        "out to use the shipped Shakespeare excerpt.")
    text = read_text_data(file, "Text file")
    if not text.strip():
        raise DataError(f"Text file {path!r} is empty.")
    return text


def encode(text: str, vocab: str) -> torch.Tensor:
    """Character indices in the smallest dtype that holds the vocabulary."""
    import torch

    lookup = {c: i for i, c in enumerate(vocab)}
    dtype = torch.uint8 if len(vocab) <= 256 else torch.int32
    return torch.tensor([lookup[c] for c in text], dtype=dtype)


def chunk(codes: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Consecutive sequences of ``seq_len + 1`` characters overlapping by one (input + shifted target)."""
    count = (len(codes) - 1) // seq_len
    return codes.unfold(0, seq_len + 1, seq_len)[:count].contiguous()
