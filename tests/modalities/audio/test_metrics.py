"""Text-to-speech metrics: MCD-DTW, DTW paths, the YIN pitch tracker, PER, duration errors,
the speaker / CTC metric networks (training and cached loading) and `toolkit eval` on a tiny
2-step text-to-speech run."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from modalities.audio import metrics as M
from modalities.audio import recognizers as R
from tests.modalities.audio.conftest import needs_tools
from toolkit.cli import main


def _log_mel(t: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, t)).cumsum(1) * 0.1  # smooth along time
    return x - 4.0 + np.linspace(1.0, -2.0, 80)[:, None]


def test_mcd_of_identical_mels_is_zero_and_grows_with_perturbation():
    x = _log_mel()
    d0, path = M.mcd_dtw(x, x.copy())
    assert d0 == 0.0 and np.array_equal(path[:, 0], path[:, 1])
    rng = np.random.default_rng(1)
    noise = rng.normal(size=x.shape)
    ds = [M.mcd_dtw(x, x + s * noise, trim_db=None)[0] for s in (0.05, 0.2, 0.8)]
    assert 0 < ds[0] < ds[1] < ds[2]
    assert M.mcd_dtw(torch.tensor(x), torch.tensor(x[:, ::2]))[0] < ds[1]  # time-warped copy
    c = M.mel_cepstrum(x, 24)  # ln M = c0 + 2 sum c_k cos(...): a pure c_3 shape
    assert c.shape == (60, 24)
    shape = 2 * np.cos(np.pi * 3 * (np.arange(80) + 0.5) / 80)[:, None] * np.ones((1, 5))
    assert np.allclose(M.mel_cepstrum(shape, 5)[:, 2], 1.0) and np.allclose(
        np.delete(M.mel_cepstrum(shape, 5), 2, 1), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="same n_mels"):
        M.mcd_dtw(x, x[:40])


def test_dtw_path_on_a_known_case():
    a, b = np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 2.0, 2.0])
    cost, path = M.dtw(np.abs(a[:, None] - b[None]))
    assert cost == 0.0
    assert path.tolist() == [[0, 0], [0, 1], [1, 2], [2, 3], [2, 4]]
    c = np.array([[0, 5, 5], [5, 0, 5], [5, 5, 1], [5, 5, 0]], dtype=float)
    cost, path = M.dtw(c)
    assert cost == 1.0 and path.tolist() == [[0, 0], [1, 1], [2, 2], [3, 2]]
    with pytest.raises(ValueError, match="non-empty cost matrix"):
        M.dtw(np.zeros((0, 3)))


@pytest.mark.parametrize("f0", [82.0, 147.0, 231.0, 420.0])
def test_yin_recovers_a_harmonic_tone(f0):
    sr = 22050
    t = np.arange(sr) / sr
    tone = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, 7)) * 0.3
    wave = np.concatenate([np.zeros(sr // 4), tone])  # silence, then the tone
    est, voiced = M.yin_f0(wave, sr)
    assert est.shape == voiced.shape == (len(wave) // 256,)
    assert not voiced[:15].any() and voiced[30:-5].all()
    assert abs(np.median(est[voiced]) / f0 - 1) < 0.02
    assert np.all(np.abs(est[30:-5] / f0 - 1) < 0.02)


def test_f0_errors_on_known_tracks():
    ref, gen = np.array([100.0, 200.0, 0.0, 100.0]), np.array([100.0, 100.0, 150.0, 0.0])
    path = np.stack([np.arange(4)] * 2, 1)
    e = M.f0_errors(ref, gen, path)
    assert e["n_voiced"] == 2 and math.isclose(e["rmse_hz"], math.sqrt(100 ** 2 / 2))
    assert math.isclose(e["rmse_cents"], math.sqrt(1200 ** 2 / 2)) and e["vuv"] == 0.5


def test_edit_distance_and_phoneme_error_rate():
    assert M.edit_distance("kitten", "sitting") == 3
    assert M.edit_distance("", "abc") == 3 and M.edit_distance("həloʊ", "həloʊ") == 0
    assert M.edit_distance(["ð", "ə"], ["ə"]) == 1
    assert M.phoneme_error_rate(["abcd", "ef"], ["abxd", ""]) == 3 / 6
    with pytest.raises(ValueError, match="equally many"):
        M.phoneme_error_rate(["a"], [])
    assert R.recognition_target("ðə kˈæt, ɹˌæn.") == "ðəkætɹæn"


def test_duration_errors_map_phones_through_the_path():
    fs = 0.01
    phones = [["pau", 0.05], ["k", 0.1], ["ae", 0.2], ["t", 0.1], ["pau", 0.05]]  # 50 frames
    ident = np.stack([np.arange(50)] * 2, 1)
    e = M.duration_errors(0.5, 0.5, phones, ident, fs)
    assert e["total_rel"] == 0 and e["n_phones"] == 3 and e["phone_mae_s"] == pytest.approx(0)
    stretched = np.stack([np.repeat(np.arange(50), 2), np.arange(100)], 1)  # twice as slow
    e = M.duration_errors(0.5, 1.0, phones, stretched, fs)
    assert e["total_rel"] == pytest.approx(1.0)
    assert e["phone_mae_s"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)
    with pytest.raises(ValueError, match="reference duration"):
        M.duration_errors(0.0, 1.0)


@pytest.fixture(scope="module")
def tiny_data(tts_run):
    from modalities.audio.corpus import CorpusConfig, SpeechCorpus
    from modalities.audio.data import SpeechDataset
    from modalities.audio.features import MelConfig

    root = tts_run.parent
    cc = CorpusConfig(n_utterances=8, n_sentences=8, n_speakers=3, heldout_fraction=0.125)
    out = []
    for split in ("train", "heldout"):
        src = SpeechCorpus(split, cc, root / "speech")
        out.append(SpeechDataset(src, MelConfig(), cache_dir=root / "mels",
                                 speakers=src.speakers))
    return out


@needs_tools
def test_metric_nets_train_and_load_from_cache(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    train, held = tiny_data
    mc = train.mel_config
    cfg = R.MetricNetConfig(dim=16, intermediate=32, n_blocks=1, epochs=3, crop_frames=64)
    models = {}
    for kind in ("speaker", "phoneme"):
        models[kind], info = R.load_or_train(kind, train, mc, cfg, tmp_path, heldout=held)
        assert info["metrics"]["n_train"] == 7 and info["metrics"]["n_heldout"] == 1
        assert 0 <= info["metrics"]["heldout_resynth"] <= (1 if kind == "speaker" else 10)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 == len(list(tmp_path.glob("*.json")))

    train_net = R.train_metric_net

    def boom(*a, **k):
        raise AssertionError("cached metric net was retrained")

    monkeypatch.setattr(R, "train_metric_net", boom)
    mels = [m.float() for m in held.mels]
    spk, info = R.load_or_train("speaker", train, mc, cfg, tmp_path)
    assert spk.predict(mels) == models["speaker"].predict(mels)
    assert info["speakers"] == train.speakers and spk.predict(mels)[0] in train.speakers
    rec, _ = R.load_or_train("phoneme", train, mc, cfg, tmp_path)
    assert rec.transcribe(mels) == models["phoneme"].transcribe(mels)
    with pytest.raises(ValueError, match="kind must be"):
        train_net("words", mels, ["x"], [], mc)
    with pytest.raises(ValueError, match=r"speaker labels \['nobody'\]"):
        train_net("speaker", mels, ["nobody"], train.speakers, mc, cfg)


@needs_tools
def test_toolkit_eval_on_a_tiny_tts_run(tts_run, tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(tts_run, run)
    rc = main(["eval", f"checkpoint={run}", "n=3", "steps=2", "gl_iters=2", "seed=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "generated (audio)" in out and "real-time factor" in out and "eval.json" in out
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 1 and res["sampler"]["steps"] == 2  # the tiny held-out split has 1
    for key in ("real", "resynth", "generated", "generated_mel"):
        assert 0 <= res["speaker_acc"][key] <= 1 and res["per"][key] >= 0
    assert res["mcd_db"]["generated"] > res["mcd_db"]["resynth"] >= 0
    assert set(res["rtf"]) == {"threads_1"} and res["rtf"]["threads_1"] > 0
    assert math.isfinite(res["duration"]["total_rel"])
    assert res["metric_nets"]["speaker"]["n_train"] == 7
    wavs = sorted(p.name for p in (run / "eval").glob("*.wav"))
    assert len(wavs) == 3 and any(w.endswith("_generated.wav") for w in wavs)
    assert (run / "eval" / "mels.png").stat().st_size > 1000
    assert main(["eval", f"checkpoint={run}", "n=0"]) == 2
    assert "need n, gl_iters, batch_size >= 1" in capsys.readouterr().err


def test_eval_needs_a_speech_corpus_run():
    from omegaconf import OmegaConf

    from modalities.audio.tts_eval import run_corpus

    cfg = OmegaConf.create({"data": {"_target_": "modalities.audio.data.ljspeech_dataset"}})
    with pytest.raises(ValueError, match="needs a run trained on data=speech_corpus.*ljspeech"):
        run_corpus(cfg)
