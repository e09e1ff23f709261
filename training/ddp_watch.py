"""Watching one run of a DDP job's ranks: rank 0's epochs shown and its checkpoint copied as they come, and
a lost worker, a failed rank or a hung one turned into one clear error that names the rank to blame.

The order of blame: a rank whose worker left the cluster; then one that stopped beating (its process is
stopped or not responding: ``training.beats``); then one that raised an error of its own; then one that
never left a collective its peers gave up on. A hung rank's worker process is killed through its nanny
(a stopped process cannot close itself, and its slot would stay taken); a survivor that has not ended a
few seconds after the failure is stuck in its thread, and its worker is restarted. Either way every
worker the job used can take work again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import Future, wait

from cluster import ClusterError, cluster_workers

from .beats import BeatWatch, hung_after
from .ddp_checkpoint import CheckpointCopy
from .errors import DDPJobFailed, RankRefused
from .events import Inbox
from .protocol import EpochEnded, FirstStep
from .slots import end_hung_processes, free_workers

if TYPE_CHECKING:
    from .ddp import DDPProgress
    from .ddp_run import Placement

log = logging.getLogger(__name__)

_POLL = 0.2
_WORKER_CHECK_EVERY = 1.0
_SURVIVOR_GRACE = 5.0  # seconds the other ranks get to leave their collectives once the job failed


@dataclass
class Attempt:
    """One run of a job's ranks: what the watcher needs to know about it."""

    job: str
    token: str
    number: int
    timeout: float
    futures: list[Future]
    placements: list[Placement]
    resumed_epoch: int

    @property
    def local_key(self) -> str:
        return f"{self.token}.{self.number}"


class RankWatcher:
    """Waits for an attempt's ranks; raises :class:`DDPJobFailed` naming the culprit when it fails."""

    def __init__(self, client: Any, attempt: Attempt, inbox: Inbox, beats: BeatWatch, copy: CheckpointCopy,
                 progress: DDPProgress, describe: Callable[[int], str]) -> None:
        self.client, self.attempt, self.inbox, self.beats = client, attempt, inbox, beats
        self.copy, self.progress, self.describe = copy, progress, describe
        self.first_step: float | None = None
        self.shown = attempt.resumed_epoch
        self.lost: set[int] = set()
        self.hung: set[int] = set()  # ended by us: their workers leaving is no news

    @property
    def futures(self) -> list[Future]:
        return self.attempt.futures

    def watch(self) -> float | None:
        """Until every rank ended: the time of the first optimizer step (None if none was reported)."""
        checked = 0.0
        while not all(f.done() for f in self.futures):
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when nothing finished
                wait([f for f in self.futures if not f.done()], timeout=_POLL, return_when="FIRST_COMPLETED")
            self._drain()
            trouble = any(f.status == "error" for f in self.futures)
            if not trouble and time.monotonic() - checked > _WORKER_CHECK_EVERY:
                trouble, checked = bool(self._lost_ranks()), time.monotonic()
            if trouble or self.beats.silent(self._running()):
                self._fail()
        self._drain()
        if any(f.status == "error" for f in self.futures):
            self._fail()
        self.copy.fetch(self.attempt.placements[0].worker, self.attempt.job, self.attempt.local_key)
        return self.first_step

    def _drain(self) -> None:
        self.beats.update()
        for event in self.inbox.drain():
            if isinstance(event, FirstStep):
                self.first_step = self.first_step or event.time
            elif isinstance(event, EpochEnded) and int(event.record.get("epoch", 0)) > self.shown:
                # Copied before it is shown: what a progress hook sees reported is safe on the client.
                self.copy.fetch(self.attempt.placements[0].worker, self.attempt.job, self.attempt.local_key)
                self.shown = int(event.record["epoch"])
                self.progress.on_epoch(event.record)

    def _running(self) -> list[int]:
        return [r for r, f in enumerate(self.futures) if not f.done() and r not in self.lost | self.hung]

    def _lost_ranks(self) -> list[int]:
        """Ranks whose worker has left the cluster (remembered: their futures get cancelled)."""
        try:
            alive = set(cluster_workers(self.client))
        except ClusterError:  # the scheduler did not answer: none found lost now (the job's timeouts stand)
            return sorted(self.lost)
        self.lost |= {p.rank for f, p in zip(self.futures, self.attempt.placements, strict=True)
                      if p.worker not in alive and f.status != "finished" and p.rank not in self.hung}
        return sorted(self.lost)

    def _errors(self) -> dict[int, str]:
        return {r: _first_line(f.exception()) for r, f in enumerate(self.futures) if f.status == "error"}

    def _fail(self) -> None:
        """End what is left of the attempt, find the root cause, raise."""
        self._lost_ranks()
        hung = self.beats.silent(self._running(), longer_than=min(self.attempt.timeout,
                                                                  hung_after(self.attempt.timeout)))
        silences = {r: (self.beats.silence(r), self.beats.last(r)) for r in hung}
        self.hung |= set(hung)
        end_hung_processes(self.client, [self.attempt.placements[r].worker for r in hung])
        self.client.cancel([self.futures[r] for r in [*self.lost, *hung]], force=True)
        stuck = self._wait_for_survivors(set(hung))
        self._drain()
        raise self._blame(hung, silences, stuck)

    def _wait_for_survivors(self, hung: set[int]) -> list[int]:
        """Give the other ranks a few seconds to leave their collectives; restart the workers of those that
        did not (their threads are stuck) and return their ranks."""
        deadline = time.monotonic() + min(self.attempt.timeout, _SURVIVOR_GRACE)
        while time.monotonic() < deadline:
            self._lost_ranks()
            if not [r for r in self._running() if r not in hung]:
                return []
            time.sleep(_POLL)
        stuck = [r for r in self._running() if r not in hung]
        self.client.cancel([self.futures[r] for r in stuck], force=True)
        free_workers(self.client, [self.attempt.placements[r].worker for r in stuck])
        return stuck

    def _blame(self, hung: list[int], silences: dict[int, tuple[float, str]], stuck: list[int]) -> DDPJobFailed:
        errors = self._errors()
        if self.lost:
            culprit, cause = min(self.lost), "its worker left the cluster (the process died or was killed)"
        elif hung:
            seconds, last = silences[hung[0]]
            culprit, cause = hung[0], (f"sent nothing for {seconds:.0f} s (last: {last}); its process was "
                                       "stopped or not responding, so it was ended (its nanny restarts it)")
        elif errors and (not stuck or not all(_is_peer_error(e) for e in errors.values())):
            culprit = min(errors, key=lambda r: (_is_peer_error(errors[r]), r))
            cause = errors[culprit]
        elif stuck:
            culprit = stuck[0]
            cause = (f"never left its step (last: {self.beats.last(culprit)}) while its peers timed out "
                     "waiting for it; its thread was stuck, so its worker was restarted")
        else:  # every rank ended, none with an error: cannot happen, say so rather than guess
            culprit, cause = 0, "the ranks ended without a result"
        others = "; ".join(f"rank {r}: {e}" for r, e in sorted(errors.items()) if r != culprit)
        ended = (f"Ranks {[r for r in stuck if r != culprit]} were stuck; their workers were restarted. "
                 if [r for r in stuck if r != culprit] else
                 "All other ranks ended" + (f" ({others}). " if others else ". "))
        placement = self.attempt.placements[culprit]
        error = self.futures[culprit].exception(timeout=self.attempt.timeout) if culprit in errors else None
        if isinstance(error, RankRefused):  # its input: what it said is the whole story (the others follow)
            said = str(error).strip()
            return DDPJobFailed(f"rank {culprit} on {placement.worker} ({self.describe(culprit)}) refused its "
                                f"input: {said}", rank=culprit, worker=placement.worker, refused=True)
        summary = f"rank {culprit} on {placement.worker} ({self.describe(culprit)}): {cause}."
        return DDPJobFailed(f"{summary} {ended}", rank=culprit, worker=placement.worker, summary=summary)


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _is_peer_error(text: str) -> bool:
    """Errors a rank gets because a peer went away, not because of its own work."""
    return any(s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                                   "Socket Timeout", "Timed out", "timed out"))
