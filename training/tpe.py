"""Model-based search with Optuna's TPE through its ask/tell interface.

The coordinator asks for a trial when a slot frees, runs it as a Dask task, and tells Optuna the result.
The study lives in the run directory (``study.journal``, Optuna's journal file storage), so rerunning the
sweep continues the same study: trials it had started are run again with the same parameters, and it
never asks for more than ``num_trials`` in total.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .limits import clip, short
from .params import Param, resolve
from .space import Domain, space_to_json
from .workloads import get_workload

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"
#: What to do with a run whose study cannot go on.
_AFRESH = "pass --new (new=True) to set the run aside and start afresh."


class TpeSearch:
    """Asks Optuna for hyperparameters and tells it outcomes; trial numbers are Optuna's own."""

    def __init__(self, name: str, workload: str, space: Mapping[str, Any], fixed: Mapping[str, Any],
                 num_trials: int, mode: str, seed: int, run_dir: Path) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.work = get_workload(workload)
        self.space, self.fixed, self.num_trials = dict(space), dict(fixed), num_trials
        path = run_dir / STUDY_FILE
        check_study_file(path, num_trials, len(json.dumps(space_to_json(dict(space)), default=str)))
        # A few random trials first, then TPE; constant_liar keeps parallel asks from repeating each other.
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, num_trials // 4),
                                             constant_liar=True)
        try:
            storage = JournalStorage(JournalFileBackend(str(path)))  # replays the journal
            self.study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                             load_if_exists=True,
                                             direction="minimize" if mode == "min" else "maximize")
            self.study.get_trials(deepcopy=False)  # the whole journal replayed now, not at the first ask
        except Exception as exc:  # a journal Optuna cannot replay (edited, cut short): it is data, said so
            raise ConfigError(f"{short(str(path))} is not a study journal Optuna can read ({type(exc).__name__}: "
                              f"{clip(str(exc), 200)}): {_AFRESH}") from None

    def unfinished(self) -> list[tuple[int, dict[str, Any]]]:
        """Trials the study started but never heard back about (a killed client's), with full params."""
        import optuna

        return [(t.number, self._full(t.params)) for t in self.study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.RUNNING]

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """A new trial's number and full parameters, or None once ``num_trials`` exist."""
        if len(self.study.get_trials(deepcopy=False)) >= self.num_trials:
            return None
        trial = self.study.ask()
        by_name = {p.name: p for p in self.work.params}
        suggested = {name: _suggest(trial, by_name[name], domain) for name, domain in self.space.items()
                     if isinstance(domain, Domain)}
        return trial.number, self._full(suggested)

    def tell(self, number: int, value: float | None) -> None:
        """Report a finished trial's best metric (None: it failed or diverged)."""
        import optuna

        if value is None:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, value)

    def _full(self, suggested: Mapping[str, Any]) -> dict[str, Any]:
        fixed_in_space = {k: v for k, v in self.space.items() if not isinstance(v, Domain)}
        return resolve(self.work.params, {**self.fixed, **fixed_in_space, **suggested}, owner=self.work.name)


def check_study_file(path: Path, num_trials: int, space_bytes: int) -> None:
    """A TPE run's study journal, if there is one, as data: a regular file in the run directory (not a link:
    Optuna appends to it), no larger than a study of ``num_trials`` trials writes (Optuna replays all of it):
    :data:`STUDY_BYTES_PER_TRIAL` a trial, and twice its space's size as JSON (``space_bytes``: Optuna writes
    each parameter's whole distribution, a long choice list too, with every trial)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"{short(str(path))} is not a regular file (a link, device or pipe): {_AFRESH}")
    most = (STUDY_BYTES_PER_TRIAL + 2 * space_bytes) * (num_trials + 16)
    if status.st_size > most:
        raise ConfigError(f"{short(str(path))} holds {status.st_size / 2**20:,.1f} MiB, more than a study of "
                          f"{num_trials:,} trials writes (at most {most / 2**20:,.1f} MiB): {_AFRESH}")


def check_study_kept(run_dir: Path, recorded: int) -> None:
    """Refuse to go on with a TPE run whose store records ``recorded`` trials but whose study journal is gone:
    a new study would ask for all of them again (and retrain the finished ones)."""
    if recorded and not (run_dir / STUDY_FILE).exists():
        trials = f"{recorded:,} trial{'s' if recorded != 1 else ''}"
        raise ConfigError(f"{short(str(run_dir))} records {trials} of this TPE sweep, but its study journal "
                          f"{STUDY_FILE} is missing: the search cannot go on without it: {_AFRESH}")


#: Bytes of study journal a trial may account for: Optuna writes well under 16 KiB for a trial of many
#: hyperparameters (its creation, each parameter, its values and state).
STUDY_BYTES_PER_TRIAL = 64 * 2**10


def _suggest(trial: Any, param: Param, domain: Domain) -> Any:
    if domain.discrete:
        return trial.suggest_categorical(param.name, list(domain.values))
    if param.kind is int or domain.kind == "randint":
        return trial.suggest_int(param.name, int(domain.low), int(domain.high), log=domain.kind == "loguniform")
    return trial.suggest_float(param.name, domain.low, domain.high, log=domain.kind == "loguniform")
