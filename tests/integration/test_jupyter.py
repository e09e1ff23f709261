"""In Jupyter, a sweep run from a notebook cell (no client, no main guard: the embedded cluster) shows its
progress and final table as cell output, with no error and no warning, in a real kernel (nbclient)."""

from __future__ import annotations

import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.timeout(300)

_SWEEP = """
from training import Sweep
result = Sweep("xor", {{"lr": [0.1, 0.3]}}, epochs=3, name="nb", runs_dir={runs!r}).run()
"""


def _texts(cell) -> list[str]:
    """Everything a cell showed: streams, and the plain text and HTML of displays and results."""
    out = []
    for output in cell.outputs:
        if output.output_type == "stream":
            out.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            out += [str(output.data.get(kind, "")) for kind in ("text/plain", "text/html")]
        elif output.output_type == "error":
            out.append("ERROR " + output.ename + ": " + output.evalue)
    return out


def test_a_sweep_in_a_notebook_shows_progress_and_its_table(tmp_path):
    kernels = tmp_path / "kernels" / "this-python"
    kernels.mkdir(parents=True)  # a kernel of this very interpreter, wherever its environment is
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "this python", "language": "python"}))
    os.environ["JUPYTER_PATH"] = str(tmp_path)
    try:
        notebook = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell(_SWEEP.format(runs=str(tmp_path / "runs"))),
            nbformat.v4.new_code_cell("print(sorted(result.table['state']), result.best_trial is not None)")])
        nbclient.NotebookClient(notebook, kernel_name="this-python", timeout=240,
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["JUPYTER_PATH"]
    shown = "\n".join(_texts(notebook.cells[0]))
    print(shown)
    assert "ERROR" not in shown and "Traceback" not in shown and "Warning" not in shown, shown
    assert "Sweep 'nb': 2 trials of xor" in shown and "Training page" in shown
    assert "trial 0000 completed" in shown and "trial 0001 completed" in shown
    assert "wall time" in shown  # the final table's title
    assert "".join(_texts(notebook.cells[1])).strip() == "['completed', 'completed'] True"
