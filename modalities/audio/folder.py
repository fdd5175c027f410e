"""Readers for user speech data: LJSpeech-style folders and speaker-per-folder layouts.

* **LJSpeech** (Ito & Johnson, 2017): ``root/metadata.csv`` with lines
  ``id|text|normalized_text`` (no header; the third field may be missing or empty, the
  text is then used) and audio in ``root/wavs/<id>.wav``. One speaker.
* **Speaker folders**: ``root/<speaker>/*.wav``, each with a transcript ``<stem>.txt`` beside
  it, or a per-speaker ``root/<speaker>/metadata.csv`` in the LJSpeech format (which then
  takes precedence over ``.txt`` files).

Every listed file is checked at construction without decoding it
(:func:`~modalities.audio.io.probe_audio`: existence, a readable header, samples, a plausible
sample rate that can be resampled to ``sample_rate``, a WAV data chunk that is not cut short),
and every transcript (UTF-8, not empty); problems are reported with their paths and either
raise (``on_bad="error"``, the default) or are skipped with one warning (``on_bad="skip"``).
Bad sample values (NaN / inf, ``|x| > MAX_PEAK``) are found when an item is decoded and raise
a ``ValueError`` naming the file. Items are dicts like those of
:class:`~modalities.audio.corpus.SpeechCorpus`: ``wave`` float32 ``(T,)``, ``sample_rate``,
``text``, ``speaker``, ``speaker_id``, ``id``, ``path``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from torch.utils.data import Dataset

from modalities.audio.io import (
    MAX_RESAMPLE_KERNEL,
    UnreadableAudioError,
    load_audio,
    probe_audio,
)


def _listing(items: list[str], k: int = 10) -> str:
    more = f" ... (+{len(items) - k} more)" if len(items) > k else ""
    return "; ".join(items[:k]) + more


def _read_text(path: Path) -> str:
    """UTF-8 text of a metadata or transcript file; bad bytes raise ``ValueError`` naming the
    file and line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line} is not valid UTF-8 ({err.reason} at byte "
                         f"{err.start})") from None


def read_metadata_csv(path: str | Path, use_normalized: bool = True) -> dict[str, str]:
    """``{id: text}`` from an LJSpeech ``metadata.csv`` (``id|text|normalized_text``).

    Raises ``ValueError`` naming the file and line for a malformed line, an empty id or text,
    an id that is not a plain file stem (path separators, ``..``, control characters), a
    duplicate id or bytes that are not UTF-8; ``FileNotFoundError`` if the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path} (expected lines "
                                "'id|text|normalized_text')")
    out: dict[str, str] = {}
    for k, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2:
            raise ValueError(f"{path} line {k}: expected 'id|text|normalized_text', got "
                             f"{line[:80]!r}")
        uid, text = fields[0].strip(), fields[1].strip()
        if use_normalized and len(fields) > 2 and fields[2].strip():
            text = fields[2].strip()
        if not uid or not text:
            raise ValueError(f"{path} line {k}: empty id or text in {line[:80]!r}")
        if uid in (".", "..") or any(c in uid for c in "/\\") or not uid.isprintable():
            raise ValueError(f"{path} line {k}: id {uid[:40]!r} is not a plain file name (no "
                             "path separators, '..' or control characters)")
        if uid in out:
            raise ValueError(f"{path} line {k}: duplicate id {uid!r}")
        out[uid] = text
    return out


class _SpeechFiles(Dataset):
    """Shared checks and loading for the folder readers (entries: path, text, speaker, id)."""

    def __init__(self, root: Path, entries: list[dict], problems: list[str],
                 sample_rate: int | None, on_bad: str):
        if on_bad not in ("error", "skip"):
            raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        if sample_rate is not None and (isinstance(sample_rate, bool)
                                        or int(sample_rate) != sample_rate or sample_rate <= 0):
            raise ValueError(f"sample_rate must be a positive integer (Hz) or None, got "
                             f"{sample_rate!r}")
        self.root = root
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        problems = list(problems)
        kept = []
        for e in entries:
            if not e["path"].is_file():
                problems.append(f"{e['path']} (missing audio file)")
                continue
            try:
                info = probe_audio(e["path"])
            except UnreadableAudioError as err:
                problems.append(f"{e['path']} (unreadable: {err.reason})")
                continue
            rate = int(info.samplerate)
            g = math.gcd(rate, self.sample_rate or rate)
            if (rate // g) * ((self.sample_rate or rate) // g) > MAX_RESAMPLE_KERNEL:
                problems.append(f"{e['path']} (sample rate {rate} Hz cannot be resampled to "
                                f"{self.sample_rate} Hz: convert it to a standard rate)")
                continue
            e["native_rate"] = rate
            kept.append(e)
        if problems and on_bad == "error":
            raise ValueError(f"{len(problems)} problem(s) in {root}: {_listing(problems)}")
        if problems:
            warnings.warn(f"skipped {len(problems)} bad item(s) in {root}: "
                          f"{_listing(problems)}", stacklevel=3)
        if not kept:
            raise ValueError(f"empty dataset: no readable, transcribed audio in {root}")
        rates = sorted({e["native_rate"] for e in kept})
        if sample_rate is None and len(rates) > 1:
            raise ValueError(f"files in {root} have different sample rates {rates}; pass "
                             "sample_rate=... to resample them to one rate")
        self.entries = kept
        self.skipped = problems
        self.speakers = sorted({e["speaker"] for e in kept})
        self._spk = {s: i for i, s in enumerate(self.speakers)}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        e = self.entries[i]
        wave, rate = load_audio(e["path"], sample_rate=self.sample_rate)  # (T,)
        return {"wave": wave, "sample_rate": rate, "text": e["text"], "speaker": e["speaker"],
                "speaker_id": self._spk[e["speaker"]], "id": e["id"], "path": str(e["path"])}


class LJSpeechDataset(_SpeechFiles):
    """An LJSpeech-style folder (``metadata.csv`` + ``wavs/<id>.wav``).

    Args:
        root: dataset folder.
        sample_rate: resample to this rate (``None``: the files' common rate).
        use_normalized: use the third (normalised) column when present.
        speaker: speaker label of every item.
        on_bad: ``"error"`` or ``"skip"`` for missing / unreadable audio.
    """

    def __init__(self, root: str | Path, sample_rate: int | None = None,
                 use_normalized: bool = True, speaker: str = "ljspeech", on_bad: str = "error"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"LJSpeech root {root} is not a directory")
        texts = read_metadata_csv(root / "metadata.csv", use_normalized)
        if not texts:
            raise ValueError(f"empty dataset: {root / 'metadata.csv'} lists no utterances")
        entries = [{"path": root / "wavs" / f"{uid}.wav", "text": t, "speaker": speaker,
                    "id": uid} for uid, t in texts.items()]
        super().__init__(root, entries, [], sample_rate, on_bad)


class SpeakerFolderDataset(_SpeechFiles):
    """Speaker-per-folder audio: ``root/<speaker>/*.wav`` with ``<stem>.txt`` transcripts or a
    per-speaker ``metadata.csv`` (``id|text[|normalized_text]``, ids = wav stems).

    Args:
        root: folder of speaker folders.
        sample_rate: resample to this rate (``None``: the files' common rate).
        on_bad: ``"error"`` or ``"skip"`` for missing transcripts, missing or unreadable audio.
    """

    def __init__(self, root: str | Path, sample_rate: int | None = None, on_bad: str = "error"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"speaker-folder root {root} is not a directory")
        entries: list[dict] = []
        problems: list[str] = []
        for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            wavs = sorted(spk_dir.glob("*.wav"))
            meta = spk_dir / "metadata.csv"
            if meta.is_file():
                texts = read_metadata_csv(meta)
                problems += [f"{spk_dir / w.name} (not listed in {meta})" for w in wavs
                             if w.stem not in texts]
                entries += [{"path": spk_dir / f"{uid}.wav", "text": t,
                             "speaker": spk_dir.name, "id": f"{spk_dir.name}/{uid}"}
                            for uid, t in texts.items()]
                continue
            for w in wavs:
                txt = w.with_suffix(".txt")
                if not txt.is_file():
                    problems.append(f"{w} (no transcript {txt.name} and no {meta.name})")
                    continue
                try:
                    text = " ".join(_read_text(txt).split())
                except ValueError as err:
                    problems.append(str(err))
                    continue
                if not text:
                    problems.append(f"{txt} (empty transcript)")
                    continue
                entries.append({"path": w, "text": text, "speaker": spk_dir.name,
                                "id": f"{spk_dir.name}/{w.stem}"})
        if not entries and not problems:
            raise ValueError(f"empty dataset: no <speaker>/*.wav files under {root}")
        super().__init__(root, entries, problems, sample_rate, on_bad)


__all__ = ["LJSpeechDataset", "SpeakerFolderDataset", "read_metadata_csv"]
