"""A worker's heartbeat cut short by a connection closed under it (the cluster stopping) is not shown as an
error with a traceback; a heartbeat that cannot reach its scheduler still is."""

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


@pytest.mark.parametrize("message", [
    "ConnectionPool closing.",  # the worker's own pool, as it closes
    # the closing scheduler's end (`cluster up` stopped by SIGINT saw it once)
    "in <TCP (closed) ConnectionPool.heartbeat_worker local=tcp://127.0.0.1:45318 "
    "remote=tcp://127.0.0.1:40687>: Stream is closed",
])
def test_a_heartbeat_failing_on_a_connection_closed_under_it_is_not_shown(worker_log, message):
    logger, records = worker_log
    _log_failure(logger, CommClosedError(message))
    assert records == []
    logger.setLevel(logging.DEBUG)  # -vv: still there, at debug level
    _log_failure(logger, CommClosedError(message))
    assert [r.levelname for r in records] == ["DEBUG"]


@pytest.mark.parametrize("error", [OSError("Timed out trying to connect to tcp://10.0.0.9:8786 after 30 s"),
                                   ConnectionRefusedError(111, "Connection refused")])
def test_other_heartbeat_failures_are_shown_with_their_traceback(worker_log, error):
    logger, records = worker_log
    _log_failure(logger, error)
    assert [(r.levelname, r.getMessage()) for r in records] == [("ERROR", _MESSAGE)]
    assert records[0].exc_info[1] is error
