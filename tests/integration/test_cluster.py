"""Getting workers, for real: the embedded LocalCluster, `cluster up` / `cluster info` as separate
processes, SIGINT shutdown, TLS, and the errors for an absent scheduler or slot-less workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request

import dask
import psutil
import pytest
from distributed import Client, LocalCluster
from distributed.comm import connect as comm_connect

from cluster import (
    TRAINING_SLOT,
    ClusterConnectError,
    ClusterSpec,
    NoTrainingSlots,
    Target,
    cluster_workers,
    connect,
    dashboard_url,
    describe_workers,
    open_client,
    require_slots,
    start_local_cluster,
)
from tests.helpers import (
    alive,
    cli_env,
    descendants,
    poll_for,
    processes_marked,
    run_cli,
    slow_warm_up,
    start_cli,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        yield c


def _worker_facts(dask_worker):
    import logging
    import multiprocessing
    import os

    from cluster.plugin import HEARTBEAT_WHILE_CLOSING

    return {
        "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "daemon": multiprocessing.current_process().daemon,
        "profiling": "profile" in dask_worker.periodic_callbacks,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "quiet_closing_heartbeat": HEARTBEAT_WHILE_CLOSING in logging.getLogger("distributed.worker").filters,
    }


def _gpus_this_task_may_see():
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _where_am_i():
    import os

    from distributed import get_worker

    return get_worker().address, os.getpid()


def test_embedded_cluster_has_one_slot_worker_per_core(client):
    workers = cluster_workers(client)
    assert len(workers) == 2  # this machine has 2 cores
    assert all(w["resources"] == {TRAINING_SLOT: 1} for w in workers.values())
    assert all(w["host"] == "127.0.0.1" for w in workers.values())  # loopback by default
    rows = describe_workers(client)
    assert [r["slot"] for r in rows] == [1, 1]
    assert all(r["device"].startswith("cpu") for r in rows)


def test_every_worker_is_seen_while_the_client_refreshes_its_cached_view(client):
    """A client refreshes its cached view of the scheduler, which holds no workers, every 2 s (every 5 ms
    here). Reading workers from that cache now and then found none: a DDP job once took its live ranks'
    workers for gone. ``cluster_workers`` asks the scheduler each time."""
    with dask.config.set({"distributed.client.scheduler-info-interval": "5ms"}), \
            Client(client.scheduler.address, timeout=30) as refreshing:
        seen = [len(cluster_workers(refreshing)) for _ in range(3000)]
    assert seen == [2] * 3000


def test_a_slot_task_runs_on_each_worker(client):
    addresses = require_slots(client, needed=2)
    futures = [client.submit(_where_am_i, workers=[a], resources={TRAINING_SLOT: 1}, pure=False)
               for a in addresses]
    results = client.gather(futures)
    assert [r[0] for r in results] == addresses
    assert len({r[1] for r in results}) == 2  # two separate processes


def test_workers_skip_the_defaults_that_slow_torch(client):
    facts = client.run(_worker_facts)
    for fact in facts.values():
        assert fact == {"malloc_trim": None, "omp": "1", "daemon": False, "profiling": False,
                        "cuda_visible_devices": "", "quiet_closing_heartbeat": True}


def _timers(dask_worker=None, dask_scheduler=None):
    """A server's periodic timers (ms): its event-loop tick and system monitor, and a worker's or nanny's
    memory check."""
    server = dask_worker or dask_scheduler
    callbacks = server.periodic_callbacks
    memory = callbacks.get("memory_monitor")
    return {"tick": callbacks["tick"].callback_time, "monitor": callbacks["monitor"].callback_time,
            "memory": None if memory is None else memory.callback_time}


def test_scheduler_nannies_and_workers_wake_rarely_when_idle(client):
    # Dask's 20 ms tick (50 wake-ups a second in each process) took ~11% of a core from an idle cluster here.
    for timers in [*client.run(_timers).values(), *client.run(_timers, nanny=True).values()]:
        assert timers == {"tick": 500, "monitor": 1000, "memory": 500}
    assert {k: v for k, v in client.run_on_scheduler(_timers).items() if k != "memory"} == \
        {"tick": 500, "monitor": 1000}


def test_waiting_for_the_warm_up_ends_as_it_ends_and_within_its_bound(client, caplog):
    from cluster.client import wait_for_warm_up
    from cluster.plugin import PLUGIN_NAME, TrainingWorkerPlugin

    try:
        client.register_plugin(slow_warm_up(3.0), name=PLUGIN_NAME)
        with caplog.at_level(logging.WARNING, logger="cluster.client"):
            assert wait_for_warm_up(client, timeout=0.5) is False
        assert "were still warming up" in caplog.text
        assert wait_for_warm_up(client, timeout=60) is True
        assert all(client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].warm()).values())
    finally:
        client.register_plugin(TrainingWorkerPlugin(), name=PLUGIN_NAME)
    assert wait_for_warm_up(client, timeout=60) is True


_PRELOADED = ["torch", "torch._dynamo", "training.trial", "training.loop", "training.rank"]


def _loaded_before_any_task() -> list[str]:
    import sys

    return [m for m in _PRELOADED if m in sys.modules]


def test_workers_start_with_torch_and_the_runners_loaded_and_so_does_a_restarted_one():
    """Forked from a fork server that imported them while the cluster started: no plugin, no task asked
    for them. A worker ended to free its slot comes back the same way (a fraction of a second, not the
    seconds of importing torch again: bench_restart.py)."""
    from training.slots import free_workers

    with start_local_cluster(ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0")) as cluster, \
            Client(cluster) as c:
        assert list(c.run(_loaded_before_any_task).values()) == [_PRELOADED] * 2
        first = sorted(cluster_workers(c))[0]
        free_workers(c, [first])
        c.wait_for_workers(2, timeout=60)
        after = c.run(_loaded_before_any_task)
        assert first not in after and list(after.values()) == [_PRELOADED] * 2


def _parent_and_input() -> tuple[int, str]:
    import os
    import sys

    return os.getppid(), sys.stdin.read()


def test_the_workers_come_from_one_fork_server_and_read_nothing_from_their_input(client):
    """One fork server imports torch for all the workers (where one a worker imported it on every core at
    once); the commands its program reads are not the workers' input (a trial reading it gets none)."""
    import psutil

    facts = list(client.run(_parent_and_input).values())
    assert len(facts) == 2 and {text for _, text in facts} == {""}
    parents = {parent for parent, _ in facts}
    assert len(parents) == 1
    fork_server = psutil.Process(parents.pop())
    assert "forkserver" in " ".join(fork_server.cmdline())
    program = fork_server.parent()
    assert program is not None and "cluster.worker_main" in program.cmdline()
    servers = [p for p in program.children() if "forkserver" in " ".join(p.cmdline())]
    assert servers == [fork_server]


def test_a_cluster_takes_the_worker_program_started_early_and_ends_one_started_for_other_workers():
    """``dask-train sweep`` starts the worker program as soon as its input is read (its fork server imports
    torch meanwhile); the cluster started next uses it, or ends it when it was started for other workers."""
    import psutil

    from cluster import worker_host

    one = ClusterSpec(workers=1, gpus="off", dashboard_address="127.0.0.1:0")
    worker_host.start_early(Target(address="tcp://127.0.0.1:8786"))
    assert worker_host._early is None  # no embedded cluster there: nothing to start
    for early_spec, taken in ((one, True), (ClusterSpec(workers=2, gpus="off"), False)):
        worker_host.start_early(Target(local=early_spec))
        early = worker_host._early
        assert early is not None and early.process is not None and early.process.poll() is None
        with open_client(Target(local=one)) as c:
            [(fork_server, _)] = c.run(_parent_and_input).values()
            program = psutil.Process(fork_server).parent()
            assert (program.pid == early.process.pid) is taken
            assert early.process.poll() is None if taken else early.process.poll() is not None
        assert worker_host._early is None and early.process.poll() is not None  # ended with its cluster


def _imported_from() -> dict[str, str]:
    import importlib

    # grp is compiled into some Pythons (no __file__): then no file can stand in for it
    return {name: getattr(importlib.import_module(name), "__file__", None) or "(built in)"
            for name in ("grp", "cluster", "mine", "later")}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P (leave the current directory off) is 3.11+")
def test_workers_import_from_where_this_process_does_never_from_the_directory_it_runs_in(tmp_path, monkeypatch):
    """A ``grp.py`` (which torch's import reaches) or a ``cluster/`` in the directory dask-train runs in is
    not imported by the workers in place of Python's or ours (``python -m`` would put it first); a module
    this process can import (beside the script that started the cluster, or in a folder added later to its
    path, as pytest's ``pythonpath`` adds one) is, as this process imports it: a workload, say."""
    here, beside, later = tmp_path / "here", tmp_path / "beside", tmp_path / "later"
    (here / "cluster").mkdir(parents=True)
    beside.mkdir()
    later.mkdir()
    for planted in (here / "grp.py", here / "cluster" / "__init__.py"):
        planted.write_text(f"open({str(tmp_path / 'imported')!r}, 'a').write({str(planted)!r})\n"
                           "raise SystemExit('planted module imported')\n")
    (beside / "mine.py").write_text("")
    (later / "later.py").write_text("")
    monkeypatch.chdir(here)
    monkeypatch.setattr(sys, "path", [str(beside), *sys.path, str(later)])
    with start_local_cluster(ClusterSpec(workers=1, gpus="off", dashboard_address="127.0.0.1:0")) as cluster, \
            Client(cluster) as c:
        [where] = c.run(_imported_from).values()
    assert not (tmp_path / "imported").exists()
    assert (where["mine"], where["later"]) == (str(beside / "mine.py"), str(later / "later.py"))
    assert not where["grp"].startswith(str(tmp_path)) and not where["cluster"].startswith(str(tmp_path))


def test_starting_a_cluster_leaves_this_process_environment_alone():
    before = dict(os.environ)
    with start_local_cluster(ClusterSpec(workers=1, gpus="off", dashboard_address="127.0.0.1:0")):
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_cpu_workers_never_see_the_gpus_this_process_sees(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    before = dict(os.environ)
    with open_client(Target(local=ClusterSpec(workers=1, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        seen = c.submit(_gpus_this_task_may_see, resources={TRAINING_SLOT: 1}, pure=False).result(timeout=60)
        assert dict(os.environ) == before
    assert seen == ""  # CUDA's "no device": torch.cuda.is_available() is False in every CPU worker
    assert dict(os.environ) == before


NVIDIA_SMI = """#!/bin/sh
# Two GPUs, as `nvidia-smi -L` lists them.
echo "GPU 0: NVIDIA H100 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA H100 (UUID: GPU-11111111-1111-1111-1111-111111111111)"
"""


def test_gpus_without_a_working_dask_cuda_give_cpu_workers_that_see_none_and_say_why(tmp_path, monkeypatch,
                                                                                     caplog):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text(NVIDIA_SMI)
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    # dask-cuda installed without its CUDA bindings fails to import like this.
    (tmp_path / "dask_cuda").mkdir()
    (tmp_path / "dask_cuda" / "__init__.py").write_text("from cuda.core import Device\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with (caplog.at_level(logging.WARNING, logger="cluster.local"),
          start_local_cluster(ClusterSpec(workers=1, dashboard_address="127.0.0.1:0")) as cluster,
          Client(cluster, timeout=30) as c):
        seen = c.submit(_gpus_this_task_may_see, resources={TRAINING_SLOT: 1}, pure=False).result(timeout=60)
    assert seen == ""
    assert ("GPUs ['0', '1'] are visible but dask-cuda is installed but failed to import (ModuleNotFoundError: "
            "No module named 'cuda').") in caplog.text
    assert "Starting CPU workers, with the GPUs hidden from them." in caplog.text


def test_dashboard_status_page_answers_while_up(client):
    url = dashboard_url(client)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        assert b"Dask" in response.read()


def test_connecting_where_nothing_listens_fails_within_the_timeout():
    started = time.monotonic()
    with pytest.raises(ClusterConnectError, match=r"Could not connect to a Dask scheduler at "
                                                  r"tcp://127.0.0.1:9 within 2s.*dask-train cluster up"):
        connect("tcp://127.0.0.1:9", timeout=2)
    assert time.monotonic() - started < 15



def test_a_scheduler_file_of_a_cluster_that_is_gone_is_said_at_once(tmp_path):
    """A scheduler file left by a killed `cluster up`: nothing listens at its address, so every command using it
    waited its whole --timeout (30 s) to say "Could not connect": it is said at once, and what to do."""
    dead = tmp_path / "dead.json"
    dead.write_text(json.dumps({"type": "Scheduler", "address": "tcp://127.0.0.1:9", "dashboard": None}))
    started = time.monotonic()
    listed = run_cli("runs", "--scheduler-file", str(dead), "--timeout", "30")
    assert time.monotonic() - started < 20, "waited for the timeout"
    assert listed.returncode == 1, listed.stdout + listed.stderr
    assert listed.stderr.strip() == (f"Error: Nothing listens at tcp://127.0.0.1:9, the scheduler in {dead}: the "
                                     "cluster that wrote it has stopped (killed, or its machine restarted). Start "
                                     "one with `dask-train cluster up`."), listed.stderr


def test_workers_without_a_slot_are_refused_with_the_fix():
    with (LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", resources={"GPU": 1}) as bare,
          pytest.raises(NoTrainingSlots) as info):
        connect(bare.scheduler_address, timeout=20)
    message = str(info.value)
    assert "No worker offers a training slot (2 workers, resources={'GPU'}, needed 1)" in message
    assert f"--resources {TRAINING_SLOT}=1" in message and "dask cuda worker" in message


def _wait_for_file(path, proc, timeout=90):
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"cluster up exited early ({proc.returncode}):\n{proc.stdout.read()}")
        return path.exists()

    poll_for(ready, timeout, what=f"scheduler file {path}")
    return json.loads(path.read_text())


def _stop(proc, sig, group):
    tree = descendants(proc.pid)
    assert len(tree) >= 2  # the worker processes (and multiprocessing helpers)
    if group:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    poll_for(lambda: not alive(tree), 20, what="all worker processes gone")
    return proc.returncode, output


@pytest.mark.parametrize("group", [False, True], ids=["sigint-to-process", "ctrl-c-to-group"])
def test_cluster_up_and_cluster_info_work_together_and_sigint_stops_cleanly(tmp_path, group):
    scheduler_file = tmp_path / "scheduler.json"
    proc = start_cli("cluster", "up", "--workers", "2", "--gpus", "off", "--dashboard-address",
                     "127.0.0.1:0", "--scheduler-file", str(scheduler_file))
    try:
        content = _wait_for_file(scheduler_file, proc)
        assert content["address"].startswith("tcp://127.0.0.1:")
        info = run_cli("cluster", "info", "--scheduler-file", str(scheduler_file), timeout=90)
        assert info.returncode == 0, info.stderr
        assert info.stdout.count("127.0.0.1") >= 3 and "2 workers" in info.stdout
        assert info.stdout.count("cpu (1 thread)") == 2
        assert re.search(r"Training page: http://127\.0\.0\.1:\d+/training", info.stdout), info.stdout
        # A second cluster on the same file: refused before it starts; the running one's file stays as it is.
        before = scheduler_file.read_bytes()
        second = run_cli("cluster", "up", "--workers", "1", "--scheduler-file", str(scheduler_file), timeout=60)
        assert second.returncode == 2 and "is the file of a cluster that is running at" in second.stderr, second
        assert scheduler_file.read_bytes() == before
        code, output = _stop(proc, signal.SIGINT, group)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, output
    assert "Cluster stopped." in output and "Traceback" not in output
    assert re.search(r"Training page:\s+http://127\.0\.0\.1:\d+/training", output), output
    assert not scheduler_file.exists()


def _fork_server_up(processes: list[psutil.Process]) -> bool:
    return any("multiprocessing.forkserver" in " ".join(p.cmdline()) for p in processes)


def _workers_forked(processes: list[psutil.Process]) -> bool:
    return any(p.ppid() in {q.pid for q in processes if "multiprocessing.forkserver" in " ".join(q.cmdline())}
               and "multiprocessing.forkserver" in " ".join(p.cmdline()) for p in processes)


@pytest.mark.parametrize("moment", [_fork_server_up, _workers_forked], ids=["fork-server-up", "workers-forked"])
def test_ctrl_c_while_a_sweeps_cluster_starts_says_one_line_and_leaves_nothing(tmp_path, moment):
    """Ctrl-C while the sweep's cluster starts: one line, exit 130, no traceback (a worker process its nanny
    asked for as the program ended printed one), no process left. (Where the sweep is already running by
    then, its own summary line.)"""
    mark = f"ctrl-c-{os.getpid()}-{time.monotonic_ns()}"
    proc = start_cli("sweep", "pets-quick", "--runs-dir", str(tmp_path / "runs"),
                     extra_env={"DASK_TRAIN_TEST_MARK": mark})

    def reached():
        assert proc.poll() is None, proc.communicate()[0]
        with contextlib.suppress(psutil.Error):
            return moment(processes_marked("DASK_TRAIN_TEST_MARK", mark))
        return False

    try:
        poll_for(reached, 60, period=0.01, what=f"the cluster's start ({moment.__name__})")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    poll_for(lambda: not processes_marked("DASK_TRAIN_TEST_MARK", mark), 20, what="the sweep's processes gone")
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    last = output.strip().splitlines()[-1]
    if not last.startswith("Interrupted: sweep 'pets-quick'"):  # stopped before the sweep began
        assert last == "Interrupted (Ctrl-C).", output
        assert not (tmp_path / "runs" / "pets-quick" / "store.sqlite").exists()


def test_a_sweep_client_killed_mid_trial_leaves_no_process_and_no_warnings(tmp_path):
    """SIGKILL of `dask-train sweep` while trials train: its worker program closes the workers (the end of
    its command pipe), quietly (each closing worker warned of the task it cancelled), and nothing is left."""
    mark = f"killed-{os.getpid()}-{time.monotonic_ns()}"
    store = tmp_path / "runs" / "pets-quick" / "store.sqlite"
    proc = start_cli("sweep", "pets-quick", "--runs-dir", str(tmp_path / "runs"),
                     extra_env={"DASK_TRAIN_TEST_MARK": mark})

    def training():
        assert proc.poll() is None, proc.communicate()[0]
        if not store.exists():
            return False
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:  # never creates it
                return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'running'").fetchone()[0] > 0
        except sqlite3.OperationalError:  # its tables not yet made
            return False

    try:
        poll_for(training, 120, what="a trial training")
        proc.kill()
        output, _ = proc.communicate(timeout=60)  # to the end: the workers write to the same pipe
    finally:
        if proc.poll() is None:
            proc.kill()
    poll_for(lambda: not processes_marked("DASK_TRAIN_TEST_MARK", mark), 30, what="the sweep's processes gone")
    assert "started on" in output
    assert "CancelledError" not in output and "distributed.nanny - ERROR" not in output, output


def test_tls_cluster_admits_only_clients_with_the_certificate(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    proc = start_cli("cluster", "up", "--workers", "1", "--gpus", "off", "--tls", "--dashboard-address",
                     "127.0.0.1:0", "--scheduler-file", str(scheduler_file))
    try:
        content = _wait_for_file(scheduler_file, proc)
        address = content["address"]
        assert address.startswith("tls://127.0.0.1:") and set(content["tls"]) == {"ca_file", "cert", "key"}

        with connect(scheduler_file=str(scheduler_file), timeout=30) as good:
            assert good.submit(sum, [1, 2], resources={TRAINING_SLOT: 1}).result(timeout=30) == 3

        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        tls = content["tls"]
        with pytest.raises((OSError, TimeoutError)):  # a TLS client that trusts the CA but has no certificate
            asyncio.run(_identity(address, tls["ca_file"]))
        assert asyncio.run(_identity(address, tls["ca_file"], tls["cert"], tls["key"]))["type"] == "Scheduler"
        with pytest.raises(ClusterConnectError, match="uses TLS"):
            connect(address, timeout=3)
        code, _ = _stop(proc, signal.SIGINT, group=False)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "scheduler-tls").exists()  # temporary certificates removed on shutdown


async def _identity(address, ca_file, cert=None, key=None):
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    if cert:
        context.load_cert_chain(cert, key)
    comm = await comm_connect(address, timeout=5, ssl_context=context)
    await comm.write({"op": "identity"})
    return await comm.read()


@pytest.mark.gpu
def test_gpu_cluster_gives_each_worker_a_distinct_device():
    from cluster import detect_gpus

    gpus = detect_gpus()
    with open_client(Target(local=ClusterSpec(dashboard_address="127.0.0.1:0"))) as gpu_client:
        rows = describe_workers(gpu_client)
        visible = gpu_client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0])
    assert len(rows) == len(gpus)
    assert not any(r["device"].startswith("cpu") for r in rows)  # each names its GPU
    assert sorted(visible.values()) == sorted(gpus)  # one distinct GPU first in each worker's list


_HOLD_A_CLUSTER = """
import os, time
from cluster import ClusterSpec, Target, open_client
with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as client:
    print("workers", *client.run(os.getpid).values(), flush=True)
    time.sleep(600)
"""


def test_workers_of_a_killed_process_end_on_their_own(tmp_path):
    """SIGKILL the process that started the embedded cluster: its scheduler dies with it, and its workers
    (their own programs, nanny and worker) notice and end within a bound instead of lingering."""
    import psutil

    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_CLUSTER], stdout=subprocess.PIPE, text=True,
                              env=cli_env())
    try:
        line = poll_for(holder.stdout.readline, 180, what="the cluster's workers")
        workers = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        nannies = [w.parent() for w in workers]
        holder.kill()
        holder.wait(timeout=30)
        everyone = [p for p in workers + nannies if p is not None]
        _, lingering = psutil.wait_procs(everyone, timeout=60)
        assert not lingering, f"still running 60 s after their cluster's process was killed: {lingering}"
    finally:
        if holder.poll() is None:
            holder.kill()


def test_cluster_info_without_a_cluster_says_it_describes_a_throwaway_one_and_names_the_running_one(tmp_path):
    """`cluster info` in the folder of a running `cluster up` described a new embedded cluster, gone when it
    returned, as if it were the cluster: it says so, and names the scheduler file it found there."""
    (tmp_path / "dask-train-scheduler.json").write_text("{}")
    shown = run_cli("cluster", "info", "--workers", "1", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout.startswith("The built-in local cluster, started for this command and closed after it "
                                   "(for the running cluster of dask-train-scheduler.json: pass --scheduler-file "
                                   "dask-train-scheduler.json)."), shown.stdout
    assert "1 workers" in shown.stdout
