"""The Training page of the Dask dashboard: every sweep and DDP job, live, at ``/training``.

A scheduler plugin (:class:`Board`) folds the training events (workers' starts and epochs, the
coordinators' job, trial and end announcements) into one picture, and the scheduler's own dashboard
server serves it: the page at ``/training``, its data at ``/training/data.json``. Nothing listens
anywhere new: the page is exactly as reachable as the dashboard (loopback by default).

Every dask-train client enables it on the scheduler it uses (:func:`enable_page`). To have it from the
moment a scheduler you start yourself is up, preload this module::

    dask scheduler --preload training.dashboard

or list it in the scheduler's ``distributed.scheduler.http.routes`` config.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any

from distributed import Client, Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.http.utils import RequestHandler, get_handlers

from .events import TOPIC, plain

log = logging.getLogger(__name__)

NAME = "dask-train-board"
_MAX_JOBS = 50  # finished jobs beyond this many are forgotten, oldest first
_MAX_EPOCHS = 2000  # points kept per curve
_FINAL = ("completed", "pruned", "failed", "diverged", "finished")


class Board(SchedulerPlugin):
    """The live state of every training job the scheduler has seen, built from the training events.

    Examples
    --------
    >>> board = Board()
    >>> board.apply({"kind": "job", "job": "demo", "run": "r1", "type": "sweep", "metric": "val_loss",
    ...              "mode": "min", "trials": [{"number": 0, "params": {"lr": 0.1}}]})
    >>> board.apply({"kind": "epoch", "job": "demo", "run": "r1", "trial": 0, "worker": "w",
    ...              "record": {"epoch": 1, "val_loss": 0.5}})
    >>> job = board.snapshot()["jobs"][0]
    >>> job["trials"][0]["state"], job["trials"][0]["curve"], job["best"]
    ('running', [[1, 0.5]], 0)
    """

    name = NAME

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # by run token, oldest first
        self.scheduler: Scheduler | None = None
        self._cache: tuple[int, str] | None = None
        self.version = 0

    def attach(self, scheduler: Scheduler) -> None:
        """Watch ``scheduler``, starting with the training events it already holds."""
        self.scheduler = scheduler
        for _, message in scheduler.get_events(TOPIC):
            self.log_event(TOPIC, message)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic == TOPIC and isinstance(msg, dict) and msg.get("run"):
            self.apply(msg)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """A client that was running jobs left without saying they ended: they are not running any more."""
        for job in self.jobs.values():
            if job["client"] == client and job["state"] == "running":
                job.update(state="client gone", finished=time.time())
                self.version += 1

    def apply(self, msg: dict[str, Any]) -> None:
        """Fold one event into the picture."""
        kind = msg.get("kind")
        job = self.jobs.get(str(msg["run"])) or self._new_job(msg)
        if kind == "job":
            job.update({k: msg[k] for k in ("type", "workload", "metric", "mode", "epochs", "total", "client",
                                              "params") if k in msg})
            job["started"] = msg.get("time", job["started"])
            for row in msg.get("trials", ()):
                self._trial(job, row["number"]).update(row)
        elif kind == "job-end":
            job.update(state=msg.get("state", "finished"), error=msg.get("error"), finished=time.time())
            for trial in job["trials"].values():
                if trial["state"] not in _FINAL:
                    trial["state"] = job["state"]
        elif "trial" in msg:
            self._trial_event(job, msg)
        self.version += 1

    def _trial_event(self, job: dict[str, Any], msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        trial = self._trial(job, int(msg.get("rank", msg["trial"])) if job["type"] == "ddp" else int(msg["trial"]))
        if msg.get("worker"):
            trial["worker"] = msg["worker"]
        if kind == "queued":
            trial.update(params=msg.get("params", trial["params"]), state="queued")
        elif kind in ("start", "first-step"):
            trial["state"] = "running"
        elif kind == "epoch":
            self._epoch(job, trial, msg.get("record") or {})
        elif kind == "end":
            trial.update({k: msg[k] for k in ("state", "best", "error") if k in msg})

    def _epoch(self, job: dict[str, Any], trial: dict[str, Any], record: dict[str, Any]) -> None:
        epoch = record.get("epoch")
        if not isinstance(epoch, int):
            return
        if trial["state"] not in _FINAL:
            trial["state"] = "running"
        if epoch >= (trial["epoch"] or 0):
            trial.update(epoch=epoch, metrics=record)
        value = record.get(job["metric"])
        if isinstance(value, int | float):
            curve = [p for p in trial["curve"] if p[0] != epoch] + [[epoch, value]]
            trial["curve"] = sorted(curve)[-_MAX_EPOCHS:]

    def _new_job(self, msg: dict[str, Any]) -> dict[str, Any]:
        ddp = msg.get("type") == "ddp" or msg.get("trial") == -1
        job: dict[str, Any] = {
            "name": str(msg.get("job", "?")), "run": str(msg["run"]), "type": "ddp" if ddp else "sweep",
            "workload": "", "metric": "val_loss", "mode": "min", "epochs": None, "total": None, "client": None,
            "params": {}, "state": "running", "error": None, "started": time.time(), "finished": None,
            "trials": {},
        }
        self.jobs[job["run"]] = job
        finished = [run for run, j in self.jobs.items() if j["state"] != "running"]
        for run in finished[: max(0, len(self.jobs) - _MAX_JOBS)]:
            del self.jobs[run]
        return job

    @staticmethod
    def _trial(job: dict[str, Any], number: int) -> dict[str, Any]:
        if number not in job["trials"]:
            job["trials"][number] = {"number": number, "state": "queued", "worker": None, "params": {},
                                     "epoch": None, "metrics": {}, "best": None, "error": None, "curve": []}
        return job["trials"][number]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows: jobs newest first, each with its trials and the best one."""
        names = {}
        if self.scheduler is not None:
            names = {address: str(ws.name) for address, ws in self.scheduler.workers.items()}
        jobs = [_view(job, names) for job in reversed(self.jobs.values())]
        return {"jobs": jobs, "version": self.version}

    def snapshot_json(self) -> str:
        """:meth:`snapshot` as JSON, reused until something changes (the page asks every second)."""
        if self._cache is None or self._cache[0] != self.version:
            text = json.dumps(plain(self.snapshot()), allow_nan=False)
            self._cache = (self.version, text.replace("<", "\\u003c"))  # never markup, even if misread as HTML
        return self._cache[1]


def _view(job: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    trials = [dict(t, worker_name=names.get(t["worker"] or "", "")) for _, t in sorted(job["trials"].items())]
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    return {**{k: v for k, v in job.items() if k not in ("trials", "client")}, "trials": trials,
            "counts": counts, "best": _best(trials, job["mode"])}


def _best(trials: list[dict[str, Any]], mode: str) -> int | None:
    """The trial whose curve reached the best value of the job's metric (the lowest number among equals)."""
    sign = 1 if mode == "min" else -1
    scored = [(min(sign * v for _, v in t["curve"]), t["number"]) for t in trials if t["curve"]]
    return min(scored)[1] if scored else None


def enable_page(client: Client) -> str | None:
    """Make sure the scheduler serves the Training page; its URL, or None (and a warning) where it cannot.

    Examples
    --------
    >>> enable_page(client)  # doctest: +SKIP
    'http://127.0.0.1:8787/training'
    """
    from cluster import dashboard_url

    dashboard = dashboard_url(client)
    try:
        client.run_on_scheduler(_install)
    except Exception as exc:  # e.g. dask-train is not installed where the scheduler runs
        log.warning("The dashboard's Training page is not available on this scheduler (%s: %s). Install "
                    "dask-train next to the scheduler to get it.", type(exc).__name__, exc)
        return None
    return page_url(dashboard) if dashboard else None


def page_url(dashboard: str) -> str:
    """The Training page's URL from the dashboard's.

    Examples
    --------
    >>> page_url("http://127.0.0.1:8787/status")
    'http://127.0.0.1:8787/training'
    """
    base = dashboard[: -len("/status")] if dashboard.endswith("/status") else dashboard.rstrip("/")
    return f"{base}/training"


def publish(client: Client, job: str, run: str, message: dict[str, Any]) -> None:
    """Send a coordinator's announcement (job, queued trial, end) about ``job``'s ``run`` on the training
    topic. The page is a view: a failure to send is logged, never raised into the training."""
    try:
        client.log_event(TOPIC, plain({**message, "job": job, "run": run, "time": time.time()}))
    except Exception as exc:
        log.debug("Could not send %s to the Training page: %s", message.get("kind"), exc)


def dask_setup(scheduler: Scheduler) -> None:
    """``dask scheduler --preload training.dashboard``: the Training page from the scheduler's start."""
    _install(scheduler)


def _install(dask_scheduler: Scheduler) -> None:
    """Runs on the scheduler: a board (kept if there is one already) and the page's routes."""
    _board(dask_scheduler)
    _serve(dask_scheduler)


def _serve(scheduler: Scheduler) -> None:
    """Add the page's routes to the scheduler's dashboard server, once."""
    app = getattr(scheduler, "http_application", None)
    if app is None or getattr(app, "_dask_train_page", False):
        return
    app._dask_train_page = True
    app.add_handlers(r".*$", get_handlers(scheduler, [__name__]))


def _board(scheduler: Scheduler) -> Board:
    """The scheduler's board, created (and caught up with the events so far) on first use."""
    board = scheduler.plugins.get(NAME)
    if not isinstance(board, Board):
        board = Board()
        board.attach(scheduler)
        scheduler.add_plugin(board, name=NAME)
    return board


class _Handler(RequestHandler):
    def set_default_headers(self) -> None:
        # Everything the page shows is data, set as text by page.js; the policy forbids anything else.
        self.set_header("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'self'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")


class _Data(_Handler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(_board(self.server).snapshot_json())


def _static(filename: str, content_type: str) -> type[_Handler]:
    text = resources.files(__package__).joinpath("static", filename).read_bytes()

    class _File(_Handler):
        def get(self) -> None:
            _board(self.server)  # the page is open: make sure there is a board behind it
            self.set_header("Content-Type", content_type)
            self.write(text)

    return _File


class _Slash(_Handler):
    def get(self) -> None:
        self.redirect("../training")  # relative: keeps any dashboard prefix


routes: list[tuple[str, type, dict]] = [
    ("training/", _Slash, {}),
    ("training", _static("training.html", "text/html; charset=utf-8"), {}),
    ("training/data.json", _Data, {}),
    ("training/page.js", _static("page.js", "text/javascript; charset=utf-8"), {}),
    ("training/page.css", _static("page.css", "text/css; charset=utf-8"), {}),
]
