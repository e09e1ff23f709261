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
    assert "](" not in text.replace("\\]", "") and "`" not in text.replace("\\`", "")  # no links, no code
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header_cells = table[0].count(" | ") + 1
    for row in table:  # an unescaped "|" inside a cell would add a column
        assert row.replace("\\|", "").count("|") == header_cells + 1, row
    assert "next line" in text and "\nnext line" not in text  # kept to one line
    assert "\\`code\\`" in text and "\\[link\\]" in text
