"""Seeded procedural English sentences for the offline speech corpus.

A small word grammar (:data:`TEMPLATES` over fixed word lists) generates distinct, speakable
sentences such as ``"Yesterday, the clever rabbit carried the golden lantern."``. Numbers are
spelled out and only ``,``, ``.``, ``?`` and ``'`` appear, so every text-to-speech engine reads
the same words. :func:`make_sentences` draws ``n`` distinct sentences for a seed and
:func:`split_sentences` holds a fraction out, never to be spoken in the training split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ADJECTIVES = ("small", "large", "quiet", "clever", "purple", "golden", "ancient", "gentle",
              "heavy", "bright", "lazy", "curious", "silver", "narrow", "brave", "sleepy",
              "green", "tiny", "famous", "wooden")
NOUNS = ("rabbit", "teacher", "river", "garden", "painter", "window", "robot", "farmer",
         "kitten", "sailor", "doctor", "engine", "castle", "lantern", "dragon", "pilot",
         "violin", "mountain", "student", "baker")
VERBS = (("carry", "carried"), ("paint", "painted"), ("follow", "followed"),
         ("notice", "noticed"), ("visit", "visited"), ("repair", "repaired"),
         ("borrow", "borrowed"), ("watch", "watched"), ("open", "opened"),
         ("clean", "cleaned"), ("describe", "described"), ("admire", "admired"),
         ("push", "pushed"), ("measure", "measured"), ("protect", "protected"),
         ("deliver", "delivered"))
PLACES = ("the old bridge", "the quiet harbour", "the busy market", "the dark forest",
          "the library", "the station", "the kitchen", "the village square", "the museum",
          "the frozen lake")
PREPOSITIONS = ("across", "behind", "near", "inside", "beyond", "under", "along", "around")
NAMES = ("Anna", "Peter", "Maria", "Oliver", "Sophie", "Daniel", "Laura", "Martin", "Helen",
         "Victor")
TIMES = ("yesterday", "this morning", "last winter", "on Monday", "at noon", "every evening",
         "before dinner", "after the storm")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve")
ADVERBS = ("quietly", "slowly", "happily", "carefully", "suddenly", "proudly")


def _pick(rng: np.random.Generator, words: tuple) -> object:
    return words[int(rng.integers(len(words)))]


def _t_time(r: np.random.Generator) -> str:
    return (f"{_pick(r, TIMES)}, the {_pick(r, ADJECTIVES)} {_pick(r, NOUNS)} "
            f"{_pick(r, VERBS)[1]} the {_pick(r, ADJECTIVES)} {_pick(r, NOUNS)}.")


def _t_count(r: np.random.Generator) -> str:
    return (f"{_pick(r, NAMES)} {_pick(r, VERBS)[1]} {_pick(r, NUMBERS)} {_pick(r, ADJECTIVES)} "
            f"{_pick(r, NOUNS)}s {_pick(r, PREPOSITIONS)} {_pick(r, PLACES)}.")


def _t_question(r: np.random.Generator) -> str:
    return (f"did the {_pick(r, NOUNS)} {_pick(r, VERBS)[0]} the {_pick(r, ADJECTIVES)} "
            f"{_pick(r, NOUNS)} {_pick(r, PREPOSITIONS)} {_pick(r, PLACES)}?")


def _t_possessive(r: np.random.Generator) -> str:
    return (f"the {_pick(r, NOUNS)} {_pick(r, ADVERBS)} {_pick(r, VERBS)[1]} "
            f"{_pick(r, NAMES)}'s {_pick(r, ADJECTIVES)} {_pick(r, NOUNS)}.")


def _t_future(r: np.random.Generator) -> str:
    a, b = _pick(r, NAMES), _pick(r, NAMES)
    return (f"{a} and {b} will {_pick(r, VERBS)[0]} the {_pick(r, NOUNS)} near "
            f"{_pick(r, PLACES)} {_pick(r, TIMES)}.")


TEMPLATES: tuple[Callable[[np.random.Generator], str], ...] = (
    _t_time, _t_count, _t_question, _t_possessive, _t_future)


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences drawn from the grammar; the list depends only on ``seed``.

    Raises:
        ValueError: ``n < 1`` or the grammar cannot produce ``n`` distinct sentences.
    """
    if n < 1:
        raise ValueError(f"need n >= 1 sentences, got {n}")
    rng = np.random.default_rng([int(seed), 0x5E17])
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        s = TEMPLATES[int(rng.integers(len(TEMPLATES)))](rng)
        seen.setdefault(s[0].upper() + s[1:], None)
        if len(seen) == n:
            return list(seen)
    raise ValueError(f"the sentence grammar produced only {len(seen)} distinct sentences, "
                     f"{n} requested")


def split_sentences(sentences: list[str], heldout_fraction: float, seed: int = 0
                    ) -> tuple[list[str], list[str]]:
    """Split into ``(train, heldout)``: a seeded random ``heldout_fraction`` (at least one
    sentence when the fraction is > 0) is held out; the two lists are disjoint."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n_held = int(round(heldout_fraction * len(sentences)))
    if heldout_fraction > 0:
        n_held = max(1, n_held)
    if n_held >= len(sentences):
        raise ValueError(f"holding out {n_held} of {len(sentences)} sentences leaves none "
                         "for training")
    order = np.random.default_rng([int(seed), 0x4E1D]).permutation(len(sentences))
    held = sorted(int(i) for i in order[:n_held])
    train = sorted(int(i) for i in order[n_held:])
    return [sentences[i] for i in train], [sentences[i] for i in held]


__all__ = ["TEMPLATES", "make_sentences", "split_sentences"]
