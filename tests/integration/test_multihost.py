"""A real multi-host run on one machine: the scheduler and two workers each in their own network namespace
(own IP address, joined by veth pairs to a private bridge, made by deploy/netns/fake-hosts.sh), driven by a
client in this namespace. Needs root and iproute2; skipped with the reason where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import cluster_workers, connect
from tests.helpers import poll_for, stop_processes
from training import Sweep, train_ddp
from training.dashboard import page_url
from training.space import choice

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "netns" / "fake-hosts.sh"
IP = shutil.which("ip", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")  # iproute2
NAME = f"dt{os.getpid() % 100000}"
SUBNET = f"10.213.{os.getpid() % 200 + 20}"
pytestmark = pytest.mark.slow


def _cannot_make_namespaces() -> str | None:
    if sys.platform != "linux" or IP is None:
        return "needs Linux with iproute2 (`ip`)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"{NAME}-probe"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], check=False)
    return None


def fake_hosts(action: str) -> str:
    done = subprocess.run(["bash", str(SCRIPT), action, NAME, "3", SUBNET], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> Iterator[dict[str, str]]:
    reason = _cannot_make_namespaces()
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("multihost")
    processes: list[subprocess.Popen] = []
    try:
        lines = fake_hosts("up").split()
        ips = dict(zip(lines[::2], lines[1::2], strict=True))
        scheduler_ip = ips[f"{NAME}-1"]

        def start(namespace: str, *command: str) -> None:
            log = (logs / f"{namespace}.log").open("w")
            # Two "hosts" share this machine's CPUs: each worker takes its share of them.
            env = {**os.environ, "DASK_TRAIN_SLOT_WORKERS": "2"}
            processes.append(subprocess.Popen([IP, "netns", "exec", namespace, sys.executable, "-m", *command],
                                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env))

        start(f"{NAME}-1", "distributed.cli.dask_scheduler", "--host", scheduler_ip, "--port", "8786",
              "--dashboard-address", f"{scheduler_ip}:8787", "--preload", "training.dashboard")
        for i, worker in ((2, "host-a"), (3, "host-b")):
            start(f"{NAME}-{i}", "distributed.cli.dask_worker", f"tcp://{scheduler_ip}:8786", "--host",
                  ips[f"{NAME}-{i}"], "--nthreads", "1", "--resources", "training_slot=1", "--name", worker,
                  "--no-dashboard")
        yield {"scheduler": f"tcp://{scheduler_ip}:8786", **ips}
    finally:
        stop_processes(processes)
        fake_hosts("down")
        for namespace in (f"{NAME}-{i}" for i in (1, 2, 3)):
            assert namespace not in subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout


def host_of(address: str) -> str:
    return address.split("://")[1].rsplit(":", 1)[0]


def test_sweep_and_ddp_across_namespaces(hosts, tmp_path):
    worker_ips = {hosts[f"{NAME}-2"], hosts[f"{NAME}-3"]}
    with connect(hosts["scheduler"], timeout=60, min_workers=2, preload=("training.trial",)) as client:
        workers = cluster_workers(client)
        assert {host_of(a) for a in workers} == worker_ips
        assert sorted(w["name"] for w in workers.values()) == ["host-a", "host-b"]

        result = Sweep("xor", {"lr": choice([0.1, 0.3, 1.0, 3.0])}, epochs=30, name="multihost",
                       runs_dir=str(tmp_path)).run(client)
        assert set(result.table["state"]) == {"completed"}
        by_name = {w["name"]: host_of(a) for a, w in workers.items()}  # the table names workers (host-a)
        ran_on = {by_name[w] for w in result.table["worker"]}
        print("sweep trials ran on", sorted(ran_on), "best val_accuracy",
              result.table["best_val_accuracy"].max())
        assert ran_on == worker_ips
        assert result.table["best_val_accuracy"].max() >= 0.95

        ddp = train_ddp(client, "xor", {"lr": 1.0}, epochs=8, workers=2, name="multihost-ddp",
                        runs_dir=str(tmp_path))
        print("DDP ranks on", [(p.rank, p.host) for p in ddp.placements], "val_accuracy",
              [round(r["val_accuracy"], 4) for r in ddp.history])
        assert {p.host for p in ddp.placements} == worker_ips
        assert [r["epoch"] for r in ddp.history] == list(range(1, 9))
        assert ddp.history[-1]["val_accuracy"] > 0.9
        assert (ddp.model_dir / "model.safetensors").is_file()
        # The scheduler in its own namespace serves the Training page; the client here reaches it.
        page = page_url(client.dashboard_link) + "/data.json"
        jobs = poll_for(lambda: json.load(urllib.request.urlopen(page, timeout=10))["jobs"], timeout=30,
                        what="the Training page's jobs")
        assert {j["name"] for j in jobs} >= {"multihost", "multihost-ddp"}
