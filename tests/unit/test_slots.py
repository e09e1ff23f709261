"""While a sweep or DDP job cleans up after Ctrl-C (or SIGTERM), a second Ctrl-C ends the process at once
(exit 130), and a second SIGTERM too (143), saying what it was given (what is kept, how to resume)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.helpers import cli_env

_PROGRAM = """
import os, signal, sys, time
from training.slots import second_interrupt_exits
with second_interrupt_exits("Interrupted again: runs/x keeps \x1b[2J"):   # the cleanup after a first Ctrl-C
    os.kill(os.getpid(), int(sys.argv[1]))   # the second
    time.sleep(60)   # a cleanup that would take long
print("not reached")
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_second_ctrl_c_during_cleanup_exits_at_once(sig, code):
    done = _python(_PROGRAM, str(int(sig)))
    assert done.returncode == code, done.stdout + done.stderr
    assert "not reached" not in done.stdout and "Traceback" not in done.stderr
    assert done.stderr == "Interrupted again: runs/x keeps \x1b[2J\n"  # as given: callers make it printable


def test_after_cleanup_ctrl_c_is_a_keyboard_interrupt_again():
    program = ("import os, signal, time\n"
               "from training.slots import second_interrupt_exits\n"
               "with second_interrupt_exits():\n    pass\n"
               "try:\n    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
               "except KeyboardInterrupt:\n    print('interrupted as usual')\n")
    done = _python(program)
    assert done.returncode == 0 and "interrupted as usual" in done.stdout, done.stdout + done.stderr


def test_after_cleanup_sigterm_has_the_handler_it_had():
    program = ("import signal\n"
               "from training.slots import second_interrupt_exits\n"
               "def mine(*_): pass\n"
               "signal.signal(signal.SIGTERM, mine)\n"
               "with second_interrupt_exits():\n    inside = signal.getsignal(signal.SIGTERM)\n"
               "print(inside is not mine, signal.getsignal(signal.SIGTERM) is mine)\n")
    done = _python(program)
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


def _python(program: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``program`` in a fresh interpreter (signals reach it alone), bounded."""
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=50,
                          env=cli_env())
