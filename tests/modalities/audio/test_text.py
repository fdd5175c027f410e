"""Phoneme symbol set: ids, blanks, round trips, errors; phonemisation with espeak-ng."""

import pytest

from modalities.audio.text import BLANK, PAD, SYMBOL_SET, SymbolSet, encode_text, text_to_phonemes
from tests.modalities.audio.conftest import needs_tools

CORPUS_IPA = "hˈɛlən pɹətˈɛktᵻd ᵻlˈɛvən klˈɛvɚ pˈeɪntɚz twˈɛlv kˈɪʔn̩z ˈiːvnɪŋ ʒ θ ɐ ɔ ɾ ʌ"


def test_pad_and_blank_ids_and_unique_symbols():
    s = SYMBOL_SET
    assert s.symbols[0] == PAD and s.symbols[1] == BLANK and s.pad_id == 0 and s.blank_id == 1
    assert len(set(s.symbols)) == s.size == len(s)
    assert " " in s.ids and all(c in s.ids for c in ",.?!'")


def test_encode_decode_round_trip_with_and_without_blanks():
    ids = SYMBOL_SET.encode(CORPUS_IPA, add_blank=False)
    assert 0 not in ids and 1 not in ids and SYMBOL_SET.decode(ids) == CORPUS_IPA
    blank = SYMBOL_SET.encode("ab c", add_blank=True)
    assert len(blank) == 2 * 4 + 1 and blank[0::2] == [1] * 5
    assert SYMBOL_SET.decode(blank) == "ab c"
    assert SYMBOL_SET.encode("  a \n  b ", add_blank=False) == SYMBOL_SET.encode("a b", False)


def test_unknown_characters_are_named():
    with pytest.raises(ValueError, match=r"2 character\(s\).*'4'.*DIGIT FOUR.*'Ж'"):
        SYMBOL_SET.encode("hɛlo 4Ж")
    with pytest.raises(ValueError, match="outside the phoneme symbol set: '_'"):
        SYMBOL_SET.encode("a_b")  # the pad symbol is not text
    with pytest.raises(ValueError, match="outside the symbol set"):
        SYMBOL_SET.decode([SYMBOL_SET.size])


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_refused(text):
    with pytest.raises(ValueError, match="empty text"):
        SYMBOL_SET.encode(text)
    with pytest.raises(ValueError, match="empty text"):
        text_to_phonemes(text)


def test_custom_symbol_set_checks():
    with pytest.raises(ValueError, match="distinct single characters"):
        SymbolSet(("_", "~", "a", "a"))
    assert SymbolSet(("_", "~", "x")).encode("xx", add_blank=False) == [2, 2]


@needs_tools
def test_phonemiser_output_is_covered_by_the_symbol_set():
    ipa = text_to_phonemes("The quick brown fox, twelve kittens; Helen's violin? Yes!")
    assert ipa and not SYMBOL_SET.unknown(ipa)
    assert encode_text("hello world") == SYMBOL_SET.encode(text_to_phonemes("hello world"))
    assert encode_text("hˈɛloʊ", phonemes=True, add_blank=False) == SYMBOL_SET.encode(
        "hˈɛloʊ", add_blank=False)
