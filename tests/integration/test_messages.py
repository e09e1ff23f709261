"""Known Dask warnings become one line of ours."""

from __future__ import annotations

import logging
import socket
import warnings

import pytest

from cluster import ClusterSpec, start_local_cluster

pytestmark = pytest.mark.timeout(180)


def test_a_dashboard_port_in_use_is_one_line_naming_both_ports(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.WARNING, "cluster.local"):
            warnings.simplefilter("always")
            with start_local_cluster(ClusterSpec(workers=1, gpus="off", dashboard_address=f"127.0.0.1:{port}")) \
                    as cluster:
                actual = cluster.scheduler.services["dashboard"].port
    assert actual != port
    assert not [w for w in shown if "already in use" in str(w.message)]
    [line] = [r.getMessage() for r in caplog.records if "in use" in r.getMessage()]
    assert line == (f"Dashboard port {port} is in use (another cluster?): this cluster's dashboard is on "
                    f"port {actual}.")
