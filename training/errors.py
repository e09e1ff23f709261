"""Named exceptions raised by dask-train. Every message says what is wrong and what to do."""

from __future__ import annotations


class DaskTrainError(Exception):
    """Base class of every error dask-train raises on purpose."""


class ConfigError(DaskTrainError, ValueError):
    """Bad input from the user: a workload, hyperparameter, file or option that cannot be used."""


class DataError(ConfigError):
    """A data file is missing, empty or has nothing usable in it."""


class RankRefused(ConfigError):
    """A DDP rank refused its input (its data, its checkpoint, its device): raised on the rank's worker, reported
    by the client in one line, and never restarted (a restart would meet the same input)."""


class ModelFileError(ConfigError):
    """A path that should be a dask-train model directory is not one, or is damaged."""


class TrainingDiverged(DaskTrainError):
    """The training loss became NaN or infinite."""

    def __init__(self, message: str, *, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step

    def __reduce__(self):  # keep epoch/step when the error travels back from a Dask worker
        return (_rebuild_diverged, (str(self), self.epoch, self.step))


class DDPJobFailed(DaskTrainError):
    """A DDP job ended early: a rank raised, or a rank's worker was lost."""

    def __init__(self, message: str, *, rank: int, worker: str, summary: str = "", refused: bool = False) -> None:
        super().__init__(message)
        self.rank = rank
        self.worker = worker
        self.summary = summary or message  # the culprit and its cause, without what the other ranks said
        self.refused = refused  # the culprit refused its input (:class:`RankRefused`): no restart helps


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep or a DDP job: its running work was cancelled and recorded, its workers freed;
    rerunning the same command resumes it. ``summary`` says what was kept, in one sentence."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


def _rebuild_diverged(message: str, epoch: int, step: int) -> TrainingDiverged:
    return TrainingDiverged(message, epoch=epoch, step=step)
