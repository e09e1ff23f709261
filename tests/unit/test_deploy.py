"""Slurm, Kubernetes and Docker: generated text tested as text (like dask-jobqueue's header tests), the
files in deploy/ checked against their generators, and every dask command line parsed by dask's own CLI."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from distributed.cli.dask_scheduler import main as scheduler_cli
from distributed.cli.dask_worker import main as worker_cli

from cluster import TRAINING_SLOT, TLSFiles
from cluster.kubernetes import dask_cluster
from cluster.slurm import SlurmSpec, sbatch_directives, sbatch_script, slurm_cluster, worker_environ
from cluster.spec import QUIET_TIMERS, QUIET_TIMERS_ENVIRON
from tests.helpers import run_cli
from training.cli import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The exact commands that wrote the files in deploy/ (README shows them too).
GENERATED = {
    "slurm/dask-train-gpu.sbatch": ["cluster", "sbatch", "--nodes", "2", "--gpus-per-node", "4",
                                    "--cpus-per-worker", "8", "--memory-per-worker", "32GB", "--time", "08:00:00",
                                    "--setup", "source ~/env/bin/activate"],
    "slurm/dask-train-cpu.sbatch": ["cluster", "sbatch", "--nodes", "4", "--workers-per-node", "8",
                                    "--cpus-per-worker", "4", "--memory-per-worker", "8GB", "--time", "04:00:00",
                                    "--setup", "source ~/env/bin/activate"],
    "kubernetes/daskcluster-gpu.yaml": ["cluster", "manifest", "--workers", "4", "--gpu"],
    "kubernetes/daskcluster-cpu.yaml": ["cluster", "manifest", "--workers", "4", "--cpu"],
}


def parses_as(command: click.Command, args: list[str]) -> None:
    """dask's own CLI accepts these arguments (unknown options or bad values raise)."""
    command.make_context("dask", list(args), resilient_parsing=False)


def cuda_worker_cli() -> click.Command:
    """``dask cuda worker``'s own parser (dask-cuda needs CUDA bindings: where it is missing, skip)."""
    cli_module = pytest.importorskip("dask_cuda.cli", reason="dask-cuda (the [gpu] extra) is not installed here")
    return cli_module.worker


def words_after(line: str, start: str) -> list[str]:
    """The arguments of the command that begins with ``start`` on a shell line (quotes undone)."""
    words = shlex.split(line.replace('"$SCHEDULER_FILE"', "scheduler.json"))
    begin = words.index(start.split()[-1]) + 1
    return [w for w in words[begin:] if w != "&"]


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_files_in_deploy_are_what_the_generators_write_today(path):
    result = CliRunner().invoke(cli, GENERATED[path])
    assert result.exit_code == 0, result.output
    regenerate = f"dask-train {shlex.join(GENERATED[path])} --out deploy/{path}"
    assert (DEPLOY / path).read_text() == result.output, f"out of date: {regenerate}"


def test_gpu_sbatch_header_and_commands():
    script = sbatch_script(SlurmSpec(nodes=2, gpus_per_node=4, cpus_per_worker=8, memory_per_worker="32GB",
                                     walltime="08:00:00", partition="gpu", account="ml", interface="ib0"))
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=32",
                 "#SBATCH --gres=gpu:4", "#SBATCH --time=08:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --account=ml", f"#SBATCH --mem={4 * 32 * 10**9 // 2**20}M"):
        assert line in script.splitlines()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    worker = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "-m dask cuda worker" in worker and "--nworkers" not in worker
    assert "--cpus-per-task=32" in shlex.split(worker)[: shlex.split(worker).index("-m")]  # srun's own option
    # 4 GPU workers share the task's CPUs; a failing NCCL collective raises in its rank, never ends the worker
    assert "export DASK_TRAIN_SLOT_WORKERS=4 TORCH_NCCL_ASYNC_ERROR_HANDLING=2" in script.splitlines()
    assert "CUDA_VISIBLE_DEVICES" not in script  # dask-cuda gives each worker its GPU
    args = words_after(worker, "dask cuda worker")
    assert args[args.index("--resources") + 1] == f"{TRAINING_SLOT}=1"
    assert args[args.index("--interface") + 1] == "ib0"
    # dask cuda worker takes dask worker's options; dask-cuda is not installed here, so parse with dask worker's.
    parses_as(worker_cli, args)
    scheduler = next(line for line in script.splitlines() if "dask_scheduler" in line)
    parses_as(scheduler_cli, words_after(scheduler, "distributed.cli.dask_scheduler"))
    assert "--preload training.dashboard" in scheduler and "--dashboard-address 127.0.0.1:8787" in scheduler


def test_cpu_sbatch_runs_n_plain_workers_per_node_and_no_gres():
    script = sbatch_script(SlurmSpec(nodes=3, workers_per_node=8, cpus_per_worker=2))
    assert "--gres" not in script and "--partition" not in script and "--account" not in script
    assert "#SBATCH --cpus-per-task=16" in script.splitlines()
    worker = next(line for line in script.splitlines() if line.startswith("srun "))
    assert worker.startswith("srun --ntasks-per-node=1 --cpus-per-task=16 ")  # srun does not inherit it
    args = words_after(worker, "distributed.cli.dask_worker")
    parses_as(worker_cli, args)
    assert args[args.index("--nworkers") + 1] == "8" and args[args.index("--nthreads") + 1] == "1"
    # The 8 workers divide the task's 16 CPUs for torch; none of them sees a GPU.
    export = script.splitlines()[script.splitlines().index(worker) - 1]
    assert export == "export DASK_TRAIN_SLOT_WORKERS=8 CUDA_VISIBLE_DEVICES=''"


def test_slurm_worker_environment_names_the_slot_workers_and_hides_gpus_from_cpu_workers():
    assert worker_environ(SlurmSpec(workers_per_node=3)) == {"DASK_TRAIN_SLOT_WORKERS": "3",
                                                             "CUDA_VISIBLE_DEVICES": ""}
    assert worker_environ(SlurmSpec(gpus_per_node=8, workers_per_node=3)) == {
        "DASK_TRAIN_SLOT_WORKERS": "8", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"walltime": "5h"}, "walltime='5h'"),
    ({"memory_per_worker": "lots"}, "memory_per_worker='lots'"),
    ({"partition": "gpu\n#SBATCH --nodes=99"}, "partition="),
    ({"nodes": 0}, "nodes=0"),
    ({"gpus_per_node": -1}, "gpus_per_node=-1"),
    ({"nodes": 10**9}, "--nodes (nodes=1000000000): expected a whole number from 1 to 100,000"),
    ({"gpus_per_node": 10**6}, "gpus_per_node=1000000"),
    ({"memory_per_worker": "100PB"}, "--memory-per-worker (memory_per_worker='100PB')"),
    ({"walltime": "garbage"}, "--time (walltime='garbage')"),
    ({"walltime": "00:00:00"}, "a time limit above 0 (Slurm takes 0 as none)"),
    ({"walltime": "0"}, "a time limit above 0"),
    ({"python": ""}, "--python '': expected a non-empty name without control characters"),
    ({"setup": ("cat <<EOF",)}, "--setup 'cat <<EOF': a here-document (<<) takes the lines after it"),
    ({"scheduler_file": 'x"; touch pwned; echo "'}, "scheduler_file='x\"; touch pwned; echo \"': a file name"),
    ({"setup": ("module load a\ntouch x",)}, "give each line as its own --setup"),
    ({"tls": TLSFiles("ca\ntouch x\n#", "c.pem", "k.pem")}, "--tls-ca-file 'ca\\ntouch x\\n#': expected a"),
])
def test_bad_slurm_specs_fail_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SlurmSpec(**kwargs)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("line", ["echo 'open", "echo $(date", "if true; then"])
def test_a_setup_line_bash_cannot_read_is_refused_with_what_bash_said(tmp_path, line):
    out = tmp_path / "job.sbatch"
    result = CliRunner().invoke(cli, ["cluster", "sbatch", "--setup", line, "--out", str(out)])
    assert result.exit_code == 2 and "The job script would not run: bash -n says" in result.output, result.output
    assert not out.exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_setup_lines_and_tls_paths_leave_a_script_bash_reads(tmp_path):
    """bash's own parser reads the script whole: setup lines with quotes, a TLS folder with spaces."""
    folder = tmp_path / "my certs"
    spec = SlurmSpec(setup=("source ~/env/bin/activate", "export NOTE='a b # c'", 'module load "cuda/12.1"',
                            "echo $'it\\'s' <<< here"),
                     tls=TLSFiles(str(folder / "ca.pem"), str(folder / "c.pem"), str(folder / "k.pem")))
    checked = subprocess.run(["bash", "-n"], input=sbatch_script(spec), capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("walltime", ["60", "30:00", "08:00:00", "2-00", "2-12:00", "1-00:00:00"])
def test_every_slurm_time_format_is_taken(walltime):
    assert f"#SBATCH --time={walltime}" in sbatch_directives(SlurmSpec(walltime=walltime))


def test_slurm_cluster_from_dask_jobqueue_has_the_same_workers():
    pytest.importorskip("dask_jobqueue")
    gpu = slurm_cluster(SlurmSpec(nodes=2, gpus_per_node=4, partition="gpu", dashboard_address="127.0.0.1:0"))
    try:
        script = gpu.job_script()
        assert "#SBATCH --gres=gpu:4" in script and "#SBATCH -p gpu" in script
        assert "-m dask cuda worker" in script and f"--resources {TRAINING_SLOT}=1" in script
        assert "--nthreads 1" in script
        assert "export DASK_TRAIN_SLOT_WORKERS=4 TORCH_NCCL_ASYNC_ERROR_HANDLING=2" in script.splitlines()
        parses_as(worker_cli, words_after(_worker_line(script), "dask cuda worker")[1:])  # after the address
    finally:
        gpu.close()
    cpu = slurm_cluster(SlurmSpec(workers_per_node=4, cpus_per_worker=2, dashboard_address="127.0.0.1:0"))
    try:
        script = cpu.job_script()
        assert "-m distributed.cli.dask_worker" in script and "--nworkers 4" in script and "--gres" not in script
        assert f"--resources {TRAINING_SLOT}=1" in script and "#SBATCH --cpus-per-task=8" in script
        assert "export DASK_TRAIN_SLOT_WORKERS=4 CUDA_VISIBLE_DEVICES=''" in script.splitlines()
        parses_as(worker_cli, words_after(_worker_line(script), "distributed.cli.dask_worker")[1:])
    finally:
        cpu.close()


def _dask_reads(export_line: str) -> dict[str, str]:
    """The timers a Dask process started after ``export_line`` in bash reads from its environment."""
    code = f"import dask, json; print(json.dumps({{k: dask.config.get(k) for k in {sorted(QUIET_TIMERS)!r}}}))"
    done = subprocess.run(["bash", "-c", f'{export_line}\n"$0" -c "$1"', sys.executable, code],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_generated_clusters_slow_dasks_timers_as_the_embedded_one_does():
    # sbatch: exported before the scheduler starts (the workers' srun inherits it), and Dask reads it
    for spec in (SlurmSpec(gpus_per_node=4), SlurmSpec(workers_per_node=8)):
        lines = sbatch_script(spec).splitlines()
        export = next(i for i, line in enumerate(lines) if "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL" in line)
        assert export < next(i for i, line in enumerate(lines) if "dask_scheduler" in line)
        assert _dask_reads(lines[export]) == QUIET_TIMERS
    # the image's environment, for the scheduler and worker containers (Compose, Kubernetes)
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.index("AS final"):]
    lines = re.findall(r"^ENV (.+)$", final, flags=re.M)
    env = dict(pair.split("=", 1) for line in lines for pair in line.split())
    assert env == QUIET_TIMERS_ENVIRON
    # dask-jobqueue: the scheduler made in this process, and the workers' job script
    pytest.importorskip("dask_jobqueue")
    cluster = slurm_cluster(SlurmSpec(workers_per_node=2, dashboard_address="127.0.0.1:0"))
    try:
        assert cluster.scheduler.periodic_callbacks["tick"].callback_time == 500
        line = next(x for x in cluster.job_script().splitlines() if "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL" in x)
        assert _dask_reads(line) == QUIET_TIMERS
    finally:
        cluster.close()


def _worker_line(job_script: str) -> str:
    return next(line for line in job_script.splitlines() if "worker" in line and " -m " in line)


def test_cluster_up_slurm_without_sbatch_says_where_to_run_it(tmp_path):
    result = run_cli("cluster", "up", "--slurm", "--nodes", "2", "--scheduler-file", str(tmp_path / "s.json"))
    assert result.returncode == 1
    assert "--slurm needs Slurm's `sbatch` on PATH" in result.stderr
    assert "dask-train cluster sbatch" in result.stderr


@pytest.mark.parametrize("gpu", [True, False])
def test_kubernetes_manifest(gpu):
    path = DEPLOY / "kubernetes" / f"daskcluster-{'gpu' if gpu else 'cpu'}.yaml"
    manifest = yaml.safe_load(path.read_text())
    assert manifest == dask_cluster(workers=4, gpu=gpu)
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1" and manifest["kind"] == "DaskCluster"
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    assert worker["image"] == f"dask-train:{'cuda' if gpu else 'cpu'}"
    assert worker["resources"]["limits"].get("nvidia.com/gpu") == ("1" if gpu else None)  # a string: see the CRD
    assert worker["resources"]["limits"]["cpu"] == worker["resources"]["requests"]["cpu"]  # quota = request
    # CPU pods see no GPU; a GPU pod's failing NCCL collective raises in its rank instead of ending the worker.
    assert worker["env"] == ([{"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "2"}] if gpu
                             else [{"name": "CUDA_VISIBLE_DEVICES", "value": ""}])
    args = worker["args"]
    assert args[:3] == (["dask", "cuda", "worker"] if gpu else ["dask", "worker", "--name"])
    assert args[args.index("--resources") + 1] == f"{TRAINING_SLOT}=1"
    parses_as(worker_cli, args[3:] if gpu else args[2:])
    scheduler = manifest["spec"]["scheduler"]
    container = scheduler["spec"]["containers"][0]
    assert container["args"][:2] == ["dask", "scheduler"] and "training.dashboard" in container["args"]
    parses_as(scheduler_cli, container["args"][2:])
    assert {p["port"] for p in scheduler["service"]["ports"]} == {8786, 8787}
    assert {p["name"] for p in container["ports"]} == {p["targetPort"] for p in scheduler["service"]["ports"]}


def test_kubernetes_names_and_quantities_are_checked():
    with pytest.raises(ValueError, match="name='Pets_Sweep'"):
        dask_cluster("Pets_Sweep")
    with pytest.raises(ValueError, match=r"--worker-cpu \(cpu='four'\): use a Kubernetes quantity above 0"):
        dask_cluster(cpu="four")
    for bad, named in (({"cpu": "0"}, "cpu='0'"), ({"namespace": "kube system"}, "namespace='kube system'"),
                       ({"image": "a\nb"}, "image='a\\nb'"), ({"workers": 10**9}, "workers=1000000000")):
        with pytest.raises(ValueError, match=re.escape(named)):
            dask_cluster(**bad)
    container = dask_cluster(gpu=False, cpu=2, memory="8Gi")["spec"]["worker"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}


def test_dask_cuda_worker_command_lines_parse_with_dask_cuda_cli():
    cuda_worker = cuda_worker_cli()
    sbatch = sbatch_script(SlurmSpec(gpus_per_node=4, interface="ib0"))
    parses_as(cuda_worker, words_after(next(line for line in sbatch.splitlines() if line.startswith("srun ")),
                                       "dask cuda worker"))
    parses_as(cuda_worker, dask_cluster(gpu=True)["spec"]["worker"]["spec"]["containers"][0]["args"][3:])


def test_compose_file_runs_a_scheduler_and_two_slot_workers():
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"scheduler", "worker-1", "worker-2"}
    scheduler = services["scheduler"]
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "training.dashboard" in scheduler["command"]
    parses_as(scheduler_cli, scheduler["command"][2:])
    assert all(port.startswith("127.0.0.1:") for port in scheduler["ports"])  # loopback only
    workers = sorted(name for name in services if name.startswith("worker-"))
    for name in workers:
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", "tcp://scheduler:8786"]
        assert command[command.index("--resources") + 1] == f"{TRAINING_SLOT}=1"
        parses_as(worker_cli, command[2:])
        assert services[name]["depends_on"]["scheduler"]["condition"] == "service_healthy"
        assert services[name]["restart"] == "on-failure"
        # The workers share the host's CPUs (no `cpus:` limit): each takes its share; none sees a GPU.
        assert "cpus" not in services[name]
        assert services[name]["environment"] == {"DASK_TRAIN_SLOT_WORKERS": str(len(workers)),
                                                 "CUDA_VISIBLE_DEVICES": ""}
    build = scheduler["build"]
    dockerfile = (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == DEPLOY / "docker" / "Dockerfile"


def test_dockerfile_has_cpu_and_cuda_variants_and_copies_what_exists():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and "FROM torch-${VARIANT} AS final" in text
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, flags=re.M))
    assert {"torch-cpu", "torch-cuda"} <= stages
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text  # the CPU wheel, as in CI
    cuda_stage = text[text.index("AS torch-cuda"):text.index("AS final")]
    # The same tested torch, pinned (PyPI's 2.13.0 wheel is CUDA 13.0), with dask-cuda's CUDA 13 bindings.
    assert re.search(r"^RUN pip install torch==2\.13\.0 \"dask-cuda\[cu13\]>=25\.10\"", cuda_stage, flags=re.M)
    assert re.search(r"^ENV TORCH_NCCL_ASYNC_ERROR_HANDLING=2$", cuda_stage, flags=re.M)  # as GPU_WORKER_ENVIRON
    assert re.search(r"^USER (?!root)\w+", text, flags=re.M)  # not root
    root = DEPLOY.parent
    for line in re.findall(r"^COPY (.+) /opt/dask-train/?\S*$", text, flags=re.M):
        for source in line.split():
            assert (root / source).exists(), source


def test_gpu_extra_installs_dask_cuda_with_its_cuda_12_bindings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # dask-cuda has had the cu12 / cu13 extras since 25.10; without one `import dask_cuda` fails.
    assert [r for r in extras["gpu"] if r.startswith("dask-cuda")] == ["dask-cuda[cu12]>=25.10"]


def test_sbatch_with_tls_and_a_dashboard_address_parses_with_dask_and_tells_the_client(tmp_path):
    from cluster import make_tls_files

    made = make_tls_files(tmp_path / "tls")
    files = {"ca": made.ca_file, "cert": made.cert, "key": made.key}
    result = CliRunner().invoke(cli, ["cluster", "sbatch", "--nodes", "2", "--interface", "ib0",
                                      "--dashboard-address", "0.0.0.0:8788", "--tls-ca-file", str(files["ca"]),
                                      "--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])])
    assert result.exit_code == 0, result.output
    script = result.output
    scheduler = next(line for line in script.splitlines() if "dask_scheduler" in line)
    args = words_after(scheduler, "distributed.cli.dask_scheduler")
    parses_as(scheduler_cli, args)
    assert args[args.index("--protocol") + 1] == "tls" and args[args.index("--interface") + 1] == "ib0"
    assert args[args.index("--dashboard-address") + 1] == "0.0.0.0:8788"
    worker = words_after(next(line for line in script.splitlines() if line.startswith("srun ")),
                         "distributed.cli.dask_worker")
    parses_as(worker_cli, worker)
    for words in (args, worker):
        assert [words[words.index(f"--tls-{o}") + 1] for o in ("ca-file", "cert", "key")] == \
            [str(files[n]) for n in ("ca", "cert", "key")]
    assert f"--scheduler-file dask-train-scheduler.json --tls-ca-file {files['ca']}" in script  # the client's line


@pytest.mark.parametrize(("args", "message"), [
    (["--tls-ca-file", "README.md"], "all three"),
    (["--dashboard-address", "everywhere"], "HOST:PORT"),
])
def test_sbatch_refuses_half_tls_and_a_bad_dashboard_address(args, message):
    result = CliRunner().invoke(cli, ["cluster", "sbatch", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_trailing_newline_is_refused_where_a_pattern_checks_a_value():
    for given, named in (({"image": "dask-train:cuda\n"}, "image="), ({"namespace": "default\n"}, "namespace=")):
        with pytest.raises(ValueError, match=named):
            dask_cluster(**given)
    with pytest.raises(ValueError, match="walltime="):
        SlurmSpec(walltime="60\n")
    with pytest.raises(ValueError, match="dashboard_address="):
        SlurmSpec(dashboard_address="127.0.0.1:99999")


def test_dashboard_addresses_as_dask_takes_them():
    """Checked against Dask's own parser: what ClusterSpec takes, Dask takes; the IPv6 forms Dask refuses
    after start-up are refused before it."""
    from distributed.utils import clean_dashboard_address

    from cluster import ClusterSpec

    for good in ("127.0.0.1:8787", ":8787", "8787", "node-1:0"):
        assert ClusterSpec(dashboard_address=good).dashboard_address == good
        assert clean_dashboard_address(good)
    for dask_refuses in ("[::1]:8787", ":::8787"):
        with pytest.raises(ValueError):
            clean_dashboard_address(dask_refuses)
    for bad in ("[::1]:8787", ":::8787", "127.0.0.1:99999", "garbage"):
        with pytest.raises(ValueError, match="dashboard-address"):
            ClusterSpec(dashboard_address=bad)
