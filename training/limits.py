"""The bounds dask-train puts on input it did not write, in one place, and how messages show big values.

Every limit is checked before anything is built or allocated. ``DASK_TRAIN_MAX_TRIALS`` (read in the
client's environment) raises the one limit a real sweep may need to go beyond.
"""

from __future__ import annotations

import os
import re

from .errors import ConfigError

#: A sweep file larger than this is refused before it is read (sweep files are a few hundred bytes).
MAX_SWEEP_FILE_BYTES = 64 * 1024
#: Nesting deeper than this in a sweep file is refused (a sweep file is two levels deep).
MAX_YAML_DEPTH = 16
#: The default cap on a sweep's trials (grid combinations or num_trials); DASK_TRAIN_MAX_TRIALS overrides.
DEFAULT_MAX_TRIALS = 10_000
#: The most DASK_TRAIN_MAX_TRIALS may allow: a million trials' rows and parameters fit a client's memory (a grid of
#: 10**12 built under a raised limit took 6 GB and ended in a MemoryError).
MOST_TRIALS = 1_000_000
#: Values one grid or choice list may hold (a grid's combinations are also capped by the trial limit). Fixed,
#: not the trial limit: a spec read back (results, a detached sweep) must not depend on the reader's environment.
MAX_DOMAIN_VALUES = 100_000
#: A sweep's spec written out (the JSON its run store records), in bytes. A sweep made in Python may list up to
#: MAX_DOMAIN_VALUES values a hyperparameter (two lists of 100,000 floats take 4 MB): a larger spec is refused
#: when the sweep is made, and when a run's spec is read back (`dask-train results`, the report).
MAX_SPEC_BYTES = 16 * 2**20
#: Epochs per trial, DDP job or `train` run.
MAX_EPOCHS = 100_000
#: Automatic restarts of one DDP job (``--max-restarts``).
MAX_RESTARTS = 100
#: A data file the built-in names and charlm workloads read whole into memory (a text or JSON file).
MAX_TEXT_DATA = 64 * 2**20
#: `dask-train generate -n`: names, or characters of text.
MAX_GENERATE = 100_000
#: A trial that sends no epoch for this long is stuck (a deadlock, an endless loop): stopped as timed_out.
STALL_TIMEOUT = 3600.0
#: Characters of a value shown in an error message.
SHOWN_CHARS = 80


def short(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters so a message never renders a huge value.

    Examples
    --------
    >>> short("x" * 1000, 12)
    "'xxxxxxx...' (1002 characters)"
    >>> short(0.5)
    '0.5'
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    quote = text[0] if text[0] in "'\"" else ""
    return f"{text[:limit - 4]}...{quote} ({len(text)} characters)"


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` as is, cut to ``limit`` characters with "..." when longer.

    Examples
    --------
    >>> clip("lr, batch_size", 8)
    'lr, b...'
    """
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: The most characters of a trial's error message and of its traceback kept (the store, results, the Training
#: page): an exception whose message holds a 5 MB value made a 36 MB store and a 17 MB page poll.
MAX_ERROR_CHARS, MAX_TRACEBACK_CHARS = 2000, 20000


def clip_middle(text: str, limit: int) -> str:
    """``text`` as is, or its start and end with the middle cut out and counted (a traceback's last lines say
    where it failed).

    Examples
    --------
    >>> clip_middle("a" * 40 + "b" * 40, 50)
    'aaaaaaaaaa [... 60 characters cut ...] bbbbbbbbbb'
    """
    if len(text) <= limit:
        return text
    marker = f" [... {len(text):,} characters cut ...] "  # at least as long as the one shown
    keep = max(0, (limit - len(marker)) // 2)
    return f"{text[:keep]} [... {len(text) - 2 * keep:,} characters cut ...] {text[len(text) - keep:]}"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, at most ``limit`` characters, control characters shown escaped (what a scheduler,
    a run or a user's hook said: never sent to the terminal raw).

    Examples
    --------
    >>> one_line("a\\n  b")
    'a b'
    """
    return clip(printable(" ".join(text.split())), limit)


def printable(text: str) -> str:
    r"""``text`` with its control characters (all but newline and tab) written as ``\xNN``: what a run
    directory, a worker or a model holds is shown, never sent to the terminal as an escape sequence.

    Examples
    --------
    >>> printable("cpu-0\x1b[2J")
    'cpu-0\\x1b[2J'
    """
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def check_path(name: str, value: object, kind: str = "folder") -> str:
    """``value`` (a str or a path-like object such as a pathlib.Path) as text, else a ConfigError naming
    ``name`` (a path given to the Python API as another kind failed deep inside, or later). ``kind``: what the
    path names, as the refusal asks for it ("folder" or "file")."""
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        path = path if isinstance(path, str) else os.fsdecode(path)
        if not path.strip():  # it would be the current folder, unasked
            hint = " ('.' for the current folder)" if kind == "folder" else ""
            raise ConfigError(f"{name}={short(path)} is empty: give a {kind} path{hint}.")
        if "\0" in path:  # no system call takes it ("embedded null byte", naming nothing)
            raise ConfigError(f"{name}={short(path)} holds a NUL character: give a {kind} path.")
        return path
    raise ConfigError(f"{name}={short(value)}: give a {kind} path (a str or a pathlib.Path).")


def max_trials() -> int:
    """The most trials one sweep may have: ``DASK_TRAIN_MAX_TRIALS`` if set, else 10,000.

    Examples
    --------
    >>> max_trials() >= 1
    True
    """
    raw = os.environ.get("DASK_TRAIN_MAX_TRIALS")
    if raw is None:
        return DEFAULT_MAX_TRIALS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MOST_TRIALS:
        raise ConfigError(f"DASK_TRAIN_MAX_TRIALS={short(raw)}: expected a whole number from 1 to {MOST_TRIALS:,} "
                          "(a sweep's trials are held in its store and, for a grid, listed in memory).")
    return value


def check_trial_count(count: int, what: str) -> None:
    """Refuse a sweep of more than :func:`max_trials` trials, before any trial is built."""
    limit = max_trials()
    if count > limit:
        raise ConfigError(f"{what} makes {count:,} trials, more than the limit of {limit:,}. Make the space "
                          "smaller, or raise the limit with DASK_TRAIN_MAX_TRIALS=N if you mean it.")


def check_count(name: str, value: object, high: int, low: int = 1) -> int:
    """``value`` as a whole number in ``[low, high]``, or a ConfigError naming it (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}={short(value)}: expected a whole number from {low:,} to {high:,}.")
    return value

#: Training precisions (see training.precision); here so the CLI offers them without importing torch.
PRECISIONS = ("fp32", "bf16", "fp16")


def safe_reason(exc: BaseException) -> str:
    """Why torch could not load a file, without the advice its message may end with (to load it again with
    ``weights_only=False``, which would run the file's pickled code): the first sentence, cut short.

    Examples
    --------
    >>> safe_reason(RuntimeError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
    ...                          "`False` will likely succeed, but it can result in arbitrary code execution."))
    'Weights only load failed (the file is not a checkpoint that loads without running code)'
    """
    text = str(exc)
    if "weights_only" in text:
        return f"{text.split('.', 1)[0]} (the file is not a checkpoint that loads without running code)"
    return clip(" ".join(text.split()), 200)
