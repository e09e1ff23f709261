"""DDP heartbeats: every rank says it is alive every few seconds, and the client notices one that stops.

A rank can stop without failing: its process stopped (SIGSTOP, a debugger, a machine swapping), or its
thread stuck. Its peers then wait in a collective until that times out, and the error they raise names
them, not the rank that stopped. So each rank runs a side thread that sends a small :class:`RankBeat`
with what its training thread did last ("epoch 2 step 14/40"), and the client's watcher treats a rank
silent for ``timeout`` seconds as hung. Beats travel on their own topic: the scheduler keeps a bounded log
per topic, and beats must never push the epoch events out of it. A side thread goes on beating while the
training thread is stuck in a collective: that case ends through the collective's own timeout, and the
watcher names the rank that never left it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .events import Inbox, plain
from .loop import Callback
from .protocol import RankBeat

log = logging.getLogger(__name__)

BEAT_TOPIC = "dask-train-beat"


def beat_period(timeout: float) -> float:
    """Seconds between two beats of a rank: a sixth of the rank timeout, between 0.5 and 5 s.

    Examples
    --------
    >>> beat_period(60.0), beat_period(12.0), beat_period(1.0)
    (5.0, 2.0, 0.5)
    """
    return min(5.0, max(0.5, timeout / 6))


def hung_after(timeout: float) -> float:
    """Silence after which a rank that has not ended while its peers failed counts as hung (not slow):
    three beats missed, and at least 5 s, so a loaded machine's late beat is not mistaken for a hang."""
    return max(3 * beat_period(timeout), 5.0)


class Heartbeat(Callback):
    """Worker side, around one rank: a daemon thread beating every ``period`` seconds; as the training
    loop's callback it keeps what the rank did last.

    Examples
    --------
    >>> with Heartbeat(None, job="j", run="r", rank=1, attempt=0, period=1.0) as beat:
    ...     beat.on_epoch_start(2, 40); beat.on_batch_end(2, 14)
    ...     beat.last
    'epoch 2 step 14/40'
    """

    def __init__(self, worker: Any, *, job: str, run: str, rank: int, attempt: int, period: float) -> None:
        self.worker, self.period = worker, period
        self.beat = RankBeat(job, run, rank=rank, attempt=attempt)
        self.last = "started"
        self._batches = 0
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dask-train-beat-rank{rank}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.worker is not None:  # outside a Dask worker there is nobody to tell
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.period + 1)

    def doing(self, what: str) -> None:
        """Record a step outside the loop (rendezvous, loading data)."""
        self.last = what

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self._batches = num_batches
        self.last = f"epoch {epoch} step 0/{num_batches}"
        self._wake.set()  # a beat at every epoch's start, however short the epochs

    def on_batch_end(self, epoch: int, batch: int) -> None:
        self.last = f"epoch {epoch} step {batch}/{self._batches}"

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.last = f"epoch {record.get('epoch')} done (validated, checkpoint saved)"

    def _run(self) -> None:
        while not self._stop.is_set():
            self._send()
            self._wake.wait(self.period)
            self._wake.clear()

    def _send(self) -> None:
        message = plain(RankBeat(self.beat.job, self.beat.run, time=time.time(), rank=self.beat.rank,
                                 attempt=self.beat.attempt, last=self.last).to_dict())
        try:
            self.worker.log_event(BEAT_TOPIC, message)  # thread-safe: handed to the worker's event loop
        except Exception as exc:  # a closing worker: the watcher will notice the silence
            log.debug("Could not send a heartbeat: %s", exc)


class BeatWatch:
    """Client side: when each rank of one attempt last beat (this process's clock) and what it did last.

    Until a rank's first beat, the silence counts from when the watch opened.
    """

    def __init__(self, client: Any, run: str, ranks: int, attempt: int, timeout: float) -> None:
        self.attempt, self.timeout = attempt, timeout
        self.inbox = Inbox(client, run, topic=BEAT_TOPIC)
        opened = time.monotonic()
        self.seen: dict[int, tuple[float, str]] = {r: (opened, "no heartbeat yet") for r in range(ranks)}

    def __enter__(self) -> BeatWatch:
        self.inbox.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inbox.__exit__(*exc)

    def update(self) -> None:
        """Take in the beats that arrived (another attempt's are ignored)."""
        now = time.monotonic()
        for beat in self.inbox.drain():
            if isinstance(beat, RankBeat) and beat.attempt == self.attempt and beat.rank in self.seen:
                self.seen[beat.rank] = (now, beat.last)

    def silence(self, rank: int) -> float:
        return time.monotonic() - self.seen[rank][0]

    def last(self, rank: int) -> str:
        return self.seen[rank][1]

    def silent(self, ranks: list[int], longer_than: float | None = None) -> list[int]:
        """Which of ``ranks`` sent nothing for ``longer_than`` (default: the timeout), longest first."""
        limit = self.timeout if longer_than is None else longer_than
        return sorted((r for r in ranks if self.silence(r) > limit), key=self.silence, reverse=True)
