"""Training metrics as Dask events: workers send them with ``log_event`` on one topic, coordinators
publish their announcements on the same topic, and the client (and the Training page) subscribe. Dask's
Pub/Sub was removed in 2025.4; events are its supported replacement.

What travels is :mod:`training.protocol`'s events as plain dicts (msgpack-serialisable); readers get the
typed events back, and drop what does not parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .protocol import Event, parse_event

log = logging.getLogger(__name__)

TOPIC = "dask-train"
#: The coordinators' announcements (jobs, queued and ended trials), for the Training page only: no client
#: subscribes to it, so they do not travel back to the client that sent them. A message is one event or a
#: list of them.
PAGE_TOPIC = "dask-train-page"


#: How long at most :func:`held_events` holds an event back.
HOLD_SECONDS = 0.1
#: How long the coordinator's announcements to the Training page gather before they leave together.
PAGE_HOLD = 0.2


def emit(event: Event) -> None:
    """Send ``event`` from the worker running this task; a no-op outside a Dask worker. Inside
    :func:`held_events`, it leaves with the others held there."""
    held: _Held | None = getattr(_HOLDING, "held", None)
    if held is not None:
        held.add(plain(event.to_dict()))
        return
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return
    worker.log_event(TOPIC, plain(event.to_dict()))


@contextlib.contextmanager
def held_events(seconds: float = HOLD_SECONDS) -> Iterator[Callable[[], None]]:
    """Inside, this task's events are held back and leave together, as one message: at most ``seconds``
    after the first was held (a timer on the worker's event loop sends them, whatever the task's thread is
    doing, stuck or not), whenever the block calls what it is given, and as the block ends. A task of
    short trials sends a few messages a second, not one an event, each waking the worker's event loop and
    the scheduler's. Outside a Dask worker, events are dropped as :func:`emit` drops them."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        yield lambda: None
        return
    held = _HOLDING.held = _Held(worker, seconds)
    try:
        yield held.send
    finally:
        _HOLDING.held = None
        held.send()


class _Held:
    """Events held back on a worker (see :func:`held_events`): added from the task's thread, sent from
    either the thread or the worker's event loop, in the order they were added."""

    def __init__(self, worker: Any, seconds: float) -> None:
        self.worker, self.seconds = worker, seconds
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.messages.append(message)
            first = len(self.messages) == 1
        if first:  # one timer for all held until it fires: one wake-up of the event loop, not one an event
            self.worker.loop.add_callback(self.worker.loop.call_later, self.seconds, self.send)

    def send(self) -> None:
        """Send what is held, as one message (from the thread, or the event loop's timer). Taken and queued
        on the event loop under the lock, from either: batches leave in the order they were made."""
        with self.lock:
            messages, self.messages = self.messages, []
            if messages:
                self.worker.loop.add_callback(self._write, messages)

    def _write(self, messages: list[dict[str, Any]]) -> None:
        """On the worker's event loop, in the order :meth:`send` queued them."""
        try:
            self.worker.log_event(TOPIC, messages)
        except Exception as exc:  # the worker closing: the task's end tells the coordinator instead
            log.debug("Could not send %d training events: %s", len(messages), exc)


_HOLDING = threading.local()


def publish(client: Any, event: Event) -> None:
    """Send a coordinator's announcement (job, queued trial, trial end, job end) from the client.

    The Training page is a view: a failure to send is logged, never raised into the training.
    """
    message = plain(event.to_dict())
    message["time"] = message.get("time") or time.time()
    try:
        client.log_event(PAGE_TOPIC, message)
    except Exception as exc:
        log.debug("Could not send %s to the Training page: %s", event.kind, exc)


class Publisher:
    """A coordinator's announcements, sent in order from the client's event loop without waiting for each.

    :func:`publish` is a round trip to the scheduler (~1 ms of the client's and the scheduler's CPU, far more
    on a busy machine); a sweep sends two a trial, so the coordinator hands them over here and goes on. One
    coroutine at a time sends what is queued, oldest first and all of it in one message, so the Training
    page sees a trial queued before it ended. After each message it lets :data:`PAGE_HOLD` seconds of
    announcements gather (the first after a quiet spell leaves at once), so a sweep pays a few round trips a
    second, not two a trial; a trial's start, which its worker sends, may come first (the page keeps it
    running).
    :meth:`flush` sends what is held at once and waits (bounded) until everything handed over was sent.

    Examples
    --------
    >>> publisher = Publisher(client)  # doctest: +SKIP
    >>> publisher.send(event); publisher.flush(timeout=10)  # doctest: +SKIP
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._queue: list[dict[str, Any]] = []  # handed over, not yet taken by the sender
        self._sending = False  # a sender is scheduled or running on the event loop: it takes what is queued
        self._lock = threading.Lock()
        self._handed = self._done = 0  # announcements handed over / sent (or given up on)
        self._idle = threading.Event()
        self._idle.set()
        self._hurry = False  # a flush waits: what is queued leaves without being held
        self._wake: asyncio.Event | None = None  # on the event loop: ends the hold early (set by a flush)

    def send(self, event: Event) -> None:
        message = plain(event.to_dict())
        message["time"] = message.get("time") or time.time()
        with self._lock:
            self._handed += 1
            self._idle.clear()
            self._queue.append(message)
            if self._sending:
                return  # the sender takes it, in order: no wake-up of the event loop per announcement
            self._sending = True
        try:
            self.client.loop.add_callback(self._send_queued)
        except Exception as exc:  # a closed client: the page is a view, training goes on
            self._give_up()
            log.debug("Could not send %s to the Training page: %s", event.kind, exc)
        except BaseException:  # Ctrl-C right here: no sender was scheduled
            self._give_up()
            raise

    def _give_up(self) -> None:
        """No sender any more: what is queued counts as done, and the next announcement starts a new one."""
        with self._lock:
            given_up, self._queue, self._sending = len(self._queue), [], False
        self._count_done(given_up)

    def _count_done(self, count: int) -> None:
        with self._lock:
            self._done += count
            if self._done >= self._handed:
                self._idle.set()

    async def _send_queued(self) -> None:
        """On the event loop: send what is queued, oldest first, as one message, until nothing is left."""
        queued: list[dict[str, Any]] = []
        try:
            while True:
                with self._lock:
                    queued, self._queue = self._queue, []
                    if not queued:
                        self._sending = False
                        return
                try:
                    await self.client.scheduler.log_event(topic=PAGE_TOPIC, msg=queued)
                except Exception as exc:
                    log.debug("Could not send %d announcements to the Training page: %s", len(queued), exc)
                self._count_done(len(queued))
                queued = []
                await self._hold()  # at most one message every PAGE_HOLD seconds; the first leaves at once
        except BaseException:  # cancelled (the client closing): never leave a sender that is not there
            self._count_done(len(queued))
            self._give_up()
            raise

    async def _hold(self) -> None:
        """On the event loop, after a message: let the next :data:`PAGE_HOLD` seconds' announcements
        gather into the next one, unless a flush waits for them."""
        if self._wake is None:
            self._wake = asyncio.Event()
        if not self._hurry:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PAGE_HOLD)
        self._wake.clear()

    async def _kick(self) -> None:
        """On the event loop: a flush waits, so the announcements held now leave at once."""
        if self._wake is not None:
            self._wake.set()

    def flush(self, timeout: float = 30.0) -> bool:
        """Send what is held at once and wait until every announcement handed over was sent; False if that
        took over ``timeout`` s."""
        if self._idle.is_set():
            return True
        self._hurry = True
        try:
            with contextlib.suppress(Exception):  # a closed client: what is queued was given up on
                self.client.loop.add_callback(self._kick)
            return self._idle.wait(timeout)
        finally:
            self._hurry = False


def plain(value: Any) -> Any:
    """``value`` with tuples as lists, numpy/torch scalars as Python numbers, NaN/inf as strings."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)
    return plain(item()) if callable(item) else str(value)


class Inbox:
    """The events of one run (one sweep or DDP client run), as a context manager.

    A Dask client keeps a single handler per topic, so every Inbox on a client shares one subscription
    (kept on the client object) that routes each message by its ``run`` token. Jobs run from the same
    client at once (threads) each get their own events.

    Examples
    --------
    >>> with Inbox(client, run="a1b2c3") as inbox:  # doctest: +SKIP
    ...     for event in inbox.drain(): ...
    """

    def __init__(self, client: Any, run: str, topic: str = TOPIC, wake: threading.Event | None = None) -> None:
        self.client, self.run, self.topic = client, run, topic
        self.wake = wake  # set as messages arrive (the reader waits on it instead of polling)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def __enter__(self) -> Inbox:
        _Router.of(self.client, self.topic).add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _Router.of(self.client, self.topic).remove(self)

    def drain(self) -> list[Event]:
        """The events that arrived since the last call, oldest first (malformed messages dropped)."""
        out: list[Event] = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return out
            event = parse_event(message)
            if event is None:
                log.debug("Dropped a malformed training event: %.200r", message)
            else:
                out.append(event)


class _Router:
    """One subscription per client and topic, fanning messages out to the inboxes open on it."""

    def __init__(self, client: Any, topic: str) -> None:
        self.client, self.topic = client, topic
        self.inboxes: dict[str, Inbox] = {}
        self.lock = threading.Lock()

    @classmethod
    def of(cls, client: Any, topic: str = TOPIC) -> _Router:
        with _ATTACH:
            routers = client.__dict__.setdefault("_dask_train_routers", {})
            if topic not in routers:
                routers[topic] = cls(client, topic)
            return routers[topic]

    def add(self, inbox: Inbox) -> None:
        with self.lock:
            if not self.inboxes:
                self.client.subscribe_topic(self.topic, self._deliver)
            self.inboxes[inbox.run] = inbox

    def remove(self, inbox: Inbox) -> None:
        with self.lock:
            self.inboxes.pop(inbox.run, None)
            if not self.inboxes and self.client.status == "running":
                self.client.unsubscribe_topic(self.topic)

    def _deliver(self, event: tuple[float, Any]) -> None:
        _, messages = event
        woken: set[Inbox] = set()
        for message in messages if isinstance(messages, list | tuple) else [messages]:  # held ones come together
            if isinstance(message, dict):
                inbox = self.inboxes.get(str(message.get("run")))
                if inbox is not None:  # another client's job, or a killed earlier run: not ours
                    inbox._queue.put(message)
                    woken.add(inbox)
        for inbox in woken:
            if inbox.wake is not None:
                inbox.wake.set()


_ATTACH = threading.Lock()
