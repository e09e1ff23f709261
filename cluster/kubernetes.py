"""Workers on Kubernetes: a ``DaskCluster`` resource for the dask-kubernetes operator.

The operator (``helm install --repo https://helm.dask.org --create-namespace -n dask-operator
--generate-name dask-kubernetes-operator``) turns it into a
scheduler pod with its service (comm port 8786, dashboard 8787, the Training page preloaded) and
``workers`` worker pods, each offering one ``training_slot``; GPU workers request ``nvidia.com/gpu: "1"``
and run ``dask cuda worker``. The service is ClusterIP: reach it from inside the cluster, or with
``kubectl port-forward svc/NAME-scheduler 8786 8787`` from your machine.

The manifest follows the operator's CRD schema (every resource quantity a string, nothing the API server
would prune; the tests validate it against the CRDs the dask-kubernetes package ships). A worker's CPU limit
equals its request, so its container's CPU quota is the request: one worker per pod uses all of it for
torch (``cluster.cpus``). CPU workers start with ``CUDA_VISIBLE_DEVICES`` empty.
"""

from __future__ import annotations

import re
from typing import Any

from .devices import GPU_WORKER_ENVIRON
from .plugin import TRAINING_SLOT

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
# Kubernetes' resource.Quantity: a decimal number with an optional SI or binary suffix ("4", "500m", "16Gi").
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
API_VERSION = "kubernetes.dask.org/v1"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787
#: The scheduler pod's requests: it holds task metadata and serves the dashboard, no training.
SCHEDULER_REQUESTS = {"cpu": "1", "memory": "2Gi"}


def dask_cluster(name: str = "dask-train", workers: int = 2, gpu: bool = True,
                 image: str | None = None, cpu: str = "4", memory: str = "16Gi",
                 namespace: str | None = None) -> dict[str, Any]:
    """The ``DaskCluster`` manifest as a dict (``yaml.safe_dump`` it, then ``kubectl apply -f``).

    Examples
    --------
    >>> manifest = dask_cluster("pets", workers=4, gpu=True)
    >>> manifest["kind"], manifest["spec"]["worker"]["replicas"]
    ('DaskCluster', 4)
    >>> manifest["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    '1'
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"name={name!r}: Kubernetes names are lowercase letters, digits and '-', at most 42 "
                         "characters, starting and ending with a letter or digit.")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 100_000:
        raise ValueError(f"--workers (workers={workers!r}): expected a whole number from 1 to 100,000.")
    if namespace is not None and not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"--namespace (namespace={namespace!r}): Kubernetes namespaces are lowercase letters, "
                         "digits and '-', at most 63 characters, starting and ending with a letter or digit.")
    cpu, memory = _quantity("cpu", cpu, "'4' or '500m'"), _quantity("memory", memory, "'16Gi' or '8G'")
    image = image or f"dask-train:{'cuda' if gpu else 'cpu'}"  # built from deploy/docker/Dockerfile
    if not _IMAGE.fullmatch(image):
        raise ValueError(f"--image (image={image[:80]!r}): an image reference has no spaces or control "
                         "characters, e.g. REGISTRY/dask-train:cuda.")
    metadata: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": "DaskCluster", "metadata": metadata,
            "spec": {"worker": _worker(workers, gpu, image, cpu, memory), "scheduler": _scheduler(name, image)}}


def worker_args(gpu: bool) -> list[str]:
    """The worker container's command line (the operator fills in the scheduler's address)."""
    start = ["dask", "cuda", "worker"] if gpu else ["dask", "worker"]
    return [*start, "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1", "--resources", f"{TRAINING_SLOT}=1",
            "--dashboard-address", "8788"]


def scheduler_args() -> list[str]:
    return ["dask", "scheduler", "--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}",
            "--preload", "training.dashboard"]


def _quantity(name: str, value: Any, example: str) -> str:
    """A resource quantity as the CRD wants it: a string (the schema rejects the integer 4)."""
    text = str(value)
    if not _QUANTITY.fullmatch(text) or not re.search(r"[1-9]", text):
        raise ValueError(f"--worker-{name} ({name}={value!r}): use a Kubernetes quantity above 0 such as "
                         f"{example}.")
    return text


def _worker(workers: int, gpu: bool, image: str, cpu: str, memory: str) -> dict[str, Any]:
    limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": "1"} if gpu else {})}
    container: dict[str, Any] = {
        "name": "worker", "image": image, "imagePullPolicy": "IfNotPresent", "args": worker_args(gpu),
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}}
    # A CPU pod on a GPU node must not train on a GPU the runtime exposes; NCCL errors stay in a GPU pod's rank.
    environ = GPU_WORKER_ENVIRON if gpu else {"CUDA_VISIBLE_DEVICES": ""}
    container["env"] = [{"name": name, "value": value} for name, value in environ.items()]
    return {"replicas": workers, "spec": {"containers": [container]}}


def _probe(initial_delay: int, period: int) -> dict[str, Any]:
    """A fresh dict each call (shared ones become YAML anchors)."""
    return {"httpGet": {"port": "http-dashboard", "path": "/health"}, "initialDelaySeconds": initial_delay,
            "periodSeconds": period}


def _scheduler(name: str, image: str) -> dict[str, Any]:
    ports = [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
             {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}]
    # Probe timings as in the operator's own examples: ready within seconds, liveness after the start-up.
    container = {"name": "scheduler", "image": image, "imagePullPolicy": "IfNotPresent", "args": scheduler_args(),
                 "ports": ports, "resources": {"requests": dict(SCHEDULER_REQUESTS)},
                 "readinessProbe": _probe(5, 10), "livenessProbe": _probe(15, 20)}
    service_ports = [{"name": p["name"], "protocol": "TCP", "port": p["containerPort"], "targetPort": p["name"]}
                     for p in ports]
    return {"spec": {"containers": [container]},
            "service": {"type": "ClusterIP", "selector": {"dask.org/cluster-name": name,
                                                          "dask.org/component": "scheduler"},
                        "ports": service_ports}}
