"""While a sweep or DDP job cleans up after Ctrl-C, a second Ctrl-C ends the process at once (exit 130)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import cli_env

_PROGRAM = """
import os, signal, time
from training.slots import second_interrupt_exits
with second_interrupt_exits():   # the cleanup after a first Ctrl-C
    os.kill(os.getpid(), signal.SIGINT)   # the second
    time.sleep(60)   # a cleanup that would take long
print("not reached")
"""


def test_a_second_ctrl_c_during_cleanup_exits_at_once():
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=50,
                          env=cli_env())
    assert done.returncode == 130, done.stdout + done.stderr
    assert "not reached" not in done.stdout and "Traceback" not in done.stderr


def test_after_cleanup_ctrl_c_is_a_keyboard_interrupt_again():
    program = ("import os, signal, time\n"
               "from training.slots import second_interrupt_exits\n"
               "with second_interrupt_exits():\n    pass\n"
               "try:\n    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
               "except KeyboardInterrupt:\n    print('interrupted as usual')\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=50,
                          env=cli_env())
    assert done.returncode == 0 and "interrupted as usual" in done.stdout, done.stdout + done.stderr
