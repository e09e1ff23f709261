"""summary.md escapes what it did not write: names, parameters and worker names from a run directory are
made inert (no table breaks, no HTML, no links or code spans), whatever the store holds."""

from __future__ import annotations

from pathlib import Path

from training.protocol import TrialRecord, TrialState
from training.report import RunSummary, summary_markdown

HOSTILE = "a|b <img src=x onerror=alert(1)> [link](http://evil) `code` *bold*\nnext line"


def test_summary_markdown_makes_foreign_text_inert():
    spec = {"name": HOSTILE, "workload": HOSTILE, "search": "grid", "epochs": 2, "metric": "val_loss",
            "mode": "min", "space": {"lr": [0.1, 0.2]}}
    trials = [TrialRecord(number=n, params={"lr": HOSTILE if n else 0.1}, state=TrialState.COMPLETED,
                          worker=HOSTILE, epochs=2, best=0.5 - n / 10, best_epoch=2, seconds=1.0,
                          model_dir=HOSTILE) for n in (0, 1)]
    text = summary_markdown(RunSummary(Path("run"), spec, trials, {}))
    assert "<" not in text  # no HTML
    assert "](" not in text.replace("\\]", "")  # no links
    assert " `code` " not in text and "\\`code\\`" in text  # no code spans of theirs
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header_cells = table[0].count(" | ") + 1
    for row in table:  # an unescaped "|" inside a cell would add a column
        assert row.replace("\\|", "").count("|") == header_cells + 1, row
    assert "next line" in text and "\nnext line" not in text  # kept to one line
    assert "\\`code\\`" in text and "\\[link\\]" in text


def test_the_plots_of_values_with_control_characters_draw_them_escaped_and_warn_of_nothing(tmp_path, recwarn):
    """A categorical value holding ESC and BEL was drawn as is: matplotlib warned "Glyph 27 (\\x1b) missing"
    with the raw bytes, which reached the terminal. The tick labels and the legend show them escaped."""
    from training.report import write_plots

    ansi = "\x1b[31mred\x07"
    spec = {"name": "ctl", "workload": "xor", "search": "grid", "epochs": 2, "metric": "val_loss", "mode": "min",
            "space": {"tag": ["plain", ansi]}}
    trials = [TrialRecord(number=n, params={"tag": tag}, state=TrialState.COMPLETED, worker="cpu-0", epochs=2,
                          best=0.5 - n / 10, best_epoch=2, seconds=1.0) for n, tag in enumerate(["plain", ansi])]
    histories = {n: [{"epoch": e, "val_loss": 0.6 - n / 10 - e / 100} for e in (1, 2)] for n in (0, 1)}
    run_dir = tmp_path / "ctl"
    (run_dir / "report").mkdir(parents=True)
    write_plots(RunSummary(run_dir, spec, trials, histories))
    assert (run_dir / "report" / "params.png").is_file() and (run_dir / "report" / "curves.png").is_file()
    said = [str(w.message) for w in recwarn]
    assert not [m for m in said if "\x1b" in m or "\x07" in m or "Glyph" in m], said
