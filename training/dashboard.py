"""The Training page of the Dask dashboard: every sweep and DDP job, live, at ``/training``.

The scheduler's own dashboard server serves it: the page at ``/training``, its data (the picture
:class:`training.board.Board` keeps) at ``/training/data.json``. Nothing listens anywhere new: the page is
exactly as reachable as the dashboard (loopback by default). Runs inside the scheduler: no torch, no pandas.

Every dask-train client enables it on the scheduler it uses (:func:`enable_page`). To have it from the
moment a scheduler you start yourself is up, preload this module::

    dask scheduler --preload training.dashboard

or list it in the scheduler's ``distributed.scheduler.http.routes`` config.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from distributed.http.utils import RequestHandler, get_handlers

from .board import NAME, Board

log = logging.getLogger(__name__)


def enable_page(client: Any) -> str | None:
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


def dask_setup(scheduler: Any) -> None:
    """``dask scheduler --preload training.dashboard``: the Training page from the scheduler's start."""
    _install(scheduler)


def _install(dask_scheduler: Any) -> None:
    """Runs on the scheduler: a board (kept if there is one already), the page's routes, and the reaper
    that frees the slots of clients that leave mid-trial."""
    from . import reaper

    _board(dask_scheduler)
    _serve(dask_scheduler)
    reaper.install(dask_scheduler)


def _serve(scheduler: Any) -> None:
    """Add the page's routes to the scheduler's dashboard server, once."""
    app = getattr(scheduler, "http_application", None)
    if app is None or getattr(app, "_dask_train_page", False):
        return
    app._dask_train_page = True
    app.add_handlers(r".*$", get_handlers(scheduler, [__name__]))


def _board(scheduler: Any) -> Board:
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
