"""A worker's heartbeat cut short by its own close (the cluster stopping) is not shown as an error with a
traceback; any other heartbeat failure still is."""

from __future__ import annotations

import logging

import pytest
from distributed.comm.core import CommClosedError

from cluster.plugin import HEARTBEAT_WHILE_CLOSING

_MESSAGE = "Failed to communicate with scheduler during heartbeat."  # distributed.worker.Worker.heartbeat


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def worker_log():
    logger = logging.getLogger("distributed.worker")
    kept, level = _Kept(), logger.level
    logger.addHandler(kept)
    logger.addFilter(HEARTBEAT_WHILE_CLOSING)
    logger.setLevel(logging.WARNING)  # as the embedded cluster's workers log
    try:
        yield logger, kept.records
    finally:
        logger.removeHandler(kept)
        logger.removeFilter(HEARTBEAT_WHILE_CLOSING)
        logger.setLevel(level)


def _log_failure(logger: logging.Logger, error: Exception) -> None:
    try:
        raise error
    except OSError:
        logger.exception(_MESSAGE)  # what Dask's heartbeat does


def test_a_heartbeat_failing_on_the_closing_workers_own_connections_is_not_shown(worker_log):
    logger, records = worker_log
    _log_failure(logger, CommClosedError("ConnectionPool closing."))
    assert records == []
    logger.setLevel(logging.DEBUG)  # -vv: still there, at debug level
    _log_failure(logger, CommClosedError("ConnectionPool closing."))
    assert [r.levelname for r in records] == ["DEBUG"]


@pytest.mark.parametrize("error", [OSError("Timed out trying to connect to tcp://10.0.0.9:8786 after 30 s"),
                                   CommClosedError("in <TCP (closed)>: Stream is closed")])
def test_other_heartbeat_failures_are_shown_with_their_traceback(worker_log, error):
    logger, records = worker_log
    _log_failure(logger, error)
    assert [(r.levelname, r.getMessage()) for r in records] == [("ERROR", _MESSAGE)]
    assert records[0].exc_info[1] is error
