"""Shared checks of the hostile-input suites (``tests/modalities/*/test_hostile_inputs.py``).

A hostile dataset item must end in one of three ways: a clear error (a ``ValueError`` or
``FileNotFoundError``, or a subclass, whose message is one non-empty paragraph naming the
culprit: a file path and/or an item index), a warning naming the culprit while the item is
skipped, or acceptance because the item really is valid (then the caller checks its shape and
values). Anything else (a numpy / PIL / soundfile / torch / pyarrow internal error, or garbage
accepted silently) fails the test.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

CLEAR_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
#: ``(case kind, outcome) -> count`` over the session (``pytest -s`` prints it per file)
TALLY: Counter[tuple[str, str]] = Counter()


def assert_clear_message(msg: str, culprits: tuple[str, ...]) -> None:
    """``msg`` is one non-empty paragraph that names at least one of ``culprits``."""
    assert msg.strip(), "empty error message"
    assert "\n\n" not in msg.strip(), f"not one paragraph: {msg!r}"
    assert "Traceback" not in msg, f"traceback in the message: {msg!r}"
    if culprits:
        assert any(c in msg for c in culprits), f"names none of {culprits}: {msg!r}"


def outcome(fn: Callable[[], Any], *culprits: str, case: str = "") -> tuple[str, Any]:
    """Run ``fn`` and classify how it ended (counted in :data:`TALLY` under ``case``).

    Returns:
        ``("error", exc)`` for a clear error naming one of ``culprits``, ``("warned", value)``
        when ``fn`` returned but warned (every warning naming a culprit), ``("accepted",
        value)`` when it returned without a warning. Any other exception propagates (and so
        fails the calling test), as does an unclear message.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn()
        except CLEAR_ERRORS as err:
            assert_clear_message(str(err), culprits)
            TALLY[case, "error"] += 1
            return "error", err
    relevant = [w for w in caught if issubclass(w.category, UserWarning)]
    for w in relevant:
        assert_clear_message(str(w.message), culprits)
    kind = "warned" if relevant else "accepted"
    TALLY[case, kind] += 1
    return kind, value


def report(prefix: str) -> str:
    """One line per case kind of :data:`TALLY` starting with ``prefix``: outcome counts."""
    kinds = sorted({k for k, _ in TALLY if k.startswith(prefix)})
    return "\n".join(f"{k}: " + ", ".join(f"{o} {TALLY[k, o]}" for o in
                                          ("error", "warned", "accepted") if TALLY[k, o])
                     for k in kinds)
