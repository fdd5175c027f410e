"""Text-to-speech training data: phoneme ids, cached log-mels, speaker indices, padding collate.

:class:`SpeechDataset` wraps a speech source whose items are dicts with ``wave``,
``sample_rate``, ``text``, ``speaker`` and optionally ``phonemes`` (the offline
:class:`~modalities.audio.corpus.SpeechCorpus`, :class:`~modalities.audio.folder.LJSpeechDataset`
or :class:`~modalities.audio.folder.SpeakerFolderDataset`). Log-mels and phonemes are computed
once and cached under ``$TOOLKIT_CACHE/speech_mels/<key>.pt`` (``~/.cache/toolkit`` by
default), the key hashing the source (corpus folder and split, or every file's path, size,
mtime and transcript), the mel config and the phonemiser; the file is written under a
temporary name and renamed into place, so readers never see a partial cache. Mels are
stored as float16 (about 0.004 absolute error on natural-log mels).

Items are ``{"tokens": (N,) long, "mel": (n_mels, T) float, "speaker": int, "index": int}``;
:func:`collate_tts` pads them into a batch with ``token_lengths`` and ``mel_lengths``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from modalities.audio.features import MelConfig, MelSpec
from modalities.audio.io import resample_wave
from modalities.audio.text import SYMBOL_SET, text_to_phonemes
from toolkit.files import atomic_write, cache_root, content_digest

_VERSION = 2  # bump when the cached content changes (2: a checksum "digest")


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/speech_mels`` if set, else ``~/.cache/toolkit/speech_mels``."""
    return cache_root("speech_mels")


def source_fingerprint(source: Any) -> dict:
    """What identifies a speech source's content (without decoding audio)."""
    if hasattr(source, "rows") and hasattr(source, "root"):  # SpeechCorpus
        return {"corpus": Path(source.root).name, "ids": [r["id"] for r in source.rows]}
    if hasattr(source, "entries"):  # LJSpeech / speaker folders
        out = []
        for e in source.entries:
            st = Path(e["path"]).stat()
            out.append([str(e["path"]), st.st_size, st.st_mtime_ns, e["text"], e["speaker"]])
        return {"files": out, "rate": getattr(source, "sample_rate", None)}
    raise TypeError(f"cannot fingerprint a {type(source).__name__}: expected a SpeechCorpus, "
                    "LJSpeechDataset or SpeakerFolderDataset")


def _atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _metadata(source: Any) -> list[dict]:
    """Per item ``text``, ``phonemes`` (or None), ``speaker``, ``id``, read without decoding
    audio when the source exposes its rows / entries."""
    if hasattr(source, "rows"):
        return [{"text": r["text"], "phonemes": r.get("phonemes"), "speaker": r["speaker"],
                 "id": r["id"]} for r in source.rows]
    if hasattr(source, "entries"):
        return [{"text": e["text"], "phonemes": None, "speaker": e["speaker"], "id": e["id"]}
                for e in source.entries]
    return [{k: it.get(k) for k in ("text", "phonemes", "speaker", "id")}
            for it in (source[i] for i in range(len(source)))]


def _name(meta: list[dict], i: int) -> str:
    """How errors name item ``i``: its id (and index)."""
    uid = meta[i].get("id")
    return f"{uid!r} (item {i})" if uid is not None else f"item {i}"


def _load_cache(path: Path, n_mels: int) -> dict | None:
    """The cached mels / phonemes at ``path`` if the file is readable and consistent, else
    ``None`` with a warning naming the file (it is then rebuilt)."""
    try:
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return None  # older format: rebuilt silently
        n = len(data["mels"])
        for key in ("phonemes", "texts", "speakers", "ids"):
            if not isinstance(data[key], list) or len(data[key]) != n:
                raise ValueError(f"{key!r} does not hold {n} entries")
        for k, m in enumerate(data["mels"]):
            if not (isinstance(m, Tensor) and m.ndim == 2 and m.shape[0] == n_mels
                    and m.shape[1] > 0 and bool(torch.isfinite(m).all())):
                raise ValueError(f"mel {k} is not a finite ({n_mels}, T) tensor")
        if not all(isinstance(p, str) and p for p in data["phonemes"]):
            raise ValueError("phonemes are not non-empty strings")
        if data.get("digest") != content_digest({k: v for k, v in data.items()
                                                 if k != "digest"}):
            raise ValueError("checksum mismatch (corrupted data, or a cache written before "
                             "checksums)")
        return data
    except Exception as err:  # truncated zip, unpickling errors, wrong content: rebuild
        warnings.warn(f"unusable speech mel cache {path} ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:300]}); rebuilding it", stacklevel=3)
        return None


def _compute(source: Any, mel: MelConfig, voice: str, workers: int) -> dict:
    """Decode every item once: log-mels (float16), phonemes, speakers, ids. Waves are decoded
    one at a time (only the mels are kept in memory)."""
    spec = MelSpec(mel)
    meta = _metadata(source)
    need = [i for i, m in enumerate(meta) if not m["phonemes"]]

    def phonemes(i: int) -> str:
        try:
            return text_to_phonemes(meta[i]["text"], voice)
        except ValueError as err:  # empty text, no phonemes, a NUL byte in the text
            raise ValueError(f"utterance {_name(meta, i)}: {err}") from None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, p in zip(need, pool.map(phonemes, need)):
            meta[i]["phonemes"] = p
    mels = []
    side = mel.n_fft // 2 if mel.center else mel.pad  # padding per side (reflect: < L)
    shortest = max(mel.n_fft - 2 * side, side + 1)  # samples for one frame
    for i in range(len(meta)):
        it = source[i]
        wave = resample_wave(it["wave"], int(it["sample_rate"]), mel.sample_rate)  # (L,)
        if wave.ndim != 1 or wave.shape[-1] < shortest:
            raise ValueError(f"utterance {_name(meta, i)}: a wave of shape "
                             f"{tuple(wave.shape)} at {mel.sample_rate} Hz, need mono (T,) with "
                             f"T >= {shortest} samples (one mel frame)")
        with torch.no_grad():
            mels.append(spec(wave.float()).to(torch.float16))  # (n_mels, T)
    return {"version": _VERSION, "mels": mels, "phonemes": [m["phonemes"] for m in meta],
            "texts": [m["text"] for m in meta], "speakers": [m["speaker"] for m in meta],
            "ids": [str(m["id"] if m["id"] is not None else i) for i, m in enumerate(meta)]}


def collate_tts(batch: list[dict]) -> dict[str, Tensor]:
    """Pad items of :class:`SpeechDataset` into ``tokens (B, N)`` (pad id 0),
    ``token_lengths (B,)``, ``mel (B, n_mels, T)`` (zeros past the end), ``mel_lengths (B,)``,
    ``speaker (B,)`` and ``index (B,)``."""
    if not batch:
        raise ValueError("collate_tts got an empty batch")
    tl = torch.tensor([len(b["tokens"]) for b in batch])
    ml = torch.tensor([b["mel"].shape[-1] for b in batch])
    tokens = torch.zeros(len(batch), int(tl.max()), dtype=torch.long)  # (B, N)
    mel = torch.zeros(len(batch), batch[0]["mel"].shape[0], int(ml.max()))  # (B, n_mels, T)
    for i, b in enumerate(batch):
        tokens[i, :len(b["tokens"])] = b["tokens"]
        mel[i, :, :b["mel"].shape[-1]] = b["mel"]
    return {"tokens": tokens, "token_lengths": tl, "mel": mel, "mel_lengths": ml,
            "speaker": torch.tensor([int(b["speaker"]) for b in batch]),
            "index": torch.tensor([int(b["index"]) for b in batch])}


class SpeechDataset(Dataset):
    """Phoneme ids + cached log-mels + speaker index per utterance (see the module docstring).

    Args:
        source: a speech source (items with ``wave``, ``sample_rate``, ``text``, ``speaker``
            and optionally ``phonemes``).
        mel: the mel front-end (default ``MelConfig.preset("hifigan")``).
        add_blank: intersperse the blank id (must match the task's ``add_blank``).
        cache_dir: mel cache folder (default :func:`default_cache_dir`).
        phoneme_voice: espeak-ng voice for items without phonemes.
        workers: phonemiser threads (first build only).
        speakers: speaker names defining the indices (default: the sorted names found).

    Attributes:
        speakers: index -> name. mel_config. texts / phonemes: per item.
        mel_lengths: frames per item. speaker_index: per item.
    """

    def __init__(self, source: Any, mel: MelConfig | None = None, add_blank: bool = True,
                 cache_dir: str | Path | None = None, phoneme_voice: str = "en-us",
                 workers: int = 2, speakers: list[str] | None = None):
        self.mel_config = mel or MelConfig.preset("hifigan")
        self.add_blank = bool(add_blank)
        blob = json.dumps({"v": _VERSION, "source": source_fingerprint(source),
                           "mel": self.mel_config.to_dict(), "voice": phoneme_voice},
                          sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = root / f"{self.key}.pt"
        data = None
        if self.cache_path.is_file():
            data = _load_cache(self.cache_path, self.mel_config.n_mels)
        if data is None:
            data = _compute(source, self.mel_config, phoneme_voice, workers)
            data["digest"] = content_digest(data)
            _atomic_save(data, self.cache_path)
        self.mels: list[Tensor] = data["mels"]
        self.phonemes, self.texts, self.ids = data["phonemes"], data["texts"], data["ids"]
        if not self.mels:
            raise ValueError("SpeechDataset: the source has no utterances")
        names = data["speakers"]
        self.speakers = list(speakers) if speakers is not None else sorted(set(names))
        unknown = sorted(set(names) - set(self.speakers))
        if unknown:
            raise ValueError(f"speakers {unknown} of the data are not in the given speaker "
                             f"list {self.speakers}")
        self.speaker_index = [self.speakers.index(s) for s in names]
        self._by_speaker: dict[int, list[int]] = {}
        for i, k in enumerate(self.speaker_index):
            self._by_speaker.setdefault(k, []).append(i)
        self.tokens = []
        for uid, ph in zip(self.ids, self.phonemes):
            try:
                self.tokens.append(torch.tensor(SYMBOL_SET.encode(ph, self.add_blank)))
            except ValueError as e:
                raise ValueError(f"utterance {uid!r}: {e}") from None
        self.mel_lengths = [int(m.shape[-1]) for m in self.mels]
        short = [u for u, m, t in zip(self.ids, self.mel_lengths, self.tokens) if m < len(t)]
        if short:
            raise ValueError(f"{len(short)} utterance(s) have fewer mel frames than phoneme "
                             f"ids (alignment impossible), e.g. {short[:5]}")

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[i], "mel": self.mels[i].float(),
                "speaker": self.speaker_index[i], "index": int(i)}

    def utterances_of(self, speaker: int) -> list[int]:
        """Item indices spoken by speaker index ``speaker``."""
        return list(self._by_speaker.get(int(speaker), []))

    collate_fn = staticmethod(collate_tts)


def speech_corpus_dataset(split: str = "train", n_utterances: int = 500,
                          n_sentences: int = 600, n_speakers: int = 12, seed: int = 0,
                          heldout_fraction: float = 0.1, corpus_cache_dir: str | None = None,
                          mel_preset: str = "hifigan", add_blank: bool = True,
                          cache_dir: str | None = None) -> SpeechDataset:
    """The offline espeak-ng + flite corpus (:func:`~modalities.audio.corpus.build_corpus`)
    as a :class:`SpeechDataset`; speaker indices follow all of the corpus' speakers, sorted."""
    from modalities.audio.corpus import CorpusConfig, SpeechCorpus

    cfg = CorpusConfig(n_utterances=n_utterances, n_sentences=n_sentences,
                       n_speakers=n_speakers, seed=seed, heldout_fraction=heldout_fraction)
    mel = MelConfig.preset(mel_preset)
    if cfg.sample_rate != mel.sample_rate:
        cfg = replace(cfg, sample_rate=mel.sample_rate)
    src = SpeechCorpus(split, cfg, corpus_cache_dir)
    return SpeechDataset(src, mel, add_blank, cache_dir, cfg.phoneme_voice,
                         speakers=src.speakers)


def _need_root(root: str | None, name: str, layout: str) -> Path:
    if not root:
        raise ValueError(f"data={name} needs data.root=DIR ({layout})")
    return Path(root)


def ljspeech_dataset(root: str | None = None, mel_preset: str = "hifigan",
                     add_blank: bool = True, cache_dir: str | None = None,
                     phoneme_voice: str = "en-us", on_bad: str = "error") -> SpeechDataset:
    """An LJSpeech-style folder (``metadata.csv`` + ``wavs/``) as a :class:`SpeechDataset`
    (one speaker, ``"ljspeech"``); texts are phonemised with espeak-ng once and cached."""
    from modalities.audio.folder import LJSpeechDataset

    mel = MelConfig.preset(mel_preset)
    src = LJSpeechDataset(_need_root(root, "ljspeech", "metadata.csv and wavs/<id>.wav"),
                          sample_rate=mel.sample_rate, on_bad=on_bad)
    return SpeechDataset(src, mel, add_blank, cache_dir, phoneme_voice)


def speaker_folder_dataset(root: str | None = None, mel_preset: str = "hifigan",
                           add_blank: bool = True, cache_dir: str | None = None,
                           phoneme_voice: str = "en-us", on_bad: str = "error"
                           ) -> SpeechDataset:
    """``root/<speaker>/*.wav`` with transcripts as a :class:`SpeechDataset` (speakers
    indexed in sorted order of their folder names)."""
    from modalities.audio.folder import SpeakerFolderDataset

    mel = MelConfig.preset(mel_preset)
    src = SpeakerFolderDataset(
        _need_root(root, "speaker_folders", "<speaker>/*.wav with .txt transcripts"),
        sample_rate=mel.sample_rate, on_bad=on_bad)
    return SpeechDataset(src, mel, add_blank, cache_dir, phoneme_voice)


__all__ = ["SpeechDataset", "collate_tts", "default_cache_dir", "ljspeech_dataset",
           "source_fingerprint", "speaker_folder_dataset", "speech_corpus_dataset"]
