"""``dask-train train``'s output: a compact epoch table, and a resume with nothing left that says so."""

from __future__ import annotations

import re

from tests.helpers import run_cli


def _epochs_shown(stdout: str) -> list[int]:
    return [int(line.split()[0]) for line in stdout.splitlines() if re.match(r"\s+\d+\s+\d", line)]


def test_train_shows_the_first_every_kth_and_the_last_epoch(tmp_path):
    done = run_cli("train", "xor", "--epochs", "47", "--out", str(tmp_path / "xor"))
    assert done.returncode == 0, done.stdout + done.stderr
    shown = _epochs_shown(done.stdout)
    assert shown[0] == 1 and shown[-1] == 47 and len(shown) <= 22
    assert "every 5 epochs" in done.stdout and set(shown[1:-1]) == set(range(5, 47, 5))


def test_resume_with_nothing_left_to_train_says_so(tmp_path):
    out = str(tmp_path / "xor")
    assert run_cli("train", "xor", "--epochs", "3", "--out", out).returncode == 0
    again = run_cli("train", "xor", "--epochs", "3", "--out", out, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing left to train: the checkpoint in" in again.stdout and "epoch 3 of 3" in again.stdout
    assert _epochs_shown(again.stdout) == []


def test_piped_a_long_epoch_shows_its_progress_in_lines(monkeypatch, tmp_path):
    """Without a terminal there is no bar: a long epoch says how far it got every LINE_EVERY seconds (0 here:
    after every step but an epoch's last), each line before that epoch's row."""
    from click.testing import CliRunner

    from training.cli import cli, epoch_table

    monkeypatch.setattr(epoch_table, "LINE_EVERY", 0.0)
    done = CliRunner().invoke(cli, ["train", "digits", "--epochs", "1", "--batch-size", "256", "--out",
                                    str(tmp_path / "d")])
    assert done.exit_code == 0, done.output
    steps = [line for line in done.output.splitlines() if line.startswith("  epoch 1/1: step ")]
    total = int(steps[0].rsplit("/", 1)[1])
    assert [int(line.split()[-1].split("/")[0]) for line in steps] == list(range(1, total))
    assert done.output.index(steps[-1]) < done.output.index("Saved model to")
