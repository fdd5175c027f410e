"""Phoneme symbols for text-to-speech: a fixed IPA inventory, encoding and phonemisation.

Text reaches the acoustic model as IPA phonemes from ``espeak-ng -v en-us --ipa -q`` (the
corpus' phonemiser, :func:`modalities.audio.tts.phonemize`), one symbol per Unicode character:

* id 0 is padding (``"_"``), id 1 the *blank* token interspersed between symbols when
  ``add_blank=True`` (Glow-TTS, Kim et al. 2020, sec. 3.3 / VITS: blanks give the aligner
  somewhere to put transitions);
* then the word boundary (space) and punctuation, then IPA letters, diacritics, stress and
  length marks covering what espeak-ng emits for English (and most other voices).

The inventory is a module constant, so a trained model and the sampler always agree on ids
without storing a vocabulary. Characters outside it raise a ``ValueError`` that names them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

PAD, BLANK = "_", "\u2581"
_PUNCT = " !'\"(),-.:;?"
_LATIN = "abcdefghijklmnopqrstuvwxyz"
_IPA = ("ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒ"
        "ʔʡʕʢǀǁǂǃᵻᵿ")
_MARKS = "ˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘\u0303\u0329\u032a\u032f\u0330\u0361"
SYMBOLS: tuple[str, ...] = (PAD, BLANK, *_PUNCT, *_LATIN, *_IPA, *_MARKS)


def _describe(chars: Sequence[str]) -> str:
    return ", ".join(f"{c!r} (U+{ord(c):04X} {unicodedata.name(c, '?')})" for c in chars)


class SymbolSet:
    """Symbol <-> id tables with checked encoding.

    Args:
        symbols: the inventory; ``symbols[0]`` is padding and ``symbols[1]`` the blank.

    Attributes:
        pad_id: 0. blank_id: 1. size: number of ids (the embedding table size).
    """

    def __init__(self, symbols: Sequence[str] = SYMBOLS):
        symbols = tuple(symbols)
        if len(set(symbols)) != len(symbols) or any(len(s) != 1 for s in symbols):
            raise ValueError("symbols must be distinct single characters")
        if len(symbols) < 3:
            raise ValueError("need at least pad, blank and one symbol")
        self.symbols = symbols
        self.ids = {s: i for i, s in enumerate(symbols)}
        self.pad_id, self.blank_id = 0, 1

    @property
    def size(self) -> int:
        """Number of ids (pad and blank included)."""
        return len(self.symbols)

    def __len__(self) -> int:
        return self.size

    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` outside the inventory (sorted, unique)."""
        return sorted({c for c in text if c not in self.ids or c in (PAD, BLANK)})

    def encode(self, text: str, add_blank: bool = True) -> list[int]:
        """Phoneme string -> ids (whitespace runs collapse to one word boundary).

        With ``add_blank`` the blank id is put between symbols and at both ends:
        ``[b, s1, b, s2, ..., b, sN, b]`` (``2N + 1`` ids).

        Raises:
            ValueError: empty text, or characters outside the inventory (named).
        """
        text = unicodedata.normalize("NFC", " ".join(str(text).split()))
        if not text:
            raise ValueError("cannot encode empty text: give at least one phoneme symbol")
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"{len(bad)} character(s) outside the phoneme symbol set: "
                             f"{_describe(bad)}; in {text[:80]!r}")
        ids = [self.ids[c] for c in text]
        if not add_blank:
            return ids
        out = [self.blank_id] * (2 * len(ids) + 1)
        out[1::2] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> phoneme string (padding and blanks dropped)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.size:
                raise ValueError(f"id {i} outside the symbol set [0, {self.size})")
            if i not in (self.pad_id, self.blank_id):
                out.append(self.symbols[i])
        return "".join(out)


#: the default inventory used by every model and dataset
SYMBOL_SET = SymbolSet()


def text_to_phonemes(text: str, voice: str = "en-us") -> str:
    """IPA phonemes of plain ``text`` with the corpus' phonemiser (``espeak-ng --ipa``).

    Raises:
        ValueError: empty text, or espeak-ng produced no phonemes.
        RuntimeError: espeak-ng is not installed (with the install command).
    """
    from modalities.audio.tts import phonemize

    text = " ".join(str(text).split())
    if not text:
        raise ValueError('empty text: give a sentence to speak, e.g. text="hello world"')
    ipa = phonemize(text, voice)
    if not ipa.strip():
        raise ValueError(f"espeak-ng produced no phonemes for {text!r}")
    return ipa


def encode_text(text: str, add_blank: bool = True, phonemes: bool = False,
                voice: str = "en-us") -> list[int]:
    """Plain text (phonemised first) or, with ``phonemes=True``, an IPA string -> ids."""
    ipa = text if phonemes else text_to_phonemes(text, voice)
    return SYMBOL_SET.encode(ipa, add_blank)


__all__ = ["BLANK", "PAD", "SYMBOLS", "SYMBOL_SET", "SymbolSet", "encode_text",
           "text_to_phonemes"]
