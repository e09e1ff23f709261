"""GPU detection and assignment (pure functions: no GPU needed), whether dask-cuda can be used, the torch
threads rule, cluster specs, TLS files."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import (
    ClusterSpec,
    cuda_visible_devices,
    dask_cuda_problem,
    detect_gpus,
    make_tls_files,
    torch_threads,
    visible_gpus,
)
from cluster.cpus import cgroup_cpu_quota, cpu_cores, thread_environ, threads_per_worker
from cluster.errors import ClusterConnectError
from cluster.security import read_scheduler_file, write_scheduler_file


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [
        (None, 0, []),
        (None, 4, ["0", "1", "2", "3"]),
        ("2,0", 4, ["2", "0"]),
        ("", 4, []),
        ("-1", 4, []),
        ("0,9,1", 4, ["0"]),  # CUDA stops at the first index it cannot use
        ("1,1", 4, ["1"]),
        (" 1 , 2 ", 4, ["1", "2"]),
        ("GPU-aaaa,MIG-bbbb", 1, ["GPU-aaaa", "MIG-bbbb"]),
        ("nonsense", 4, []),
    ],
)
def test_visible_gpus_reads_cuda_visible_devices_like_cuda(env, count, expected):
    assert visible_gpus(env, count) == expected


def test_every_worker_gets_a_distinct_first_device():
    devices = ["0", "1", "2", "3"]
    firsts = [cuda_visible_devices(i, devices).split(",")[0] for i in range(4)]
    assert firsts == devices
    assert cuda_visible_devices(1, devices) == "1,2,3,0"
    with pytest.raises(ValueError):
        cuda_visible_devices(0, [])


def test_detect_gpus_applies_the_environment_to_the_physical_count():
    assert detect_gpus({}, count=lambda: 2) == ["0", "1"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "1"}, count=lambda: 2) == ["1"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}, count=lambda: 8) == []


def test_detection_here_finds_no_gpu_and_does_not_initialise_cuda():
    import torch

    assert detect_gpus() == ([] if not torch.cuda.is_available() else detect_gpus())
    assert not torch.cuda.is_initialized()


def test_missing_dask_cuda_is_told_apart_from_one_that_fails_to_import(tmp_path, monkeypatch):
    if importlib.util.find_spec("dask_cuda") is None:
        problem = dask_cuda_problem()
        assert problem is not None and problem.startswith("dask-cuda is not installed: ")
        assert "pip install 'dask-train[gpu]'" in problem and "dask-cuda[cu13]" in problem
    # An installed dask-cuda whose CUDA bindings are missing fails the way the real one does (cuda.core).
    (tmp_path / "dask_cuda").mkdir()
    (tmp_path / "dask_cuda" / "__init__.py").write_text("from cuda.core import Device\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dask_cuda", raising=False)
    problem = dask_cuda_problem()
    assert problem is not None and problem.startswith(
        "dask-cuda is installed but failed to import (ModuleNotFoundError: No module named 'cuda').")
    assert "'dask-cuda[cu12]'" in problem and "'dask-cuda[cu13]'" in problem and "torch.version.cuda" in problem


@pytest.mark.parametrize(
    ("environ", "cpus", "expected"),
    [
        ({}, 8, 8),  # one worker per pod / container / hand-started `dask worker`: all of its CPUs
        ({"DASK_TRAIN_SLOT_WORKERS": "8"}, 32, 4),  # sbatch: --nworkers 8 on a 32-CPU task
        ({"DASK_TRAIN_SLOT_WORKERS": "2"}, 1, 1),  # never 0
        ({"DASK_TRAIN_SLOT_WORKERS": "2", "DASK_TRAIN_TORCH_THREADS": "6"}, 1, 6),  # the override wins
        ({"DASK_TRAIN_TORCH_THREADS": " ", "DASK_TRAIN_SLOT_WORKERS": ""}, 3, 3),  # empty means unset
    ],
)
def test_torch_threads_are_the_workers_share_of_its_cpus(environ, cpus, expected):
    assert torch_threads(environ, cpus=lambda: cpus) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DASK_TRAIN_TORCH_THREADS": "four"},
         "DASK_TRAIN_TORCH_THREADS='four' in the workers' environment: need a whole number of at least 1 "
         "(e.g. DASK_TRAIN_TORCH_THREADS=4), or unset"),
        ({"DASK_TRAIN_SLOT_WORKERS": "0"}, "DASK_TRAIN_SLOT_WORKERS='0' in the workers' environment"),
    ],
)
def test_bad_thread_settings_fail_with_the_value_and_the_fix(environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_threads(environ, cpus=lambda: 4)


def test_thread_rule_helpers_refuse_nonsense():
    assert threads_per_worker(7, 2) == 3
    with pytest.raises(ValueError, match="slot_workers=0"):
        threads_per_worker(8, 0)
    with pytest.raises(ValueError, match="torch_threads=0"):
        thread_environ(2, torch_threads=0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to take one away")
def test_cpu_cores_follows_the_cpu_affinity_the_process_is_given():
    code = "from cluster.cpus import cpu_cores; print(cpu_cores())"
    first = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert out.stdout.strip() == "1"


def test_cpu_cores_reads_what_dask_reads():
    from dask.system import cpu_count

    assert cpu_cores() == max(1, cpu_count())


def _cgroup_files(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "quota"), [
    ({"cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.5),
    ({"cpuacct,cpu/cpu.cfs_quota_us": "-1\n", "cpuacct,cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"app/cpu.max": "150000 100000\n"}, 1.5),
    ({"app/cpu.max": "max 100000\n"}, None),
    ({"other/cpu.max": "150000 100000\n"}, None),  # another group's quota is not this process's
    ({"app/cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota_in_v1_and_v2_layouts(tmp_path, files, quota):
    root = _cgroup_files(tmp_path / "cgroup", files)
    own = tmp_path / "self-cgroup"
    own.write_text("0::/app\n")
    assert cgroup_cpu_quota(root, own) == quota


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gpus": "yes"}, "gpus='yes'"), ({"workers": 0}, "at least 1 worker"), ({"torch_threads": 0}, "at least 1")],
)
def test_cluster_spec_validates_before_anything_starts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusterSpec(**kwargs)


def test_tls_files_form_a_chain_a_tls_context_accepts(tmp_path):
    files = make_tls_files(tmp_path / "tls", hosts=("127.0.0.1", "localhost", "node-7"))
    context = ssl.create_default_context(cafile=files.ca_file)
    context.load_cert_chain(files.cert, files.key)
    assert oct((tmp_path / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    security = files.security()
    assert security.require_encryption and security.tls_ca_file == files.ca_file


def test_scheduler_file_carries_address_dashboard_and_tls(tmp_path):
    files = make_tls_files(tmp_path / "tls")
    path = write_scheduler_file(tmp_path / "s.json", "tls://127.0.0.1:9999", "http://127.0.0.1:8787/status", files)
    content = json.loads(path.read_text())
    assert content["address"] == "tls://127.0.0.1:9999" and content["tls"]["cert"] == files.cert
    address, security = read_scheduler_file(path)
    assert address == "tls://127.0.0.1:9999" and security is not None and security.require_encryption
    with pytest.raises(ClusterConnectError, match=r"does not exist\. Start a cluster"):
        read_scheduler_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ClusterConnectError, match="is not a scheduler file"):
        read_scheduler_file(tmp_path / "bad.json")


def test_a_scheduler_file_with_tls_works_from_any_folder(tmp_path, monkeypatch):
    """`cluster up --tls` wrote its TLS files' paths relative to the folder it ran in, which a client in any
    other folder failed on ("TLS file 'dask-train-scheduler-tls/ca.pem' does not exist"): they are written
    absolute, and a relative one is read as the scheduler file's folder's."""
    folder = tmp_path / "up"
    folder.mkdir()
    monkeypatch.chdir(folder)
    files = make_tls_files("dask-train-scheduler-tls")  # as `cluster up --tls` makes them, where it runs
    written = write_scheduler_file("dask-train-scheduler.json", "tls://127.0.0.1:9999", None, files)
    elsewhere = tmp_path / "else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    content = json.loads((folder / written).read_text())
    assert content["tls"]["ca_file"] == str(folder / "dask-train-scheduler-tls" / "ca.pem")
    assert read_scheduler_file(folder / written)[1].tls_ca_file == str(folder / "dask-train-scheduler-tls/ca.pem")
    content["tls"] = {k: os.path.relpath(v, folder) for k, v in content["tls"].items()}  # as an older one wrote
    (folder / "old.json").write_text(json.dumps(content))
    security = read_scheduler_file(Path("..") / "up" / "old.json")[1]
    assert Path(security.tls_ca_file).resolve() == folder / "dask-train-scheduler-tls" / "ca.pem"
    assert security.require_encryption
    # An older `cluster up --scheduler-file sub/s.json` wrote its files relative to where it ran: read from there.
    monkeypatch.chdir(folder)
    (folder / "sub").mkdir()
    content["tls"] = {k: os.path.relpath(v, folder) for k, v in content["tls"].items()}
    (folder / "sub" / "s.json").write_text(json.dumps(content))
    security = read_scheduler_file(Path("sub") / "s.json")[1]
    assert Path(security.tls_ca_file).resolve() == folder / "dask-train-scheduler-tls" / "ca.pem"
