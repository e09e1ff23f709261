"""Workers on Kubernetes: a ``DaskCluster`` resource for the dask-kubernetes operator.

The operator (``helm install --repo https://helm.dask.org --create-namespace -n dask-operator
--generate-name dask-kubernetes-operator``) turns it into a
scheduler pod with its service (comm port 8786, dashboard 8787, the Training page preloaded) and
``workers`` worker pods, each offering one ``training_slot``; GPU workers request ``nvidia.com/gpu: 1``
and run ``dask cuda worker``. The service is ClusterIP: reach it from inside the cluster, or with
``kubectl port-forward svc/NAME-scheduler 8786 8787`` from your machine.
"""

from __future__ import annotations

import re
from typing import Any

from .plugin import TRAINING_SLOT

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
API_VERSION = "kubernetes.dask.org/v1"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787


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
    1
    """
    if not _NAME.match(name):
        raise ValueError(f"name={name!r}: Kubernetes names are lowercase letters, digits and '-', at most 42 "
                         "characters, starting and ending with a letter or digit.")
    if workers < 1:
        raise ValueError(f"workers={workers!r}: need at least 1.")
    image = image or f"dask-train:{'cuda' if gpu else 'cpu'}"  # built from deploy/docker/Dockerfile
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


def _worker(workers: int, gpu: bool, image: str, cpu: str, memory: str) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": 1} if gpu else {})}
    container = {"name": "worker", "image": image, "imagePullPolicy": "IfNotPresent", "args": worker_args(gpu),
                 "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}}
    return {"replicas": workers, "spec": {"containers": [container]}}


def _scheduler(name: str, image: str) -> dict[str, Any]:
    def probe() -> dict[str, Any]:  # a fresh dict each: shared ones become YAML anchors
        return {"httpGet": {"port": "http-dashboard", "path": "/health"}, "initialDelaySeconds": 5,
                "periodSeconds": 10}

    ports = [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
             {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}]
    container = {"name": "scheduler", "image": image, "imagePullPolicy": "IfNotPresent", "args": scheduler_args(),
                 "ports": ports, "readinessProbe": probe(), "livenessProbe": probe()}
    service_ports = [{"name": p["name"], "protocol": "TCP", "port": p["containerPort"], "targetPort": p["name"]}
                     for p in ports]
    return {"spec": {"containers": [container]},
            "service": {"type": "ClusterIP", "selector": {"dask.org/cluster-name": name,
                                                          "dask.org/component": "scheduler"},
                        "ports": service_ports}}
