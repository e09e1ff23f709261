"""What the operators accept: every Kubernetes manifest the project writes or ships, validated against the
DaskCluster / DaskWorkerGroup CRDs the dask-kubernetes package ships (their ``openAPIV3Schema``, plus the
fields the API server would prune), and the Compose file against the Compose specification's JSON schema
(as vendored by check-jsonschema, from compose-spec/compose-spec)."""

from __future__ import annotations

import copy
import importlib.resources
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from dask_kubernetes.operator.controller.controller import build_default_worker_group_spec

from cluster.kubernetes import dask_cluster
from training.cli import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The CRDs as installed by the operator's Helm chart: fully expanded (the package's customresources/*.yaml
# hold `$ref`s that are resolved at build time).
CRDS = importlib.resources.files("dask_kubernetes") / "operator/deployment/helm/dask-kubernetes-operator/crds"
# Fields every object has besides its schema's (the API server handles these itself).
_ROOT_FIELDS = {"apiVersion", "kind", "metadata"}
_OBJECT_META = {"name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences"}


def load_crd(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRDS / f"{name}.yaml").read_text())


def crd_problems(manifest: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """Everything the API server would refuse or silently drop, one line each (empty: accepted as written)."""
    group, names = crd["spec"]["group"], crd["spec"]["names"]
    versions = {f"{group}/{v['name']}": v for v in crd["spec"]["versions"] if v.get("served", True)}
    if manifest.get("apiVersion") not in versions or manifest.get("kind") != names["kind"]:
        return [f"{manifest.get('apiVersion')}/{manifest.get('kind')} is not served by {crd['metadata']['name']}"]
    schema = versions[manifest["apiVersion"]]["schema"]["openAPIV3Schema"]
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
              for e in jsonschema.Draft4Validator(schema).iter_errors(manifest)]
    pruned = [f"{path}: not in the schema, pruned by the API server" for path in pruned_fields(manifest, schema)]
    unknown_meta = sorted(set(manifest.get("metadata", {})) - _OBJECT_META)
    return errors + pruned + [f"metadata/{key}: not object metadata" for key in unknown_meta]


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "", root: bool = True) -> Iterator[str]:
    """Paths of fields a structural schema does not declare (and does not tell the server to keep)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from pruned_fields(item, schema.get("items", {}), f"{path}/{i}", root=False)
        return
    if not isinstance(value, dict):
        return
    declared = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    keep = set(_ROOT_FIELDS if root or schema.get("x-kubernetes-embedded-resource") else ())
    for key, item in value.items():
        where = f"{path}/{key}" if path else key
        if key in declared:
            yield from pruned_fields(item, declared[key], where, root=False)
        elif isinstance(extra, dict):
            yield from pruned_fields(item, extra, where, root=False)
        elif key not in keep and not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
            yield where


def default_worker_group(manifest: dict[str, Any]) -> dict[str, Any]:
    """The DaskWorkerGroup the operator creates from a DaskCluster (with the operator's own function)."""
    return build_default_worker_group_spec(manifest["metadata"]["name"], manifest["spec"]["worker"], {}, {})


def manifest_from_cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["cluster", "manifest", *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    return {"DaskCluster": load_crd("daskcluster"), "DaskWorkerGroup": load_crd("daskworkergroup")}


def assert_accepted(manifest: dict[str, Any], crds: dict[str, dict[str, Any]]) -> None:
    assert crd_problems(manifest, crds["DaskCluster"]) == []
    assert crd_problems(default_worker_group(manifest), crds["DaskWorkerGroup"]) == []


@pytest.mark.parametrize("name", ["daskcluster-cpu.yaml", "daskcluster-gpu.yaml"])
def test_shipped_manifests_are_accepted_by_the_operator_crds(name, crds):
    assert_accepted(yaml.safe_load((DEPLOY / "kubernetes" / name).read_text()), crds)


@pytest.mark.parametrize("args", [
    ["--gpu"],
    ["--cpu"],
    ["--gpu", "--workers", "8", "--name", "pets", "--namespace", "ml", "--image", "reg.example/dt:cuda",
     "--worker-cpu", "7500m", "--worker-memory", "30G"],
    ["--cpu", "--workers", "1", "--worker-cpu", "0.5", "--worker-memory", "1Gi"],
], ids=["gpu-defaults", "cpu-defaults", "gpu-options", "cpu-small"])
def test_cluster_manifest_output_is_accepted_by_the_operator_crds(args, crds):
    assert_accepted(manifest_from_cli(*args), crds)


def test_the_validator_refuses_an_integer_gpu_count_and_reports_pruned_fields(crds):
    manifest = dask_cluster(workers=2, gpu=True)
    integer = copy.deepcopy(manifest)
    integer["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    problems = crd_problems(integer, crds["DaskCluster"])
    assert problems == ["spec/worker/spec/containers/0/resources/limits/nvidia.com/gpu: 1 is not of type 'string'"]
    typo = copy.deepcopy(manifest)
    typo["spec"]["scheduler"]["spec"]["containers"][0]["readinesProbe"] = {}
    typo["spec"]["replicas"] = 3
    assert crd_problems(typo, crds["DaskCluster"]) == [
        "spec/scheduler/spec/containers/0/readinesProbe: not in the schema, pruned by the API server",
        "spec/replicas: not in the schema, pruned by the API server",
    ]


def test_scheduler_pod_has_requests_and_the_probe_timings_of_the_operator_example():
    example = yaml.safe_load((importlib.resources.files("dask_kubernetes") /
                              "operator/controller/tests/resources/simplecluster.yaml").read_text())
    ours = dask_cluster(gpu=False)["spec"]["scheduler"]["spec"]["containers"][0]
    theirs = example["spec"]["scheduler"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert ours[probe] == theirs[probe]  # readiness 5 s / every 10 s, liveness 15 s / every 20 s
    assert ours["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}


def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendored / "compose-spec.json").read_text())


def compose_problems(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema names (2020-12)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification():
    document = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    assert compose_problems(document) == []
    broken = copy.deepcopy(document)
    broken["services"]["worker-1"]["restart_policy"] = "on-failure"  # a deploy: key, not a service key
    assert any("restart_policy" in problem for problem in compose_problems(broken))
