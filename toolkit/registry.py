"""Name registries with errors that list the valid names and suggest the closest one."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> ValueError:
    """Build a ``ValueError`` naming the bad ``name``, the closest valid one, and all valid."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}")


class Registry:
    """A mapping from names (and aliases) to factories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, fn: Callable[..., Any], aliases: Iterable[str] = ()) -> None:
        """Register ``fn`` under ``name`` and its ``aliases``."""
        self._items[name] = fn
        for a in aliases:
            self._aliases[a] = name

    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` or a ``ValueError`` listing valid names."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise unknown_name_error(self.kind, name, list(self._items) + list(self._aliases))

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._items[self.resolve(name)]

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._items)
