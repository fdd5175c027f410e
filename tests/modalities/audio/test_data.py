"""SpeechDataset: cached mels (atomic, keyed by source + mel config), items, padding collate,
user-data readers and the text2speech_cfm recipe's data groups."""

import pytest
import torch

from modalities.audio import data as data_mod
from modalities.audio.corpus import CorpusConfig, SpeechCorpus
from modalities.audio.data import (
    SpeechDataset,
    collate_tts,
    ljspeech_dataset,
    speaker_folder_dataset,
    speech_corpus_dataset,
)
from modalities.audio.features import MelConfig
from modalities.audio.io import save_wav
from modalities.audio.text import SYMBOL_SET
from tests.modalities.audio.conftest import needs_tools
from toolkit.train import compose_recipe
from toolkit.train.trainer import instantiate

TINY = dict(n_utterances=8, n_sentences=8, n_speakers=3, heldout_fraction=0.125)


def test_collate_pads_tokens_and_mels():
    items = [{"tokens": torch.tensor([1, 5, 1]), "mel": torch.ones(4, 6), "speaker": 2,
              "index": 0},
             {"tokens": torch.tensor([1, 7, 1, 8, 1]), "mel": torch.ones(4, 9), "speaker": 0,
              "index": 1}]
    b = collate_tts(items)
    assert b["tokens"].shape == (2, 5) and b["tokens"][0, 3:].eq(0).all()
    assert b["mel"].shape == (2, 4, 9) and b["mel"][0, :, 6:].eq(0).all()
    assert b["token_lengths"].tolist() == [3, 5] and b["mel_lengths"].tolist() == [6, 9]
    assert b["speaker"].tolist() == [2, 0] and b["index"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty batch"):
        collate_tts([])


@needs_tools
def test_corpus_dataset_items_and_mel_cache(tmp_path, monkeypatch):
    kw = dict(corpus_cache_dir=str(tmp_path / "speech"), cache_dir=str(tmp_path / "mels"))
    ds = speech_corpus_dataset(**TINY, **kw)
    assert len(ds) == 7 and len(ds.speakers) == 3 and ds.collate_fn is collate_tts
    it = ds[0]
    assert it["mel"].shape[0] == 80 and it["mel"].dtype == torch.float32
    assert it["tokens"].tolist() == SYMBOL_SET.encode(ds.phonemes[0])
    assert ds.mel_lengths[0] == it["mel"].shape[1] >= len(it["tokens"])
    assert all(ds.speaker_index[i] == 1 for i in ds.utterances_of(1))
    files = list((tmp_path / "mels").iterdir())
    assert [f.name for f in files] == [ds.cache_path.name]  # no temporary files left
    # reuse: a second dataset reads the cache instead of recomputing
    monkeypatch.setattr(data_mod, "_compute", lambda *a, **k: pytest.fail("recomputed"))
    again = speech_corpus_dataset(**TINY, **kw)
    assert again.key == ds.key and torch.equal(again[3]["mel"], ds[3]["mel"])
    # the key follows the mel config and the split
    src = SpeechCorpus("train", CorpusConfig(**TINY), tmp_path / "speech")
    monkeypatch.undo()
    other = SpeechDataset(src, MelConfig.preset("hifigan", n_mels=40), cache_dir=tmp_path / "m")
    assert other.key != ds.key and other[0]["mel"].shape[0] == 40
    held = speech_corpus_dataset(split="heldout", **TINY, **kw)
    assert len(held) == 1 and held.key != ds.key and held.speakers == ds.speakers


@needs_tools
def test_speaker_folders_are_phonemised_and_cached(tmp_path):
    wave = torch.sin(torch.arange(22050 * 1.5) * 0.05) * 0.3
    for spk, texts in (("alice", ["hello there", "good morning"]), ("bob", ["a red fox"])):
        for k, text in enumerate(texts):
            save_wav(tmp_path / "data" / spk / f"u{k}.wav", wave, 22050)
            (tmp_path / "data" / spk / f"u{k}.txt").write_text(text)
    ds = speaker_folder_dataset(str(tmp_path / "data"), cache_dir=str(tmp_path / "mels"))
    assert ds.speakers == ["alice", "bob"] and len(ds) == 3
    assert ds.phonemes[0] and not SYMBOL_SET.unknown(ds.phonemes[0])
    assert ds.mel_lengths == [129, 129, 129]  # 1.5 s * 22050 / 256
    with pytest.raises(ValueError, match=r"data=ljspeech needs data.root=DIR"):
        ljspeech_dataset(None)


def test_recipe_data_groups_follow_the_task():
    cfg = compose_recipe("text2speech_cfm", ["task.add_blank=false", "data=speaker_folders",
                                             "data.root=/nonexistent"])
    assert cfg.data.add_blank is False and cfg.data.mel_preset == cfg.task.mel_preset
    with pytest.raises(FileNotFoundError, match="/nonexistent"):
        instantiate(cfg.data, _convert_="all")
    cfg = compose_recipe("text2speech_cfm", ["data=ljspeech"])
    with pytest.raises(ValueError, match="data=ljspeech needs data.root=DIR"):
        instantiate(cfg.data, _convert_="all")
