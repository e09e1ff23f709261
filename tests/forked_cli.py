"""Runs the `dask-train` command line many times fast: each run is a fresh process forked from one that has
already imported the CLI and torch, so a table of a hundred bad inputs costs the commands, not a hundred
interpreter and torch imports. Started as ``python -m tests.forked_cli``; one JSON request a line on stdin
({"args", "cwd", "env", "out"}), one JSON answer a line on stdout ({"code", "cpu", "peak_kb"}).

The forked child is a new process: its own exit code, output (into ``out``), files and children; only the
imported modules are shared, read-only. Nothing torch computes runs before a fork (its thread pools would
not survive it)."""

from __future__ import annotations

import json
import os
import sys


def _child(request: dict) -> None:
    """In the forked process: run the CLI as the console script would, then exit with its code."""
    os.chdir(request["cwd"])
    sys.path.insert(0, request["cwd"])  # as PYTHONPATH would: importable, so "never imported" means something
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.argv = ["dask-train", *request["args"]]
    code = 1
    try:
        from training.cli import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash shows as one: its traceback lands in the output
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import torch  # noqa: F401  (imported once, here)

    import training.cli
    import training.workloads  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status, usage = os.wait4(pid, 0)
        answer = {"code": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime,
                  "peak_kb": usage.ru_maxrss}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
