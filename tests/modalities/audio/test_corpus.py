"""Offline speech corpus: sentence grammar and split, planning, deterministic synthesis with
espeak-ng / flite, atomic caching, the Dataset, and errors for missing tools."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from modalities.audio import corpus as corpus_mod
from modalities.audio.corpus import CorpusConfig, SpeechCorpus, build_corpus, plan_utterances
from modalities.audio.io import collate_speech
from modalities.audio.sentences import make_sentences, split_sentences
from modalities.audio.tts import Speaker, check_tools, parse_psdur, speak

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
needs_tools = pytest.mark.skipif(
    not HAVE_TOOLS, reason="espeak-ng and flite not installed (apt-get install espeak-ng flite; "
                           "scripts/setup.sh does it as root)")

ESPEAK_ONLY = (Speaker("a", "espeak-ng", "en+f3", 60, 170), Speaker("b", "espeak-ng", "en+m1"))
TINY = CorpusConfig(n_utterances=6, n_sentences=12, heldout_fraction=0.25, n_speakers=6,
                    workers=2)


def test_sentences_are_distinct_seeded_and_heldout_is_disjoint():
    s = make_sentences(600, seed=0)
    assert len(set(s)) == 600 and s == make_sentences(600, seed=0)
    assert s != make_sentences(600, seed=1)
    assert all(x[0].isupper() and x[-1] in ".?" for x in s)
    train, held = split_sentences(s, 0.1, seed=0)
    assert len(held) == 60 and len(train) == 540 and not set(train) & set(held)
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_sentences(s, 1.0)


def test_plan_uses_heldout_sentences_only_in_heldout_split():
    cfg = CorpusConfig(n_utterances=120, n_sentences=100, speakers=ESPEAK_ONLY)
    plan = plan_utterances(cfg, ESPEAK_ONLY)
    train = {u["text"] for u in plan if u["split"] == "train"}
    held = {u["text"] for u in plan if u["split"] == "heldout"}
    assert sum(u["split"] == "heldout" for u in plan) == 12
    assert held and not train & held
    assert {u["speaker"] for u in plan if u["split"] == "heldout"} == {"a", "b"}
    assert plan == plan_utterances(cfg, ESPEAK_ONLY)


def test_parse_psdur():
    out = parse_psdur("pau:0.184 dh:0.236 ax:0.265 \n")
    assert out == [["pau", 0.184], ["dh", 0.052], ["ax", 0.029]]
    with pytest.raises(RuntimeError, match="could not parse"):
        parse_psdur("nothing here")


@needs_tools
def test_speak_writes_wavs_and_flite_durations(tmp_path):
    assert speak("espeak-ng", "en+f3", "hello there", str(tmp_path / "e.wav")) is None
    durs = speak("flite", "slt", "hello there", str(tmp_path / "f.wav"))
    assert durs[0][0] == "pau" and all(d >= 0 for _, d in durs)
    assert (tmp_path / "e.wav").stat().st_size > 1000 and (tmp_path / "f.wav").stat().st_size > 1000
    with pytest.raises(ValueError, match="engine must be one of"):
        speak("say", "x", "hi", str(tmp_path / "x.wav"))


def test_missing_tools_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng flite"):
        check_tools()
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng flite"):
        build_corpus(TINY, tmp_path)


@needs_tools
def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    a = build_corpus(TINY, tmp_path / "a")
    b = build_corpus(TINY, tmp_path / "b")
    meta_a = (a / "metadata.jsonl").read_bytes()
    assert meta_a == (b / "metadata.jsonl").read_bytes()
    rows = [json.loads(line) for line in meta_a.decode().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert (a / r["wav"]).read_bytes() == (b / r["wav"]).read_bytes()
    engines = {r["engine"] for r in rows}
    assert engines == {"espeak-ng", "flite"}
    for r in rows:
        assert r["phonemes"] and r["text"] and r["sample_rate"] == 22050
        assert (r["phone_durations"] is not None) == (r["engine"] == "flite")
    c = build_corpus(replace(TINY, seed=1), tmp_path / "a")
    assert c != a
    assert (c / "metadata.jsonl").read_bytes() != meta_a


@needs_tools
def test_cache_is_reused_and_failed_build_leaves_nothing(tmp_path, monkeypatch):
    cfg = CorpusConfig(n_utterances=3, n_sentences=8, speakers=ESPEAK_ONLY, workers=1)
    first = build_corpus(cfg, tmp_path)
    stamp = (first / "metadata.jsonl").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise RuntimeError("synthesis failed")

    monkeypatch.setattr(corpus_mod, "_synthesise", boom)
    assert build_corpus(cfg, tmp_path) == first  # cached: nothing synthesised
    assert (first / "metadata.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(RuntimeError, match="synthesis failed"):
        build_corpus(replace(cfg, seed=5), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no partial cache
    monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    assert build_corpus(cfg, tmp_path) == first  # tools gone: the cache is still found
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng flite"):
        build_corpus(replace(cfg, seed=6), tmp_path)


@needs_tools
def test_dataset_items_and_splits(tmp_path):
    train = SpeechCorpus("train", TINY, cache_dir=tmp_path)
    held = SpeechCorpus("heldout", TINY, cache_dir=tmp_path, preload=True)
    assert len(train) + len(held) == 6 and len(held) == 2
    assert not {r["text"] for r in train.rows} & {r["text"] for r in held.rows}
    item = held[0]
    assert item["wave"].dtype == torch.float32 and item["wave"].dim() == 1
    assert 0.5 < float(item["wave"].abs().max()) <= 0.91  # peak-normalised to 0.9
    assert set(item) >= {"text", "phonemes", "speaker", "speaker_id", "phone_durations"}
    batch = collate_speech([train[0], train[1]])
    assert batch["wave"].shape[0] == 2 and batch["lengths"].max() == batch["wave"].shape[1]
    with pytest.raises(ValueError, match="split must be"):
        SpeechCorpus("test", TINY, cache_dir=tmp_path)


@needs_tools
def test_unknown_flite_voice_is_reported(tmp_path):
    cfg = CorpusConfig(n_utterances=2, speakers=(Speaker("x", "flite", "nosuchvoice"),))
    with pytest.raises(ValueError, match="flite voice.*nosuchvoice.*installed flite voices"):
        build_corpus(cfg, tmp_path)
