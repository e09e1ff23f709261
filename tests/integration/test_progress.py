"""What people see while a sweep runs and after: the Python API's default progress, and the CLI's table at
80 columns. Real sweeps on a real LocalCluster; assertions hold whatever the timing (which worker runs which
trial, in which order, is left free)."""

from __future__ import annotations

import re

import pytest

from cluster import ClusterSpec, Target, open_client
from tests.helpers import run_cli
from training import Sweep

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client():
    with open_client(Target(local=ClusterSpec(workers=2, gpus="off", dashboard_address="127.0.0.1:0"))) as c:
        yield c


def _sweep(tmp_path, name: str) -> Sweep:
    return Sweep("xor", {"lr": [0.001, 0.01]}, epochs=2, name=name, runs_dir=str(tmp_path))


def test_the_python_api_shows_progress_by_default(client, tmp_path, capsys):
    _sweep(tmp_path, "shown").run(client)
    out = capsys.readouterr().out
    assert re.search(r"^Dashboard: http://127\.0\.0\.1:\d+/status$", out, re.M), out
    assert re.search(r"^Training page: http://127\.0\.0\.1:\d+/training$", out, re.M), out
    assert re.search(r"trial 000[01] started on cpu-[01]$", out, re.M), out
    # A running trial's row: its worker's name, epoch n/N and that epoch's metrics.
    assert re.search(r"trial 000[01] cpu-[01] epoch 1/2 val_accuracy=[0-9.]+ train_loss=[0-9.]+", out), out
    final = out[out.index("trial time summed"):]
    assert sorted(_column(final, "lr")) == ["0.001", "0.01"], final
    assert set(_column(final, "worker")) <= {"cpu-0", "cpu-1"}, final


def test_a_rerun_says_it_reuses_the_run_and_progress_false_prints_nothing(client, tmp_path, capsys):
    sweep = _sweep(tmp_path, "quiet")
    sweep.run(client, progress=False)
    assert capsys.readouterr().out == ""
    sweep.run(client)
    assert "Nothing to run: all 2 trials in" in capsys.readouterr().out


def test_a_finished_sweep_rerun_starts_no_cluster(client, tmp_path, capsys, monkeypatch):
    """With every trial finished, a rerun on its own cluster (no client given) has nothing to run: it shows
    the results and writes the report again without starting one. A field free to change between runs
    (a timeout) is recorded as this run's, in sweep.yaml and in the store the spec is read back from."""
    import yaml

    import cluster
    from training.store import RunStore

    sweep = _sweep(tmp_path, "done")
    first = sweep.run(client, progress=False)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started for a sweep with nothing to run")

    monkeypatch.setattr(cluster, "open_client", no_cluster)
    (tmp_path / "done" / "results.csv").unlink()
    again = Sweep("xor", {"lr": [0.001, 0.01]}, epochs=2, name="done", runs_dir=str(tmp_path),
                  trial_timeout=600).run()
    out = capsys.readouterr().out
    assert "Nothing to run: all 2 trials in" in out and "Dashboard:" not in out, out
    # This run's time (none) would say nothing: the sweep's own is shown, over the runs that ran it.
    assert "Sweep 'done': first start to last finish" in out and "wall time" not in out, out
    assert first.ran and not again.ran
    rows = [[(t.number, t.state, t.best) for t in result.trials] for result in (first, again)]
    assert rows[0] == rows[1], rows
    assert again.best_trial == first.best_trial and (tmp_path / "done" / "results.csv").is_file()
    assert again.wait_for_report().joinpath("summary.md").is_file()
    assert yaml.safe_load((tmp_path / "done" / "sweep.yaml").read_text())["trial_timeout"] == 600
    with RunStore(tmp_path / "done" / "store.sqlite", read_only=True) as store:
        assert store.spec()["trial_timeout"] == 600
    assert not sweep.run(client, progress=False).ran  # on a client too (it said True)


def test_the_cli_refuses_a_changed_sweep_before_starting_any_worker(client, tmp_path, monkeypatch):
    """A sweep file changed since its run (same name) is refused before the CLI starts its workers early."""
    from click.testing import CliRunner

    import cluster
    from training.cli.sweep_cmd import sweep_command
    from training.errors import ConfigError

    _sweep(tmp_path, "changed").run(client, progress=False)
    started: list[object] = []
    monkeypatch.setattr(cluster, "start_early", started.append)
    (tmp_path / "changed.yaml").write_text("name: changed\nworkload: xor\nspace:\n  lr: [0.001, 0.01]\n"
                                           "epochs: 3\n")
    out = CliRunner().invoke(sweep_command, [str(tmp_path / "changed.yaml"), "--runs-dir", str(tmp_path)])
    assert isinstance(out.exception, ConfigError) and "changed: epochs" in str(out.exception), out.output
    assert started == []


def test_the_cli_table_at_80_columns_shows_each_lr_and_the_worker_names(client, tmp_path, monkeypatch):
    (tmp_path / "narrow.yaml").write_text("name: narrow\nworkload: xor\nspace:\n  lr: [0.001, 0.01]\n"
                                          "  batch_size: [64]\nepochs: 2\n")
    monkeypatch.setenv("COLUMNS", "80")
    done = run_cli("sweep", str(tmp_path / "narrow.yaml"), "--runs-dir", str(tmp_path),
                   "--address", client.scheduler.address, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    title_ends = done.stdout.index("\n", done.stdout.index("trial time summed"))  # a line of its own, wrapped
    table = done.stdout[title_ends:done.stdout.index("Best trial")]  # by the terminal, not mid-sentence
    assert "…" not in table and all(len(line) <= 80 for line in table.splitlines()), table
    assert sorted(_column(table, "lr")) == ["0.001", "0.01"], table
    assert set(_column(table, "worker")) <= {"cpu-0", "cpu-1"}, table
    assert "tcp://" not in done.stdout
    assert re.search(r"wall time [0-9.]+ s, trial time summed [0-9.]+ s", done.stdout)
    shown = run_cli("results", str(tmp_path / "narrow"), timeout=120)
    assert re.search(r"first start to last finish [0-9.]+ s, trial time summed [0-9.]+ s", shown.stdout), \
        shown.stdout


def _column(table: str, header: str) -> list[str]:
    """The cells under ``header`` in the rows of a printed results table (numbers right-aligned, text left)."""
    lines = table.splitlines()
    head = next(line for line in lines if re.search(r"\btrial\s+state\b", line))
    start = re.search(rf"(?<!\S){re.escape(header)}(?!\S)", head).start()
    rows = [line for line in lines if re.match(r"\s*\d+( \*)?\s+completed", line)]
    return [_cell_at(row, start, start + len(header)) for row in rows]


def _cell_at(line: str, start: int, end: int) -> str:
    """The whitespace-delimited word overlapping columns ``start``..``end`` of ``line``."""
    for match in re.finditer(r"\S+", line):
        if match.start() < end and match.end() > start:
            return match.group()
    return ""


def test_train_ddp_prints_its_urls_and_one_line_per_epoch_by_default(client, tmp_path, capsys):
    from training import train_ddp

    train_ddp(client, "xor", {"batch_size": 64}, epochs=2, workers=2, runs_dir=str(tmp_path), name="shown")
    out = capsys.readouterr().out
    assert "DDP job 'shown': 2 ranks, gloo." in out and re.search(r"^Training page: http.*/training$", out, re.M)
    assert re.search(r"rank 0 \(local 0\) on cpu-[01]$", out, re.M) and "tcp://" not in out, out
    header = next(line.split() for line in out.splitlines() if line.split()[:2] == ["epoch", "train_loss"])
    epochs = [line.split()[0] for line in out.splitlines() if re.match(r"\s+[12]\s+\d", line)]
    assert epochs == ["1", "2"] and "val_accuracy" in header
    train_ddp(client, "xor", {"batch_size": 64}, epochs=1, workers=2, runs_dir=str(tmp_path), name="quiet",
              progress=False)
    assert capsys.readouterr().out == ""
