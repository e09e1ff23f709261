"""Live progress of a DDP job, the default of ``train_ddp()`` and the CLI's: where the ranks run, the
dashboard and Training page URLs, then one aligned line per epoch of rank 0 (rich: terminal and Jupyter)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from rich.console import Console

from .ddp import DDPProgress
from .limits import printable
from .results_view import compact
from .shown import plain_console

if TYPE_CHECKING:
    from .ddp import Placement

_FIRST = ("epoch", "train_loss")
_LAST = ("lr", "seconds", "samples_per_s")
_HIDDEN = frozenset({"trial", "rank", "worker", "time"})


class LiveDDP(DDPProgress):
    """Prints a DDP job's progress on ``console`` (default: a new rich Console).

    Examples
    --------
    >>> train_ddp(client, "xor", epochs=2, workers=2, progress=LiveDDP())  # doctest: +SKIP
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or plain_console()
        self.say = functools.partial(_print_as_is, self.console)
        self.columns: list[str] | None = None
        self.epochs: int | None = None

    def on_start(self, name: str, placements: list[Placement], backend: str, dashboard: str | None,
                 resumed: bool) -> None:
        self.say(f"DDP job '{name}': {len(placements)} ranks, {backend}"
                           f"{', resuming from its checkpoint' if resumed else ''}.")
        names = _worker_names()
        for p in placements:
            self.say(f"  rank {p.rank} (local {p.local_rank}) on {names.get(p.worker, p.worker)}")
        self.say(f"Dashboard: {dashboard or 'not available on this scheduler'}")

    def on_page(self, url: str | None) -> None:
        self.say(f"Training page: {url or 'not available on this scheduler'}")

    def on_restart(self, attempt: int, max_restarts: int, reason: str, placements: list[Placement],
                   epoch: int) -> None:
        self.say(f"Restart {attempt} of {max_restarts}: {reason.strip()}", soft_wrap=True)
        self.say(f"  resuming from epoch {epoch} on {len(placements)} ranks" if epoch else
                           f"  starting again from epoch 0 on {len(placements)} ranks")
        names = _worker_names()
        for p in placements:
            self.say(f"  rank {p.rank} (local {p.local_rank}) on {names.get(p.worker, p.worker)}")

    def on_epoch(self, record: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = epoch_columns(record)
            self.say(_line(self.columns, {c: c for c in self.columns}), style="bold", soft_wrap=True)
        self.say(_line(self.columns, {c: compact(record.get(c)) for c in self.columns}),
                           soft_wrap=True)


def epoch_columns(record: dict[str, Any]) -> list[str]:
    """``epoch, train_loss``, the validation metrics, then ``lr, seconds, samples_per_s``.

    Examples
    --------
    >>> epoch_columns({"seconds": 1.0, "val_loss": 0.5, "epoch": 1, "train_loss": 0.6, "rank": 0})
    ['epoch', 'train_loss', 'val_loss', 'seconds']
    """
    keys = [k for k in record if k not in _HIDDEN]
    middle = sorted(k for k in keys if k not in _FIRST + _LAST)
    return [k for k in _FIRST if k in keys] + middle + [k for k in _LAST if k in keys]


def _worker_names() -> dict[str, str]:
    """Worker names (``cpu-0``) by address, from this process's default client; {} where there is none."""
    try:
        from distributed import default_client

        from cluster.client import cluster_workers

        workers = cluster_workers(default_client())
    except Exception:  # a view: no client, or a scheduler gone, leaves the addresses shown
        return {}
    return {address: str(w.get("name") or address) for address, w in workers.items()}


def _line(columns: list[str], cells: dict[str, str]) -> str:
    return "  ".join(f"{cells[c]:>{max(len(c), 9)}}" for c in columns)


def _print_as_is(console: Console, text: str, **kwargs: Any) -> None:
    """``text`` as it is on ``console`` (the caller's, perhaps): no markup, emoji or control characters."""
    console.print(printable(text), markup=False, emoji=False, **kwargs)
