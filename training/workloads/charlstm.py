"""The character LSTM both text workloads use: indices in, one-hot per batch, logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
    """LSTM over one-hot characters with a linear head (the seeds' pet-name and char-LSTM models).

    Inputs are integer character indices of shape ``(batch, time)`` in any integer dtype; they are
    one-hot encoded here, per batch, so datasets keep one byte per character instead of a float vector.
    """

    def __init__(self, vocab_size: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.lstm = nn.LSTM(
            input_size=vocab_size,
            hidden_size=hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        one_hot = F.one_hot(x.long(), self.vocab_size).to(self.fc.weight.dtype)
        output, state = self.lstm(one_hot, state)
        return self.fc(output), state


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``(batch, time, vocab)`` logits against ``(batch, time)`` indices."""
    return F.cross_entropy(logits.transpose(1, 2), targets.long(), reduction=reduction)


def sequence_sums(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss and next-character accuracy sums over every position, for validation."""
    targets = targets.long()
    return {
        "loss": sequence_loss(logits, targets, reduction="sum"),
        "accuracy": (logits.argmax(-1) == targets).sum(),
        "count": torch.tensor(targets.numel(), device=logits.device),
    }


def sample(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0,
           banned: int | None = None) -> torch.Tensor:
    """One index per row of ``(batch, vocab)`` logits; ``banned`` gets probability zero."""
    logits = logits.float() / temperature
    if banned is not None:
        logits[:, banned] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
