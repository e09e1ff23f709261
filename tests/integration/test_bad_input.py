"""Bad input of every kind, run as a user runs it: the `dask-train` console script in a subprocess.

Each case exits with the right code (2: bad input, 1: a runtime failure), prints one line and no traceback,
finishes within 10 s and 500 MB, and leaves no new file or process behind. Sweep files, CLI arguments,
model directories and run directories are all covered, along with the rule that nothing a file names is
ever imported (a module that would write a marker file when imported)."""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from training import train

pytestmark = pytest.mark.timeout(60)

MAX_SECONDS, MAX_MB = 10.0, 500
ROOT = Path(__file__).resolve().parents[2]
MARKER_MODULE = "dasktrain_marker_mod"
#: Runs the CLI and records the process's peak memory (and its children's) at exit. VmHWM, not
#: getrusage's ru_maxrss: that one keeps the high-water mark of the process before exec, here pytest's.
_RUNNER = ("import atexit, os, resource\n"
           "def _peak():\n"
           "    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
           "    kb = max(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
           "    open(os.environ['DASK_TRAIN_TEST_PEAK'], 'w').write(str(kb))\n"
           "atexit.register(_peak)\n"
           "from training.cli import main\n"
           "main()\n")


def _sweep(**fields) -> str:
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in {"workload": "xor", **fields}.items()) + "\n"


GOOD_SPACE = {"lr": [0.1, 0.2]}
_DROP = object()  # a field left out of a recorded spec
#: name -> sweep file text (or bytes).
SWEEP_FILES: dict[str, str | bytes] = {
    "aliases.yaml": "a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nworkload: xor\nspace: {lr: *b}\n",
    "duplicate.yaml": "workload: xor\nspace: {lr: [0.1]}\nspace: {lr: [0.2]}\n",
    "big.yaml": "workload: xor\n# " + "x" * 70_000 + "\n",
    "binary.yaml": b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4,
    "latin1.yaml": "workload: xor\nname: caf\xe9\n".encode("latin-1"),
    "deep.yaml": "workload: xor\nspace: {lr: " + "[" * 200 + "]" * 200 + "}\n",
    "python-tag.yaml": "workload: !!python/object/apply:os.system ['touch pwned']\nspace: {lr: [0.1]}\n",
    "float-tag.yaml": 'workload: xor\nspace: {lr: !!float "0.1"}\n',  # YAML's own tags too: the file is plain
    "binary-tag.yaml": 'workload: xor\nspace: {lr: [0.1]}\nname: !!binary "AAAA"\n',
    "merge-key.yaml": "workload: xor\nspace: {lr: [0.1]}\nparams: {<<: {seed: 1}}\n",
    "not-yaml.yaml": "workload: xor\nspace: {lr: [0.1, \n",
    "a-list.yaml": "- workload\n- xor\n",
    "unknown-field.yaml": _sweep(space=GOOD_SPACE, colour="red"),
    "no-workload.yaml": "space: {lr: [0.1]}\n",
    "workload-list.yaml": _sweep(workload=[1, 2], space=GOOD_SPACE),
    "workload-module.yaml": _sweep(workload=f"{MARKER_MODULE}:Thing", space=GOOD_SPACE),
    "huge-grid.yaml": _sweep(space={"lr": [round(0.001 * (i + 1), 3) for i in range(300)],
                                    "batch_size": list(range(1, 301)), "hidden": list(range(1, 201))}),
    "huge-num-trials.yaml": _sweep(search="random", num_trials=10**12, space={"lr": {"uniform": [0.1, 1]}}),
    "repeated-values.yaml": _sweep(space={"lr": [0.1, 0.2, 0.1]}),
    "empty-space.yaml": _sweep(space={}),
    "epochs-text.yaml": _sweep(space=GOOD_SPACE, epochs="many"),
    "epochs-huge.yaml": _sweep(space=GOOD_SPACE, epochs=10**9),
    "epochs-bool.yaml": _sweep(space=GOOD_SPACE, epochs=True),
    "seed-negative.yaml": _sweep(space=GOOD_SPACE, seed=-1),
    "search-bogus.yaml": _sweep(space=GOOD_SPACE, search="exhaustive"),
    "metric-bogus.yaml": _sweep(space=GOOD_SPACE, metric="happiness"),
    "name-escapes.yaml": _sweep(space=GOOD_SPACE, name="../../etc"),
    "long-value.yaml": _sweep(space={"lr": ["9" * 20_000]}),
    "bad-domain.yaml": _sweep(space={"lr": {"gaussian": [0, 1]}}),
    "loguniform-zero.yaml": _sweep(search="random", num_trials=2, space={"lr": {"loguniform": [0, 1]}}),
    "space-a-string.yaml": _sweep(space="lr"),
    "runs-dir-a-file.yaml": _sweep(space=GOOD_SPACE, runs_dir="plain-file.txt"),
    "runs-dir-others.yaml": _sweep(space=GOOD_SPACE, runs_dir=".", name="someone-elses"),
    "runs-dir-unwritable.yaml": _sweep(space=GOOD_SPACE, runs_dir="/proc/dask-train-test"),
    "precision-bogus.yaml": _sweep(space=GOOD_SPACE, precision="fp8"),
    "precision-number.yaml": _sweep(space=GOOD_SPACE, precision=16),
}
#: Sweep files of cases named in CASES directly (valid YAML, bad data paths: caught before a cluster starts).
OTHER_SWEEP_FILES = {
    "data-device.yaml": _sweep(workload="charlm", space={"lr": [0.01]}, params={"data": "/dev/zero"}),
}

#: (id, arguments, exit code). Paths are relative to the test's working folder (see ``workdir``).
CASES: list[tuple[str, list[str], int]] = [
    *[(f"sweep-{name}", ["sweep", f"inputs/{name}"], 2) for name in SWEEP_FILES],
    ("sweep-missing-file", ["sweep", "inputs/nope.yaml"], 2),
    ("sweep-unknown-scheme", ["sweep", "pets-quick", "--address", "carrier-pigeon://10.0.0.5:8786"], 2),
    ("sweep-address-no-port", ["sweep", "pets-quick", "--address", "tcp://10.0.0.5"], 2),
    ("sweep-too-many-workers", ["sweep", "pets-quick", "--workers", "100000"], 2),
    ("sweep-new-on-others-dir", ["sweep", "inputs/good.yaml", "--runs-dir", ".", "--name", "someone-elses",
                                 "--new"], 2),
    ("ddp-too-many-workers", ["ddp", "xor", "--workers", "100000"], 2),
    ("ddp-zero-workers", ["ddp", "xor", "--workers", "0"], 2),
    ("ddp-precision-bogus", ["ddp", "xor", "--precision", "fp8"], 2),
    ("sweep-precision-bogus", ["sweep", "inputs/good.yaml", "--precision", "fp8"], 2),
    ("train-precision-bogus", ["train", "xor", "--precision", "fp8"], 2),
    ("train-fp16-on-cpu", ["train", "xor", "--precision", "fp16", "--device", "cpu"], 2),
    ("ddp-negative-restarts", ["ddp", "xor", "--max-restarts", "-1"], 2),
    ("ddp-zero-min-workers", ["ddp", "xor", "--min-workers", "0"], 2),
    ("ddp-min-workers-above-workers", ["ddp", "xor", "--workers", "1", "--min-workers", "2"], 2),
    ("train-unknown-workload", ["train", "xorr"], 2),
    ("train-workload-module", ["train", "no_such_module_here:Thing"], 2),
    ("train-bad-value", ["train", "xor", "--lr", "fast"], 2),
    ("train-huge-batch", ["train", "xor", "--batch-size", "1" + "0" * 30], 2),
    ("train-huge-epochs", ["train", "xor", "--epochs", str(10**9)], 2),
    ("train-out-a-file", ["train", "xor", "--out", "plain-file.txt"], 2),
    ("train-data-missing", ["train", "charlm", "--data", "no-such-text.txt"], 2),
    ("train-data-a-device", ["train", "charlm", "--data", "/dev/zero"], 2),
    ("sweep-runs-dir-name-too-long", ["sweep", "inputs/good.yaml", "--runs-dir", "new-runs/" + "d" * 300], 2),
    ("sweep-runs-dir-name-too-long-in-runs", ["sweep", "inputs/good.yaml", "--runs-dir", "runs/" + "d" * 300], 2),
    ("sweep-runs-dir-path-too-long", ["sweep", "inputs/good.yaml", "--runs-dir", "/".join(["b" * 200] * 25)], 2),
    ("sweep-empty-name", ["sweep", "inputs/good.yaml", "--name", ""], 2),
    # names and charlm read their data file whole: one larger than 64 MiB is refused before it is read
    ("train-names-data-too-big", ["train", "names", "--data", "inputs/huge.json"], 2),
    ("sweep-charlm-data-too-big", ["sweep", "inputs/charlm-huge-data.yaml"], 2),
    ("train-data-a-folder", ["train", "names", "--data", "someone-elses"], 2),
    ("train-data-a-file-for-a-folder", ["train", "digits", "--data", "plain-file.txt"], 2),
    ("ddp-data-a-device", ["ddp", "charlm", "--data", "/dev/zero", "--workers", "1"], 2),
    ("sweep-data-a-device", ["sweep", "inputs/data-device.yaml"], 2),
    ("train-out-others-dir", ["train", "xor", "--out", "someone-elses"], 2),
    ("train-out-empty", ["train", "xor", "--out", ""], 2),
    ("train-out-a-trained-model", ["train", "xor", "--epochs", "1", "--out", "models/digits"], 2),  # no --resume
    ("train-abstract-workload", ["train", "training:Workload"], 2),
    ("train-workload-without-module", ["train", ":Thing"], 2),
    ("train-workload-relative", ["train", ".xor:Thing"], 2),
    ("generate-names-prompt-not-a-letter", ["generate", "models/names", "--prompt", "M@x"], 2),
    ("generate-names-prompt-stop-character", ["generate", "models/names", "--prompt", "Ma+"], 2),
    ("generate-names-prompt-too-long", ["generate", "models/names", "--prompt", "Max" * 12], 2),
    ("generate-n-huge", ["generate", "models/xor", "-n", str(10**9)], 2),
    ("generate-names-window-edited", ["generate", "models/names-window", "-n", "2"], 2),  # 10**9: 128 GB
    ("evaluate-history-huge", ["evaluate", "models/huge-history"], 2),
    ("evaluate-model-json-huge", ["evaluate", "models/huge-model-json"], 2),
    ("generate-n-zero", ["generate", "models/xor", "-n", "0"], 2),
    ("generate-from-xor", ["generate", "models/xor"], 2),
    ("unknown-command", ["frobnicate"], 2),
    ("unknown-option", ["--frobnicate"], 2),
    ("evaluate-missing", ["evaluate", "models/nope"], 2),
    ("evaluate-allow-not-module-class", ["evaluate", "models/xor", "--allow-workload", "foo"], 2),
    ("evaluate-a-file", ["evaluate", "plain-file.txt"], 2),
    ("evaluate-not-a-model", ["evaluate", "someone-elses"], 2),
    ("evaluate-json-garbage", ["evaluate", "models/garbage-json"], 2),
    ("evaluate-marker-module", ["evaluate", "models/marker"], 2),
    ("evaluate-param-out-of-range", ["evaluate", "models/huge-hidden"], 2),
    ("evaluate-meta-mismatch", ["evaluate", "models/huge-meta"], 2),
    ("evaluate-newer-format", ["evaluate", "models/newer"], 2),
    ("evaluate-params-not-mapping", ["evaluate", "models/params-list"], 2),
    ("evaluate-garbage-weights", ["evaluate", "models/garbage-weights"], 2),
    ("results-missing", ["results", "runs/nope"], 2),
    ("results-not-a-run", ["results", "someone-elses"], 2),
    ("results-marker-module", ["results", "runs/marker"], 2),
    ("results-no-sweep", ["results", "runs/no-sweep"], 2),
    ("results-spec-not-json", ["results", "runs/spec-not-json"], 2),
    ("results-spec-not-mapping", ["results", "runs/spec-not-mapping"], 2),
    ("results-spec-huge", ["results", "runs/spec-huge"], 2),
    ("results-garbage-store", ["results", "runs/garbage-store"], 2),
    ("results-time-out-of-range", ["results", "runs/time-out-of-range"], 2),
    ("results-epoch-negative", ["results", "runs/epoch-negative"], 2),
    ("results-name-too-long", ["results", "a" * 5000], 2),
    ("results-spec-unknown-field", ["results", "runs/spec-unknown-field"], 2),
    ("results-spec-no-metric", ["results", "runs/spec-no-metric"], 2),
    ("results-spec-space-string", ["results", "runs/spec-space-string"], 2),
    ("results-metrics-list", ["results", "runs/metrics-list"], 2),
    ("results-more-rows-than-its-spec", ["results", "runs/more-rows"], 2),
    ("results-plot-report-link", ["results", "runs/report-link", "--plot"], 2),
    ("cluster-up-file-not-ours", ["cluster", "up", "--scheduler-file", "plain-file.txt", "--workers", "1"], 2),
    ("cluster-up-folder", ["cluster", "up", "--scheduler-file", "someone-elses", "--workers", "1"], 2),
    ("cluster-up-host-not-an-address", ["cluster", "up", "--host", "999.1.1.1"], 2),
    ("cluster-up-tls-files-not-pem", ["cluster", "up", "--tls-ca-file", "plain-file.txt", "--tls-cert",
                                      "plain-file.txt", "--tls-key", "plain-file.txt"], 2),
    ("cluster-up-host-with-a-space", ["cluster", "up", "--host", "evil host"], 2),
    ("cluster-up-dashboard-port-too-big", ["cluster", "up", "--dashboard-address", "127.0.0.1:99999"], 2),
    ("cluster-info-no-scheduler-file", ["cluster", "info", "--scheduler-file", "nope.json"], 2),
    ("cluster-info-scheduler-file-not-json", ["cluster", "info", "--scheduler-file", "plain-file.txt"], 2),
    ("ddp-scheduler-file-a-device", ["ddp", "xor", "--scheduler-file", "/dev/zero"], 2),
    ("ddp-scheduler-file-address-a-number", ["ddp", "xor", "--scheduler-file", "inputs/address-5.json"], 2),
    ("ddp-scheduler-file-address-a-file", ["ddp", "xor", "--scheduler-file", "inputs/address-file.json"], 2),
    ("sweep-scheduler-file-huge", ["sweep", "inputs/good.yaml", "--scheduler-file", "inputs/huge.json"], 2),
    ("ddp-address-host-too-long", ["ddp", "xor", "--address", f"tcp://{'a' * 5000}:1"], 2),
    # --workers/--gpus size the built-in cluster: with a running one they are refused, not ignored (ddp's
    # --workers, the ranks to train on, goes with either, unbounded by what this machine could start)
    ("sweep-workers-with-address", ["sweep", "pets-quick", "--address", "tcp://127.0.0.1:9", "--workers", "3"], 2),
    ("sweep-gpus-with-scheduler-file", ["sweep", "pets-quick", "--scheduler-file", "nope.json", "--gpus", "off"],
     2),
    ("ddp-gpus-with-address", ["ddp", "xor", "--address", "tcp://127.0.0.1:9", "--gpus", "off"], 2),
    ("ddp-many-ranks-of-a-running-cluster", ["ddp", "xor", "--address", "tcp://127.0.0.1:9", "--workers", "5000",
                                             "--runs-dir", "new-runs",
                                             "--timeout", "1"], 1),
    ("ddp-timeout-inf", ["ddp", "xor", "--timeout", "inf"], 2),
    ("ddp-timeout-nan", ["ddp", "xor", "--timeout", "nan"], 2),
    ("ddp-rank-timeout-huge", ["ddp", "xor", "--rank-timeout", "1e300"], 2),
    ("ddp-rank-timeout-nan", ["ddp", "xor", "--rank-timeout", "nan"], 2),
    ("ddp-seed-huge", ["ddp", "xor", "--seed", "9" * 25], 2),
    ("ddp-resume-other-hyperparameters", ["ddp", "xor", "--name", "xor-done", "--resume", "--lr", "0.0123",
                                          "--workers", "1"], 2),  # refused before any worker starts
    ("ddp-resume-other-workload", ["ddp", "digits", "--name", "xor-done", "--resume", "--workers", "1"], 2),
    ("ddp-name-empty", ["ddp", "xor", "--name", ""], 2),
    ("ddp-resume-a-pickle-that-runs-code", ["ddp", "xor", "--name", "pickled", "--resume"], 2),
    ("ddp-name-a-train-model", ["ddp", "xor", "--runs-dir", "models", "--name", "xor", "--workers", "1"], 2),
    ("train-out-a-ddp-run-directory", ["train", "xor", "--out", "runs/xor-done"], 2),
    ("evaluate-a-ddp-run-directory", ["evaluate", "runs/xor-done"], 2),  # names its model folder
    ("sbatch-out-an-existing-file", ["cluster", "sbatch", "--out", "plain-file.txt"], 2),
    ("manifest-out-an-existing-file", ["cluster", "manifest", "--out", "plain-file.txt"], 2),
    ("sbatch-out-in-no-folder", ["cluster", "sbatch", "--out", "no-such-folder/x.sbatch"], 2),
    ("cluster-info-nobody-there", ["cluster", "info", "--address", "tcp://127.0.0.1:9", "--timeout", "1"], 1),
]


def _marker_module(folder: Path) -> None:
    """A module that writes ``marker`` in the working folder when imported (it must never be)."""
    (folder / f"{MARKER_MODULE}.py").write_text("open('marker', 'w').write('imported')\nclass Thing: pass\n")


def _model_dirs(models: Path) -> None:
    good = train("xor", epochs=1).save(models / "xor")
    train("digits", {"arch": "mlp", "hidden": 8}, epochs=1).save(models / "digits")
    names = {"corpus": "first", "max_names": 200, "hidden": 8, "layers": 1}
    train("names", names, epochs=1).save(models / "names")

    def variant(name: str, source: Path = good, **changes) -> Path:
        folder = models / name
        shutil.copytree(source, folder)
        meta = json.loads((folder / "model.json").read_text())
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key].update(value)
            else:
                meta[key] = value
        (folder / "model.json").write_text(json.dumps(meta))
        return folder

    variant("marker", workload=f"{MARKER_MODULE}:Thing")
    variant("huge-hidden", params={"hidden": 10**9})
    variant("huge-meta", models / "digits", meta={"height": 10**6, "width": 10**6})
    variant("newer", version=99)
    variant("params-list", params=[1, 2])
    (variant("garbage-json") / "model.json").write_text("{not json")
    (variant("garbage-weights") / "model.safetensors").write_bytes(b"\x00" * 100)
    variant("names-window", models / "names", meta={"window": 10**9})
    for name, file in (("huge-history", "history.json"), ("huge-model-json", "model.json")):
        with (variant(name) / file).open("r+b") as padded:  # valid JSON, then 3 GB of zero bytes (sparse)
            padded.truncate(3 * 2**30)


def _run_dirs(runs: Path) -> None:
    """Run directories whose store records the given spec (a sweep's is read back from its store as JSON;
    sweep.yaml is for people), none, or garbage."""
    from training.limits import MAX_SPEC_BYTES
    from training.store import RunStore
    from training.sweep_spec import SweepSpec

    def run(name: str, spec: str | None = None, store: bytes | None = None, trials: str = "") -> Path:
        folder = runs / name
        folder.mkdir(parents=True)
        (folder / "sweep.yaml").write_text(_sweep(name=name, space=GOOD_SPACE))
        if store is not None:
            (folder / "store.sqlite").write_bytes(store)
        elif spec is None:
            sqlite3.connect(folder / "store.sqlite").close()
        else:
            with RunStore(folder / "store.sqlite") as recorded:
                recorded.begin_run(name, "fp", {}, [{"lr": 0.1}])
                recorded.db.execute("UPDATE sweep SET spec = ?", (spec,))
                if trials:
                    recorded.db.execute(trials)
        return folder

    def good(name: str, **changes) -> str:
        spec = {**SweepSpec.create(name=name, workload="xor", space=GOOD_SPACE).to_json(), **changes}
        return json.dumps({k: v for k, v in spec.items() if v is not _DROP})

    run("marker", json.dumps({"name": "marker", "workload": f"{MARKER_MODULE}:Thing", "space": GOOD_SPACE}))
    run("no-sweep")
    run("spec-not-json", "{not json")
    run("spec-not-mapping", "[1, 2]")
    run("spec-huge", json.dumps({"name": "huge", "workload": "xor", "space": {"lr": "x" * MAX_SPEC_BYTES}}))
    run("garbage-store", store=b"not a database" * 100)
    run("spec-unknown-field", good("spec-unknown-field", pad=1))
    run("spec-no-metric", good("spec-no-metric", metric=_DROP))
    run("spec-space-string", good("spec-space-string", space="lr"))
    run("metrics-list", good("metrics-list"), trials="UPDATE trials SET state = 'completed', metrics = '[1]'")
    run("time-out-of-range", good("time-out-of-range"), trials="UPDATE trials SET state = 'completed', "
        "seconds = 1e308, started = -1e308, finished = 1e308")
    run("epoch-negative", good("epoch-negative"), trials="UPDATE trials SET state = 'completed', best_epoch = -5")
    run("more-rows", good("more-rows"), trials="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
        "WHERE i < 50000) INSERT INTO trials (number, params, state) SELECT i, '{}', 'completed' FROM n")
    linked = run("report-link", good("report-link"), trials="UPDATE trials SET state = 'completed', best = 0.5")
    (runs / "elsewhere").mkdir()
    (runs / "elsewhere" / "summary.md").write_text("someone's notes\n")
    (linked / "report").symlink_to(runs / "elsewhere")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder holding every bad input (built once; each case checks that it changes nothing)."""
    folder = tmp_path_factory.mktemp("bad-input")
    inputs = folder / "inputs"
    inputs.mkdir()
    for name, content in {**SWEEP_FILES, **OTHER_SWEEP_FILES}.items():
        (inputs / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (inputs / "good.yaml").write_text(_sweep(space=GOOD_SPACE))
    (inputs / "address-5.json").write_text('{"address": 5}')
    (inputs / "address-file.json").write_text('{"address": "file:///etc/passwd"}')
    with (inputs / "huge.json").open("wb") as huge:  # 3 GB on paper, sparse on disk
        huge.truncate(3 * 2**30)
    (inputs / "charlm-huge-data.yaml").write_text(_sweep(workload="charlm", space={"data": ["inputs/huge.json"]}))
    (folder / "runs" / "xor-done").mkdir(parents=True)
    train("xor", epochs=1, checkpoint=folder / "runs" / "xor-done" / "checkpoint.pt")  # a DDP job's, in form
    (folder / "plain-file.txt").write_text("not yours\n")
    (folder / "someone-elses").mkdir()
    (folder / "someone-elses" / "thesis.tex").write_text("years of work\n")
    _marker_module(folder)
    _model_dirs(folder / "models")
    _run_dirs(folder / "runs")
    shutil.copytree(folder / "models" / "xor", folder / "runs" / "xor-done" / "model")  # a DDP job's model
    (folder / "runs" / "pickled").mkdir()  # a checkpoint whose pickle would touch pwned (protocol 4: torch warns)
    (folder / "runs" / "pickled" / "checkpoint.pt").write_bytes(
        b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94"
        b"\x8c\x0btouch pwned\x94\x85\x94R\x94.")
    return folder


def _tree(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


def run_cli(args: list[str], cwd: Path, peak_file: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """The CLI's result, its wall time and the CPU time it used (what a loaded machine does not inflate)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
           "DASK_TRAIN_TEST_PEAK": str(peak_file), "COLUMNS": "200"}
    started, used = time.monotonic(), _children_cpu()
    result = subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=60)
    return result, time.monotonic() - started, _children_cpu() - used


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _ForkedCli:
    """The CLI run in processes forked from one that imported it once (tests/forked_cli.py)."""

    def __init__(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-m", "tests.forked_cli"], cwd=ROOT, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, args: list[str], cwd: Path, out: Path) -> tuple[int, str, float, float, float]:
        """Exit code, output, wall seconds, CPU seconds and peak MB of one run."""
        assert self.server.stdin is not None and self.server.stdout is not None
        started = time.monotonic()
        request = {"args": args, "cwd": str(cwd), "env": {"COLUMNS": "200"}, "out": str(out)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], 120)
        assert ready, f"no answer within 120 s to {args}"
        answer = json.loads(self.server.stdout.readline())
        return (answer["code"], out.read_text(errors="replace"), time.monotonic() - started, answer["cpu"],
                answer["peak_kb"] / 1024)

    def close(self) -> None:
        self.server.kill()
        self.server.wait(timeout=30)


@pytest.fixture(scope="module")
def forked() -> Iterator[_ForkedCli]:
    cli = _ForkedCli()
    try:
        yield cli
    finally:
        cli.close()


#: Cases also run through the console script itself, a fresh interpreter each (the rest fork from one).
CONSOLE_SCRIPT = {"sweep-binary.yaml", "sweep-aliases.yaml", "train-bad-value", "evaluate-marker-module",
                  "unknown-command"}


@pytest.mark.parametrize(("case", "args", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(workdir, forked, tmp_path, case, args, code):
    before, children = _tree(workdir), {p.pid for p in psutil.Process().children(recursive=True)}
    if case in CONSOLE_SCRIPT:
        peak_file = tmp_path / "peak"
        result, seconds, cpu = run_cli(args, workdir, peak_file)
        returned, output = result.returncode, result.stdout + result.stderr
        peak_mb = int(peak_file.read_text()) / 1024
    else:
        returned, output, seconds, cpu, peak_mb = forked.run(args, workdir, tmp_path / "output")
    output = output.strip()
    assert returned == code, output
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output and output.startswith("Error: "), output
    assert len(output) < 1000, f"{len(output)} characters"
    print(f"figures: {seconds:.2f} s wall, {cpu:.2f} s CPU, {peak_mb:.0f} MB")  # shown with -s
    # CPU seconds: on a quiet machine the same as wall seconds; on a loaded one wall time says nothing.
    assert cpu < MAX_SECONDS, f"{cpu:.1f} s of CPU ({seconds:.1f} s wall)"
    assert peak_mb < MAX_MB, f"{peak_mb:.0f} MB"
    assert _tree(workdir) == before, "files changed"
    assert not (workdir / "marker").exists() and not (workdir / "pwned").exists()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children, "processes left behind"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_file_naming_a_module_never_imports_it(workdir):
    """load_model in Python as well as `evaluate` and `results` above: refused, and the marker never appears."""
    from training import load_model
    from training.errors import ModelFileError

    sys.path.insert(0, str(workdir))
    try:
        with pytest.raises(ModelFileError, match="not built in"):
            load_model(workdir / "models" / "marker")
    finally:
        sys.path.remove(str(workdir))
    assert MARKER_MODULE not in sys.modules
    assert not (workdir / "marker").exists() and not Path("marker").exists()
