"""The README's code blocks, as a new user would run them.

What is decided here, block by block (a README block or command that no rule covers fails the test, naming it,
so a new example cannot go untested by accident):

- **Python blocks run**, each as its own script in a fresh folder, scaled down where the README says the numbers
  are the user's choice (``num_trials``, ``epochs``; the names corpus cut to its first 3,000 with ``max_names``);
  ``Client("tcp://scheduler:8786")`` and the DDP block's ``cluster.connect("tcp://10.0.0.5:8786")`` point at this
  test's real LocalCluster. The client-script block runs unguarded, as written.
- **The YAML block** (the sweep file) is loaded by dask-train's own sweep-file loader and must validate.
- **Shell blocks**: every ``dask-train`` command is parsed by dask-train's own command line (the command
  exists, its options and arguments are accepted), and ``dask`` commands by Dask's own CLI. The cheap ones in
  ``_RUN`` then run for real, in order, in one folder, scaled down (``--epochs 1``, this cluster's address).
- **Skipped, with the reason in ``_SKIP``**: installing (``python3.11 -m venv``, ``pip``), the test run itself
  (``python -m pytest``: this is it), benchmarks (not CI), and what needs a machine this is not (Slurm's
  ``sbatch``, ``ssh``, Kubernetes' ``helm`` / ``kubectl``, ``docker``). Their dask-train parts (``cluster
  sbatch``, ``cluster manifest``) are parsed; the files they write are tested in tests/unit/test_deploy*.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from cluster import ClusterSpec, Target, open_client
from tests.helpers import run_cli
from training.cli import cli
from training.sweep_spec import load_sweep_file

pytestmark = pytest.mark.timeout(900)

README = Path(__file__).resolve().parents[2] / "README.md"

_SKIP = {
    "python3.11": "creates a virtual environment and installs: this environment is the result",
    "pip": "installs packages: this environment has them",
    "sbatch": "needs a Slurm cluster (the script is tested as text and parsed in tests/unit/test_deploy.py)",
    "ssh": "needs a remote login node",
    "helm": "needs a Kubernetes cluster",
    "kubectl": "needs a Kubernetes cluster (manifests are validated against the CRDs in tests/unit)",
    "docker": "needs Docker (the compose file is validated against its schema in tests/unit)",
    "python -m pytest": "is this test run",
    "python tests/benchmarks/": "benchmarks are not part of CI",
    "deploy/netns/fake-hosts.sh": "needs root (tests/integration/test_multihost.py runs it where it can)",
}

# dask-train commands that run for real (prefix match), after scaling down; the rest are parsed only: they
# need a remote cluster (--address 10.0.0.5), Slurm, a file the README leaves to the user, or minutes of CPU.
_RUN = ("dask-train sweep --examples", "dask-train workloads", "dask-train train xor",
        "dask-train train digits --arch cnn", "dask-train evaluate runs/cnn", "dask-train sweep pets-quick",
        "dask-train results runs/pets-quick")

_SCALE = [(r"--epochs \d+", "--epochs 1"), (r"\bepochs=\d+", "epochs=1"), (r"\bnum_trials=\d+", "num_trials=2"),
          (r'\{"corpus": "first"\}', '{"corpus": "first", "max_names": 3000}')]  # names: an epoch of 3,000


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def commands(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def scaled(text: str, **replacements: str) -> str:
    for pattern, value in _SCALE:
        text = re.sub(pattern, value, text)
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        yield c


def test_the_readme_has_the_blocks_this_test_covers():
    assert len(blocks("python")) == 3 and len(blocks("yaml")) == 1 and len(blocks("bash")) >= 10


def test_every_shell_command_is_parsed_by_its_own_tool_or_skipped_for_a_stated_reason():
    for block in blocks("bash"):
        for command in commands(block):
            for part in command.split(" && "):
                _check(part)


def _check(command: str) -> None:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    line = " ".join(words)
    if words[0] == "dask-train":
        _parse(cli, words[1:], line)
    elif words[:2] in (["dask", "worker"], ["dask", "scheduler"]):
        from distributed.cli import dask_scheduler, dask_worker

        command_ = dask_worker.main if words[1] == "worker" else dask_scheduler.main
        command_.make_context(f"dask {words[1]}", words[2:])
    elif words[0] in (".",) or line.startswith("source "):
        pass  # activating the virtual environment made by the skipped line before it
    else:
        reason = next((why for prefix, why in _SKIP.items() if line.startswith(prefix)), None)
        assert reason, (f"README command {line!r}: neither run, parsed nor skipped with a reason. Decide in "
                        "tests/integration/test_readme.py.")


def _parse(group: click.Group, args: list[str], line: str) -> None:
    """Parse ``args`` down the command tree, as ``dask-train`` would, without running anything."""
    ctx = group.make_context("dask-train", list(args), resilient_parsing=False)
    rest = [*ctx._protected_args, *ctx.args]
    if not rest:
        return
    name, command, remaining = group.resolve_command(ctx, rest)
    assert command is not None, f"{line}: no command {name!r}"
    if isinstance(command, click.Group):
        _parse(command, remaining, line)
    else:
        command.make_context(name or "", remaining, parent=ctx)


def test_the_sweep_file_block_is_a_valid_sweep_file(tmp_path):
    [block] = blocks("yaml")
    (tmp_path / "my-sweep.yaml").write_text(block)
    spec = load_sweep_file(tmp_path / "my-sweep.yaml")
    assert spec.name == "pets" and len(spec.trials()) == 4 and yaml.safe_load(block)["epochs"] == spec.epochs


def test_the_python_blocks_run_as_scripts(client, tmp_path):
    address = client.scheduler.address
    client_script, ddp, local = blocks("python")
    scripts = {
        "client_script.py": scaled(client_script, **{'"tcp://scheduler:8786"': repr(address)}),
        "ddp.py": scaled(ddp, **{'"tcp://10.0.0.5:8786"': repr(address)}),
        "local.py": scaled(local),
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
        done = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name}:\n{text}\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "runs" / "pets" / "results.csv").is_file()
    assert (tmp_path / "runs" / "names-ddp" / "model").is_dir() and (tmp_path / "runs" / "cnn").is_dir()
    assert (tmp_path / "runs" / "first" / "model").is_dir()


def test_the_cheap_shell_commands_run_scaled_down(client, tmp_path):
    ran = []
    for block in blocks("bash"):
        for command in commands(block):
            for part in command.split(" && "):
                if part.startswith(_RUN):
                    ran.append(part)
                    extra = ["--address", client.scheduler.address] if part.startswith("dask-train sweep pets") \
                        else []
                    args = shlex.split(scaled(part))[1:]
                    if args[:2] == ["sweep", "pets-quick"]:
                        args += ["--epochs", "1"]
                    done = run_cli(*args, *extra, cwd=tmp_path, timeout=600)
                    assert done.returncode == 0, f"{part}:\n{done.stdout}\n{done.stderr}"
    assert {r.split(" --")[0] for r in ran} >= {"dask-train sweep pets-quick", "dask-train train xor",
                                                "dask-train evaluate runs/cnn"}
