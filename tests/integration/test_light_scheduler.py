"""The scheduler's side needs no torch: `dask scheduler --preload training.dashboard` in an environment where
importing torch (or pandas, or matplotlib) fails still serves the Training page, and `import training`
imports nothing heavy until a name is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from tests.helpers import poll_for

pytestmark = pytest.mark.timeout(120)

BLOCKER = textwrap.dedent("""
    # Loaded at interpreter start (sitecustomize): these packages "are not installed" in this process.
    import sys
    BLOCKED = {"torch", "pandas", "matplotlib"}

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Block())
""")


def _blocked_env(tmp_path) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}


def test_the_blocker_really_blocks_torch(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=_blocked_env(tmp_path),
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "torch is blocked in this test" in probe.stderr


def test_scheduler_preloading_the_page_serves_it_without_torch(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
         "--preload", "training.dashboard"],
        env=_blocked_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = poll_for(lambda: scheduler_file.is_file() and json.loads(scheduler_file.read_text() or "{}"),
                        60, what="the scheduler file")
        page = f"http://127.0.0.1:{info['services']['dashboard']}/training"
        with urllib.request.urlopen(page, timeout=10) as response:
            assert response.status == 200 and b"<title>Training" in response.read()
        with urllib.request.urlopen(page + "/data.json", timeout=10) as response:
            assert json.loads(response.read()) == {"jobs": [], "version": 0}
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "blocked" not in output, output  # nothing on the way tried to import torch, pandas or matplotlib


def test_importing_the_package_imports_no_module_of_it_up_front():
    code = ("import sys, training; before = set(sys.modules); training.Sweep; "
            "print(sorted(m for m in before if m.startswith('training.'))); "
            "print('torch' in before, 'training.sweep' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False True"], out.stdout
