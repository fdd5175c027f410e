"""``key=value`` command-line arguments: typed parsing with "did you mean" errors.

Shared by ``toolkit sample`` / ``toolkit eval`` / ``toolkit data collect``. A spec maps each
valid key to a type (``int``, ``float``, ``str``) or the string ``"bool"``
(``1/true/yes/on`` and ``0/false/no/off``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["did_you_mean", "parse_bool", "parse_key_values"]


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest valid name, or ``""``."""
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def parse_bool(val: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False (ValueError otherwise)."""
    low = val.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(val)


def parse_key_values(args: Sequence[str], spec: dict[str, Any], cmd: str, *,
                     lists: Iterable[str] = (), hidden: Iterable[str] = ()) -> dict[str, Any]:
    """Typed ``{key: value}`` from ``key=value`` strings.

    Args:
        args: the strings. spec: valid keys and their types. cmd: the command, for messages.
        lists: keys that may repeat (values collected in a list; ``[a, b]`` is YAML-parsed).
        hidden: valid keys left out of the "Valid keys" list of error messages.

    Raises:
        ValueError: a string without ``=``, an unknown key (naming the closest valid one) or
            a value of the wrong type (naming the key and the expected type).
    """
    lists, hidden = set(lists), set(hidden)
    out: dict[str, Any] = {}
    for a in args:
        key, eq, val = a.partition("=")
        if not eq:
            raise ValueError(f"argument {a!r} is not of the form key=value")
        if key not in spec:
            raise ValueError(f"unknown key {key!r} for `toolkit {cmd}`.{did_you_mean(key, spec)} "
                             f"Valid keys: {', '.join(k for k in spec if k not in hidden)}")
        if key in lists:
            items = [val]
            if val.startswith("[") and val.endswith("]"):
                import yaml

                items = [str(v) for v in (yaml.safe_load(val) or [])]
            out.setdefault(key, []).extend(items)
            continue
        typ = spec[key]
        try:
            out[key] = parse_bool(val) if typ == "bool" else typ(val)
        except ValueError:
            want = typ if isinstance(typ, str) else typ.__name__
            raise ValueError(f"{key}={val!r}: expected {want}") from None
    return out
