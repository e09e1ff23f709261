"""Reading YAML that dask-train did not write (sweep files): bounded and plain.

The file's size is checked before it is read; aliases (the "billion laughs"), duplicate keys, deep nesting,
binary content and every tag beyond YAML's plain types are refused. Nothing in the file is ever imported,
evaluated or unpickled (PyYAML's SafeLoader builds only plain values).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .limits import MAX_SWEEP_FILE_BYTES, MAX_YAML_DEPTH, short


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, and with a bounded depth."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML aliases (*name) are not allowed (line {mark.line + 1}); write the value out.")
        event = self.peek_event()
        if getattr(event, "tag", None) not in (None, "!"):  # written in the file: !!float, !!set, !!binary, !x
            raise ConfigError(f"YAML tags ({short(event.tag, 40)}, line {event.start_mark.line + 1}) are not "
                              "allowed; write the plain value.")
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise ConfigError(f"nested more than {MAX_YAML_DEPTH} levels deep; a sweep file needs two.")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                raise ConfigError(f"YAML merge keys (<<, line {line}) are not allowed; write the keys out.")
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ConfigError(f"mapping key {short(key)} (line {key_node.start_mark.line + 1}) is not a "
                                  "plain value.")
            if key in seen:
                raise ConfigError(f"key {short(key)} appears twice (line {key_node.start_mark.line + 1}); give "
                                  "each key once.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "Sweep file", limit: int = MAX_SWEEP_FILE_BYTES) -> Any:
    """The plain content of a small YAML file, or a ConfigError naming the file and what is wrong.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.yaml"
    >>> _ = f.write_text("a: &x [1]\\nb: *x\\n")
    >>> read_yaml(f)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    training.errors.ConfigError: Sweep file ...: YAML aliases (*name) are not allowed (line 2)...
    """
    path = Path(path)
    name = short(str(path))
    if not path.is_file():
        raise ConfigError(f"{what} {name} does not exist or is not a file.")
    size = path.stat().st_size
    if size > limit:
        raise ConfigError(f"{what} {name} is {size:,} bytes, more than the {limit:,} a {what.lower()} may be; "
                          "is it the right file?")
    data = path.read_bytes()[:limit + 1]
    if b"\0" in data:
        raise ConfigError(f"{what} {name} is a binary file, not YAML text.")
    try:
        text = data.decode("utf-8")
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: plain values only
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {name} is not UTF-8 text (is it a binary file?).") from None
    except ConfigError as exc:
        raise ConfigError(f"{what} {name}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {name} is not valid YAML: {short(' '.join(str(exc).split()), 200)}") from None
    except RecursionError:
        raise ConfigError(f"{what} {name} is nested too deeply.") from None
