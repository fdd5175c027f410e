"""User speech folders: LJSpeech layout and speaker-per-folder layout, and their errors."""

import math

import pytest
import torch

from modalities.audio.folder import LJSpeechDataset, SpeakerFolderDataset, read_metadata_csv
from modalities.audio.io import save_wav


def _tone(i: int, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(sr // 10, dtype=torch.float32) / sr
    return 0.3 * torch.sin(2 * math.pi * (200 + 50 * i) * t)


def _ljspeech(root, n=3, sr=16000):
    (root / "wavs").mkdir(parents=True)
    lines = []
    for i in range(n):
        save_wav(root / "wavs" / f"LJ001-{i:04d}.wav", _tone(i, sr), sr)
        norm = f"utterance number {i}" if i != 1 else ""
        lines.append(f"LJ001-{i:04d}|Utterance no. {i}|{norm}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def test_ljspeech_reads_items_and_resamples(tmp_path):
    _ljspeech(tmp_path)
    ds = LJSpeechDataset(tmp_path)
    assert len(ds) == 3 and ds.speakers == ["ljspeech"]
    item = ds[0]
    assert item["text"] == "utterance number 0" and item["sample_rate"] == 16000
    assert item["wave"].shape == (1600,) and item["id"] == "LJ001-0000"
    assert ds[1]["text"] == "Utterance no. 1"  # empty normalised column: raw text
    assert LJSpeechDataset(tmp_path, use_normalized=False)[0]["text"] == "Utterance no. 0"
    up = LJSpeechDataset(tmp_path, sample_rate=22050)[0]
    assert up["sample_rate"] == 22050 and up["wave"].numel() == 2205


def test_ljspeech_missing_and_corrupt_files_are_named(tmp_path):
    _ljspeech(tmp_path)
    (tmp_path / "wavs" / "LJ001-0001.wav").unlink()
    (tmp_path / "wavs" / "LJ001-0002.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match=r"2 problem\(s\).*LJ001-0001\.wav \(missing audio "
                                         r"file\).*LJ001-0002\.wav \(unreadable"):
        LJSpeechDataset(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 bad item"):
        ds = LJSpeechDataset(tmp_path, on_bad="skip")
    assert len(ds) == 1 and len(ds.skipped) == 2


def test_ljspeech_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        LJSpeechDataset(tmp_path)
    meta = tmp_path / "metadata.csv"
    meta.write_text("LJ1|hello|hello\njust-an-id\n")
    with pytest.raises(ValueError, match=r"metadata\.csv line 2: expected 'id\|text"):
        read_metadata_csv(meta)
    meta.write_text("LJ1|hello\nLJ1|again\n")
    with pytest.raises(ValueError, match="line 2: duplicate id 'LJ1'"):
        read_metadata_csv(meta)
    meta.write_text("\n")
    with pytest.raises(ValueError, match="empty dataset"):
        LJSpeechDataset(tmp_path)


def _speakers(root):
    for s, spk in enumerate(["bob", "alice"]):
        d = root / spk
        d.mkdir(parents=True)
        for i in range(2):
            save_wav(d / f"u{i}.wav", _tone(i + s), 16000)
            (d / f"u{i}.txt").write_text(f"  {spk} says\n number {i} ")


def test_speaker_folders_with_txt_and_metadata(tmp_path):
    _speakers(tmp_path)
    carol = tmp_path / "carol"
    carol.mkdir()
    save_wav(carol / "x.wav", _tone(5), 16000)
    (carol / "metadata.csv").write_text("x|carol speaks|carol speaks normalised\n")
    ds = SpeakerFolderDataset(tmp_path)
    assert ds.speakers == ["alice", "bob", "carol"] and len(ds) == 5
    items = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert items["bob/u1"]["text"] == "bob says number 1"
    assert items["bob/u1"]["speaker_id"] == 1
    assert items["carol/x"]["text"] == "carol speaks normalised"


def test_speaker_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="empty dataset"):
        SpeakerFolderDataset(tmp_path)
    _speakers(tmp_path)
    (tmp_path / "bob" / "u1.txt").unlink()
    save_wav(tmp_path / "alice" / "u9.wav", _tone(1, 8000), 8000)
    (tmp_path / "alice" / "u9.txt").write_text("another rate")
    with pytest.raises(ValueError, match=r"bob/u1\.wav \(no transcript u1\.txt"):
        SpeakerFolderDataset(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad item"):
        with pytest.raises(ValueError, match=r"different sample rates \[8000, 16000\]"):
            SpeakerFolderDataset(tmp_path, on_bad="skip")
    with pytest.warns(UserWarning, match=r"bob/u1\.wav"):
        ds = SpeakerFolderDataset(tmp_path, sample_rate=16000, on_bad="skip")
    assert len(ds) == 4 and {ds[i]["sample_rate"] for i in range(4)} == {16000}
    with pytest.raises(FileNotFoundError, match="not a directory"):
        SpeakerFolderDataset(tmp_path / "missing")
