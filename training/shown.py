"""Text shown as it is: what a run directory, a worker, a scheduler or a model holds is data, so it is never read
as rich markup or emoji codes, and its control characters are shown as ``\\xNN``, never sent to the terminal
(an escape sequence in a worker's name or a trial's error would recolour or clear the screen)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from .limits import printable


class SafeConsole(Console):
    """A rich Console printing text as it is (see the module); tables built with :func:`cell` are too."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


def plain_console(**kwargs: Any) -> SafeConsole:
    """A :class:`SafeConsole` that reads no markup, emoji or highlighting into what it prints."""
    return SafeConsole(highlight=False, markup=False, emoji=False, **kwargs)


def cell(value: Any) -> Text:
    """A table cell (or header, or title) showing ``value`` as it is."""
    return Text(printable(str(value)))
