"""Nothing listens where it should not: during a DDP job and after it (success and failure), every
process of the embedded cluster listens on the cluster's own address (127.0.0.1) only, and the
rendezvous store's port is closed once the job ends."""

from __future__ import annotations

import threading

import psutil
import pytest

from cluster import ClusterSpec, Target, open_client
from tests.helpers import poll_for
from training.ddp import train_ddp
from training.errors import DDPJobFailed

pytestmark = pytest.mark.timeout(240)

CLUSTER_HOST = "127.0.0.1"


def listeners() -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of this process and its descendants (the cluster)."""
    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {(proc.pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def off_cluster(found: set[tuple[int, str, int]]) -> set[tuple[int, str, int]]:
    """Listeners on a wildcard or any address other than the cluster's own."""
    return {entry for entry in found if entry[1] != CLUSTER_HOST}


class _Snapshots:
    """Takes the listeners every 20 ms in a thread while a job runs (``with _Snapshots() as shown:``)."""

    def __init__(self) -> None:
        self.during: list[set[tuple[int, str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Snapshots:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        while True:
            self.during.append(listeners())
            if self._stop.wait(0.02):
                return


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"),
                            preload=("training.rank",))) as c:
        yield c


def _idle(client) -> set[tuple[int, str, int]]:
    """The listeners once no task runs (a rank's listeners close as its task ends)."""
    poll_for(lambda: not any(client.processing().values()), 30, what="workers idle")
    return listeners()


def _rank_zero_pid(client) -> int:
    """The process of the worker rank 0 runs on: the first of the sorted slot workers on this one host."""
    import os

    pids = client.run(os.getpid)
    return pids[sorted(pids)[0]]


def _check_closed(client, before, during) -> None:
    """During: only the cluster's address. After: rank 0's store listener closed; what the job leaves is on the
    cluster's address and at most one listener per rank (gloo's, kept by torch's DDP with its process group)."""
    for snapshot in during:
        assert not off_cluster(snapshot), off_cluster(snapshot)
    rank_zero = _rank_zero_pid(client)
    opened = {entry for entry in set().union(*during) - before if entry[0] == rank_zero}
    assert len(opened) == 2, f"expected rank 0 store and gloo listeners, saw {opened}"
    after = poll_for(lambda: (lambda now: now if len(opened - now) >= 1 else None)(listeners()), 30,
                     what="rank 0's store listener closed")
    assert not off_cluster(after), off_cluster(after)
    assert len({e for e in after - before if e[0] == rank_zero}) <= 1
    assert len(after - before) <= 2


def test_a_ddp_job_listens_only_on_the_cluster_address_and_closes_its_store(client, tmp_path):
    before = _idle(client)
    assert not off_cluster(before), off_cluster(before)
    with _Snapshots() as shown:
        train_ddp(client, "linreg", {"samples": 40_000, "batch_size": 1000}, epochs=3, workers=2,
                  runs_dir=str(tmp_path), name="ok")
    _check_closed(client, before, shown.during)


def test_a_failed_ddp_job_closes_its_store_too(client, tmp_path):
    before = _idle(client)
    with _Snapshots() as shown, pytest.raises(DDPJobFailed, match="rank one broke on purpose"):
        train_ddp(client, "tests.integration.diverging:FailOnRankOne", {"samples": 1_000_000, "batch_size": 1000},
                  epochs=2, workers=2, runs_dir=str(tmp_path), name="raise", timeout=20)
    _idle(client)
    _check_closed(client, before, shown.during)
