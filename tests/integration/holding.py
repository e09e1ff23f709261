"""A task that sends events while holding them back (:func:`training.events.held_events`), then waits as a
stuck trial would: run on a worker by the tests."""

from __future__ import annotations

import os
import time

from training.events import emit, held_events
from training.protocol import TrialStarted


def send_then_wait(run: str, count: int, release: str, seconds: float) -> int:
    """Send ``count`` events, wait (at most 60 s) until the file ``release`` exists, send one more."""
    with held_events(seconds):
        for number in range(count):
            emit(TrialStarted("held", run, time=time.time(), trial=number))
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)
        emit(TrialStarted("held", run, time=time.time(), trial=count))
    return count + 1
