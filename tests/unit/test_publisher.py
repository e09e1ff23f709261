"""The coordinator's announcements to the Training page (:class:`training.events.Publisher`): sent in order,
many in one message, and never stuck: a sender cancelled mid-send (the client closing) or a loop that refuses
the wake-up leaves a publisher that sends the next announcement and whose flush returns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from training.events import PAGE_TOPIC, Publisher
from training.protocol import TrialQueued


class _Scheduler:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[str, list[dict]]] = []
        self.fail = fail

    async def log_event(self, topic: str, msg: list[dict]) -> None:
        await asyncio.sleep(0.01)
        if self.fail is not None:
            failure, self.fail = self.fail, None
            raise failure
        self.sent.append((topic, msg))


class _Client:
    """A client as Publisher uses it: an event loop on its own thread and the scheduler's log_event RPC."""

    def __init__(self, scheduler: _Scheduler) -> None:
        self.scheduler = scheduler
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.loop = self
        self.refuse = False

    def add_callback(self, function) -> None:
        if self.refuse:
            raise RuntimeError("Event loop is closed")
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(function()))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _queued(n: int) -> TrialQueued:
    return TrialQueued("s", "r1", trial=n, params={"lr": n})


@pytest.fixture
def scheduler():
    return _Scheduler()


def test_announcements_arrive_in_order_batched_and_flush_waits_for_them(scheduler):
    client = _Client(scheduler)
    try:
        publisher = Publisher(client)
        for n in range(200):
            publisher.send(_queued(n))
        assert publisher.flush(10)
        trials = [m["trial"] for topic, batch in scheduler.sent for m in batch]
        assert trials == list(range(200)) and {topic for topic, _ in scheduler.sent} == {PAGE_TOPIC}
        assert len(scheduler.sent) < 200  # many announcements a message, not one each
    finally:
        client.close()


def test_a_sender_cancelled_mid_send_does_not_leave_the_publisher_stuck(scheduler):
    scheduler.fail = asyncio.CancelledError()
    client = _Client(scheduler)
    try:
        publisher = Publisher(client)
        publisher.send(_queued(0))
        assert publisher.flush(10)  # given up, not waited on for the whole timeout
        publisher.send(_queued(1))
        assert publisher.flush(10)
        assert [m["trial"] for _, batch in scheduler.sent for m in batch] == [1]
    finally:
        client.close()


def test_a_loop_that_refuses_the_wake_up_does_not_leave_the_publisher_stuck(scheduler):
    client = _Client(scheduler)
    try:
        publisher = Publisher(client)
        client.refuse = True
        publisher.send(_queued(0))
        assert publisher.flush(1)
        client.refuse = False
        publisher.send(_queued(1))
        assert publisher.flush(10)
        assert [m["trial"] for _, batch in scheduler.sent for m in batch] == [1]
    finally:
        client.close()
