"""A disk that fills up mid-sweep stops the sweep cleanly: one error line that says to free space and rerun,
nothing recorded as failed because of it, and the same command finishes the sweep once space is free.

The sweep runs through the console script in a private mount namespace whose runs directory is a small
tmpfs (needs root and unshare(1); skipped elsewhere); the third trial fills that disk when it starts, after
one of the first two has finished."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.helpers import cli_env

pytestmark = pytest.mark.timeout(420)

WORKLOAD = "tests.integration.diskfull:FillingXor"
#: Prints every trial's state and its recorded epochs, from the run store (run inside the namespace).
_STATES = ("import json, sqlite3, sys\n"
           "db = sqlite3.connect(sys.argv[1])\n"
           "rows = db.execute('SELECT number, state FROM trials ORDER BY number').fetchall()\n"
           "query = 'SELECT epoch FROM epochs WHERE trial = ? ORDER BY epoch'\n"
           "epochs = {n: [e for (e,) in db.execute(query, (n,))] for n, _ in rows}\n"
           "print('STATES ' + json.dumps({'states': dict(rows), 'epochs': epochs}))\n")


def _cannot_mount() -> str | None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to give the sweep a small disk of its own"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True, text=True, timeout=30)
    return f"cannot make mount namespaces here: {probe.stderr.strip()}" if probe.returncode else None


def test_a_full_disk_stops_the_sweep_cleanly_and_the_same_command_finishes_it(tmp_path):
    reason = _cannot_mount()
    if reason:
        pytest.skip(reason)
    runs = tmp_path / "runs"
    runs.mkdir()
    sweep_file = tmp_path / "full.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "full", "workload": WORKLOAD, "space": {"lr": [0.1, 0.2, 0.3]}, "epochs": 6,
        "params": {"fill": str(runs / "filler"), "fill_on_lr": 0.3}, "runs_dir": str(runs)}))
    sweep = shlex.join([sys.executable, "-m", "training.cli", "sweep", str(sweep_file),
                        "--allow-workload", WORKLOAD])
    states = shlex.join([sys.executable, "-c", _STATES, str(runs / "full" / "store.sqlite")])
    script = "\n".join([
        f"mount -t tmpfs -o size=80m none {shlex.quote(str(runs))} || exit 99",
        f"{sweep}; echo FIRST-EXIT=$?", states,
        f"rm {shlex.quote(str(runs / 'filler'))}",  # space is free again (the fill happens once)
        f"{sweep}; echo SECOND-EXIT=$?", states])
    env = {**cli_env(), "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400, env=env)
    output = done.stdout
    first, second = output.split("FIRST-EXIT=", 1)
    [error] = [line for line in first.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: No space left on the device") and "run the same command again" in error
    assert "Traceback" not in first, output
    assert second.startswith("1"), output
    after_full, after_rerun = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines()
                               if line.startswith("STATES ")]
    print(after_full, after_rerun, sep="\n")
    assert "failed" not in after_full["states"].values()  # a full disk is no trial's fault: rerun retries them
    kept = [int(n) for n, state in after_full["states"].items() if state == "completed"]
    assert kept, after_full  # finished before the disk filled up
    assert "SECOND-EXIT=0" in output, output
    assert not any(f"trial {n:04d} started" in second for n in kept)  # what was finished is not trained again
    assert list(after_rerun["states"].values()) == ["completed"] * 3
    assert all(epochs == [1, 2, 3, 4, 5, 6] for epochs in after_rerun["epochs"].values())
