"""Offline multi-speaker speech corpus synthesised with Debian's ``espeak-ng`` and ``flite``.

Speakers are text-to-speech voices: ``espeak-ng`` voice variants (``en+f3``, ``en-us+m2``, ...)
at a per-speaker pitch (``-p``) and rate (``-s``), and the CMU voices that ``flite`` ships
(``kal16``, ``slt``, ``rms``, ``awb``; speed via ``duration_stretch``). Sentences come from a
seeded word grammar (:mod:`modalities.audio.sentences`); a held-out fraction of the sentences is
only ever spoken in the ``"heldout"`` split. Each utterance's speaking rate is jittered by a
seeded ``+-rate_jitter`` fraction. The engines are wrapped in :mod:`modalities.audio.tts`.

Per utterance ``metadata.jsonl`` stores: ``id``, ``split``, ``speaker``, ``speaker_id``,
``engine``, ``voice``, ``text``, ``phonemes``, ``wav`` (relative path), ``num_samples``,
``sample_rate`` and ``phone_durations``. **Phonemes** are IPA from ``espeak-ng -v en-us --ipa
-q`` for every utterance (one phonemiser for all speakers, so symbols are consistent; clause
lines joined by spaces). ``phone_durations`` is ``[[phone, seconds], ...]`` from ``flite
-psdur`` (CMU phone set, ``pau`` = pause) for flite speakers and ``null`` for espeak-ng ones.
Waveforms are resampled to ``sample_rate`` (22.05 kHz by default), peak-normalised to 0.9 and
stored as 16-bit WAV.

The corpus is cached under ``$TOOLKIT_CACHE/speech/<key>`` (default
``~/.cache/toolkit/speech``), the key hashing the config, the resolved speakers and the tool
versions. It is built in a temporary folder and renamed into place, so a failed run never
leaves or overwrites a cache. Synthesis runs in a small thread pool; the output is identical
for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from modalities.audio.io import load_audio, save_wav
from modalities.audio.sentences import make_sentences, split_sentences
from modalities.audio.tts import (
    ENGINES,
    Speaker,
    check_tools,
    default_speakers,
    flite_voices,
    phonemize,
    speak,
)
from toolkit.files import UMASK, cache_root

_VERSION = 1  # bump when synthesis or storage changes (invalidates caches)


@dataclass(frozen=True)
class CorpusConfig:
    """Corpus settings (all but ``workers`` enter the cache key).

    Attributes:
        n_utterances: total utterances (train + heldout).
        n_sentences: distinct sentences drawn from the grammar.
        heldout_fraction: fraction of sentences (and of utterances) held out.
        sample_rate: output rate in Hz.
        seed: seeds the sentences, the split, speaker order and rate jitter.
        speakers: explicit speakers; ``None`` uses :func:`default_speakers`.
        n_speakers: number of default speakers (ignored with explicit ``speakers``).
        rate_jitter: per-utterance relative jitter of the speaking rate.
        phoneme_voice: ``espeak-ng`` voice of the IPA phonemiser.
        workers: synthesis threads.
    """

    n_utterances: int = 500
    n_sentences: int = 600
    heldout_fraction: float = 0.1
    sample_rate: int = 22050
    seed: int = 0
    speakers: tuple[Speaker, ...] | None = None
    n_speakers: int = 12
    rate_jitter: float = 0.1
    phoneme_voice: str = "en-us"
    workers: int = 4

    def __post_init__(self):
        if self.n_utterances < 1 or self.n_sentences < 2:
            raise ValueError(f"need n_utterances >= 1 and n_sentences >= 2, got "
                             f"{self.n_utterances}, {self.n_sentences}")
        if not 0.0 <= self.rate_jitter < 0.5 or self.workers < 1 or self.sample_rate < 8000:
            raise ValueError(f"need 0 <= rate_jitter < 0.5, workers >= 1, sample_rate >= 8000; "
                             f"got {self.rate_jitter}, {self.workers}, {self.sample_rate}")


def resolve_speakers(config: CorpusConfig) -> tuple[Speaker, ...]:
    """The config's speakers (checked: unique names, installed flite voices)."""
    if config.speakers is None:
        check_tools(ENGINES)  # the defaults mix both engines: missing tools are an error
    speakers = config.speakers if config.speakers is not None else default_speakers(
        config.n_speakers)
    names = [s.name for s in speakers]
    if not speakers or len(set(names)) != len(names):
        raise ValueError(f"speakers must be non-empty with unique names, got {names}")
    want = {s.voice for s in speakers if s.engine == "flite"}
    if want:
        have = set(flite_voices())
        if want - have:
            raise ValueError(f"flite voice(s) {sorted(want - have)} not available; installed "
                             f"flite voices: {sorted(have)}")
    return tuple(speakers)


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/speech`` if set, else ``~/.cache/toolkit/speech``."""
    return cache_root("speech")


def corpus_key(config: CorpusConfig, speakers: tuple[Speaker, ...], versions: dict) -> str:
    """Hash of everything that determines the corpus bytes."""
    cfg = asdict(replace(config, speakers=None, workers=1))
    blob = json.dumps({"v": _VERSION, "config": cfg, "speakers": [asdict(s) for s in speakers],
                       "tools": versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_utterances(config: CorpusConfig, speakers: tuple[Speaker, ...]) -> list[dict]:
    """The utterance list (no audio): split, speaker, text and jittered rate per utterance.

    The last ``round(heldout_fraction * n_utterances)`` utterances form the held-out split
    and speak only held-out sentences; speakers cycle so each appears in both splits.
    """
    sentences = make_sentences(config.n_sentences, config.seed)
    train, held = split_sentences(sentences, config.heldout_fraction, config.seed)
    n_held = int(round(config.heldout_fraction * config.n_utterances)) if held else 0
    rng = np.random.default_rng([config.seed, 0xC0])
    train_order, held_order = rng.permutation(len(train)), rng.permutation(max(len(held), 1))
    spk_order = rng.permutation(len(speakers))
    plan = []
    for i in range(config.n_utterances):
        is_held = i >= config.n_utterances - n_held
        j = i - (config.n_utterances - n_held) if is_held else i
        text = (held[int(held_order[j % len(held)])] if is_held
                else train[int(train_order[j % len(train)])])
        k = int(spk_order[i % len(speakers)])
        spk = speakers[k]
        jitter = 1.0 + config.rate_jitter * (2.0 * np.random.default_rng([config.seed, i])
                                             .random() - 1.0)
        plan.append({"id": f"{i:05d}_{spk.name}", "split": "heldout" if is_held else "train",
                     "speaker": spk.name, "speaker_id": k, "engine": spk.engine,
                     "voice": spk.voice, "pitch": spk.pitch,
                     "rate": int(round(spk.rate * jitter)), "text": text})
    return plan


def _synthesise(u: dict, out_dir: Path, sample_rate: int) -> dict:
    """Speak one planned utterance into ``out_dir/wavs``; returns its metadata row."""
    fd, raw = tempfile.mkstemp(dir=out_dir, prefix=".raw-", suffix=".wav")
    os.close(fd)
    try:
        durations = speak(u["engine"], u["voice"], u["text"], raw, u["pitch"], u["rate"])
        wave, _ = load_audio(raw, sample_rate=sample_rate)  # (T,)
    finally:
        Path(raw).unlink(missing_ok=True)
    peak = float(wave.abs().max())
    if peak <= 0:
        raise RuntimeError(f"{u['engine']} voice {u['voice']!r} produced silence for "
                           f"{u['text']!r}")
    rel = f"wavs/{u['id']}.wav"
    save_wav(out_dir / rel, wave * (0.9 / peak), sample_rate)
    keys = ("id", "split", "speaker", "speaker_id", "engine", "voice", "pitch", "rate", "text")
    row = {k: u[k] for k in keys}
    row.update(wav=rel, num_samples=int(wave.shape[-1]), sample_rate=sample_rate,
               phone_durations=durations)
    return row


def _config_record(config: CorpusConfig) -> dict:
    """The config as stored in ``config.json`` (JSON types; ``workers`` does not matter)."""
    return json.loads(json.dumps(asdict(replace(config, speakers=None, workers=1))))


def find_cached(config: CorpusConfig, cache_dir: str | Path | None = None) -> Path | None:
    """A complete cached corpus built with ``config`` (any tool versions), or ``None``.

    Used when the synthesisers are missing: the cache key includes the tool versions, so
    the folder is found by comparing each cached ``config.json`` with ``config``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    want = _config_record(config)
    spk = None if config.speakers is None else [asdict(s) for s in config.speakers]
    for info_path in sorted(root.glob("*/config.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (info.get("version") == _VERSION and info.get("config") == want
                and (spk is None or info.get("speakers") == spk)
                and (info_path.parent / "metadata.jsonl").is_file()):
            return info_path.parent
    return None


def build_corpus(config: CorpusConfig | None = None, cache_dir: str | Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Synthesise the corpus (or reuse its cache) and return its folder.

    The folder holds ``metadata.jsonl``, ``config.json`` and ``wavs/``. ``progress(done,
    total)`` is called after each utterance when given. Without espeak-ng / flite a matching
    cached corpus (:func:`find_cached`) is still returned; else ``RuntimeError`` says
    ``apt-get install espeak-ng flite``.
    """
    config = config or CorpusConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        speakers = resolve_speakers(config)
        engines = tuple(sorted({"espeak-ng"} | {s.engine for s in speakers}))
        versions = check_tools(engines)
    except RuntimeError:  # tools missing: a corpus built elsewhere with this config still does
        found = find_cached(config, root)
        if found is None:
            raise
        return found
    final = root / corpus_key(config, speakers, versions)
    if (final / "metadata.jsonl").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        (tmp / "wavs").mkdir()
        plan = plan_utterances(config, speakers)
        texts = sorted({u["text"] for u in plan})
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            ipa = dict(zip(texts, pool.map(lambda t: phonemize(t, config.phoneme_voice), texts)))
            futures = [pool.submit(_synthesise, u, tmp, config.sample_rate) for u in plan]
            rows = []
            for n, f in enumerate(futures, 1):
                rows.append(f.result())
                if progress is not None:
                    progress(n, len(plan))
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                row["phonemes"] = ipa[row["text"]]
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        info = {"version": _VERSION, "config": _config_record(config),
                "speakers": [asdict(s) for s in speakers], "tools": versions}
        (tmp / "config.json").write_text(json.dumps(info, indent=1, sort_keys=True))
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp creates 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "metadata.jsonl").is_file():  # not a concurrent builder's result
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class SpeechCorpus(Dataset):
    """The synthetic speech corpus as a torch ``Dataset`` (built on first use).

    Items are dicts: ``wave`` float32 ``(T,)``, ``sample_rate``, ``text``, ``phonemes``,
    ``speaker``, ``speaker_id``, ``id``, ``phone_durations`` (list or ``None``). Batch them
    with :func:`modalities.audio.io.collate_speech`.

    Args:
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        config: corpus settings.
        cache_dir: cache root (default :func:`default_cache_dir`).
        preload: decode every wave at construction.
    """

    def __init__(self, split: str = "train", config: CorpusConfig | None = None,
                 cache_dir: str | Path | None = None, preload: bool = False):
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        self.config = config or CorpusConfig()
        self.root = build_corpus(self.config, cache_dir)
        meta = self.root / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        self.speakers = sorted({r["speaker"] for r in rows})
        self.rows = [r for r in rows if split == "all" or r["split"] == split]
        if not self.rows:
            raise ValueError(f"split {split!r} of the corpus in {self.root} is empty")
        self.waves = [self._load(i) for i in range(len(self.rows))] if preload else None

    def _load(self, i: int) -> torch.Tensor:
        r = self.rows[i]
        wave, _ = load_audio(self.root / r["wav"], sample_rate=r["sample_rate"],
                             resample=False)
        return wave

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        wave = self.waves[i] if self.waves is not None else self._load(i)
        return {"wave": wave, "sample_rate": r["sample_rate"], "text": r["text"],
                "phonemes": r["phonemes"], "speaker": r["speaker"],
                "speaker_id": r["speaker_id"], "id": r["id"],
                "phone_durations": r["phone_durations"]}


__all__ = ["CorpusConfig", "SpeechCorpus", "build_corpus", "corpus_key", "default_cache_dir",
           "find_cached", "plan_utterances", "resolve_speakers"]
