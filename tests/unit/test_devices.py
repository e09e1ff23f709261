"""GPU detection and assignment (pure functions: no GPU needed), cluster specs, TLS files."""

from __future__ import annotations

import json
import ssl

import pytest

from cluster import ClusterSpec, cuda_visible_devices, detect_gpus, make_tls_files, visible_gpus
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"gpus": "yes"}, "gpus='yes'"), ({"workers": 0}, "at least 1 worker"), ({"torch_threads": 0}, "at least 1")],
)
def test_cluster_spec_validates_before_anything_starts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusterSpec(**kwargs)


def test_tls_files_form_a_chain_a_tls_context_accepts(tmp_path):
    files = make_tls_files(tmp_path, hosts=("127.0.0.1", "localhost", "node-7"))
    context = ssl.create_default_context(cafile=files.ca_file)
    context.load_cert_chain(files.cert, files.key)
    assert oct((tmp_path / "key.pem").stat().st_mode & 0o777) == "0o600"
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
