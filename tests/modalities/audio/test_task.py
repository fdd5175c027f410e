"""TextToSpeechTask: separate text / speaker dropout, a 2-step Trainer run on a tiny corpus,
sampling through the API and `toolkit sample` (WAV of duration * hop samples + mel plot),
guidance scales, reference-mel speakers and input errors."""

import json

import pytest
import soundfile as sf
import torch

from modalities.audio import TTS
from modalities.audio.model import TTSModel
from modalities.audio.task import TextToSpeechTask
from tests.modalities.audio.conftest import needs_tools, tiny_tts_overrides
from toolkit.cli import main
from toolkit.train import compose_recipe, train_recipe
from toolkit.train.tasks import StepContext


def _batch(b: int = 6, n_mels: int = 80) -> dict:
    g = torch.Generator().manual_seed(1)
    tl = torch.randint(3, 9, (b,), generator=g)
    ml = tl * 3 + torch.randint(0, 5, (b,), generator=g)
    tokens = torch.randint(2, 40, (b, int(tl.max())), generator=g)
    tokens[torch.arange(tokens.shape[1])[None] >= tl[:, None]] = 0
    return {"tokens": tokens, "token_lengths": tl, "mel_lengths": ml,
            "mel": torch.randn(b, n_mels, int(ml.max()), generator=g) - 5,
            "speaker": torch.arange(b) % 3, "index": torch.arange(b)}


def _spy_loss(p_text: float, p_spk: float, b: int = 6) -> tuple[TTSModel, dict, dict]:
    torch.manual_seed(0)
    m = TTSModel(num_speakers=3, spk_dim=8, enc_dim=16, enc_depth=1, prenet_layers=1,
                 dp_channels=8, dec_channels=[8, 16], dec_heads=2)
    m.normalizer.fit(torch.randn(2, 80, 10) - 5)
    with torch.no_grad():
        m.null_mu.fill_(7.0)  # recognisable null text condition
    task = TextToSpeechTask(segment_frames=16, p_drop_text=p_text, p_drop_speaker=p_spk)
    seen = {}
    real = m.decoder.forward

    def spy(x, t, mu, spk, mask):
        seen.update(mu=mu.detach(), spk=spk.detach(), mask=mask)
        return real(x, t, mu, spk, mask)

    m.decoder.forward = spy
    ctx = StepContext(0, 0, torch.Generator().manual_seed(0))
    out = task.loss(m, _batch(b), ctx)
    assert torch.isfinite(out["loss"]) and set(out) >= {"dur", "prior", "cfm"}
    return m, seen, out


def test_text_dropout_replaces_mu_only():
    m, seen, out = _spy_loss(1.0, 0.0)
    assert float(out["drop_text"]) == 1.0 and float(out["drop_spk"]) == 0.0
    null = m.null_text(seen["mask"])
    assert torch.equal(seen["mu"], null) and null[seen["mask"][:, None].expand_as(null)].eq(7).all()
    assert not torch.allclose(seen["spk"], m.null_speaker(6))


def test_speaker_dropout_replaces_speaker_only():
    m, seen, out = _spy_loss(0.0, 1.0)
    assert float(out["drop_text"]) == 0.0 and float(out["drop_spk"]) == 1.0
    assert torch.equal(seen["spk"], m.null_speaker(6).detach())
    assert not (seen["mu"] == 7).any()


def test_dropout_masks_are_drawn_separately():
    m, seen, out = _spy_loss(0.5, 0.5, b=64)
    text = (seen["mu"] == 7).flatten(1).any(1)  # rows with the null text
    spk = (seen["spk"] == m.null_speaker(64)).all(1)
    assert 0 < text.sum() < 64 and 0 < spk.sum() < 64 and not torch.equal(text, spk)
    assert float(out["drop_text"]) == float(text.float().mean())


@needs_tools
def test_two_step_run_writes_assets_and_samples(tts_run):
    info = json.loads((tts_run / "speakers.json").read_text())
    assert len(info["speakers"]) == 3 and info["refs"] is None
    assert any((tts_run / "samples").glob("step_00000002*.png"))
    wavs = sorted((tts_run / "samples").glob("step_00000002_*.wav"))
    assert wavs and sf.info(str(wavs[0])).samplerate == 22050
    metrics = [json.loads(r) for r in (tts_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2]
    assert all(k in metrics[0] for k in ("dur", "prior", "cfm", "drop_text", "drop_spk"))


@needs_tools
def test_sample_cli_writes_a_wav_of_duration_times_hop(tts_run, tmp_path, capsys):
    tts = TTS.from_pretrained(tts_run)
    spk = tts.speakers[0]
    frames = tts.mel("the quick brown fox", speaker=spk, steps=2).shape[-1]
    out = tmp_path / "fox.wav"
    rc = main(["sample", f"checkpoint={tts_run}", "text=the quick brown fox",
               f"speaker={spk.split('_')[-1]}", f"out={out}", "steps=2", "gl_iters=2"])
    assert rc == 0 and str(out) in capsys.readouterr().out
    wave, sr = sf.read(str(out))
    assert sr == 22050 and wave.ndim == 1 and len(wave) == frames * 256 and abs(wave).max() > 0
    assert out.with_suffix(".png").stat().st_size > 1000
    w, sr2 = tts.synthesize("the quick brown fox", speaker=spk, steps=2, gl_iters=2,
                            length_scale=2.0)
    assert sr2 == 22050 and abs(len(w) / 256 - 2 * frames) <= 2


@needs_tools
def test_bad_inputs_name_the_problem(tts_run, capsys):
    tts = TTS.from_pretrained(tts_run)
    with pytest.raises(ValueError, match="unknown speaker 'nobody'; valid speakers: en_f3"):
        tts.mel("hello", speaker="nobody")
    with pytest.raises(ValueError, match="empty text"):
        tts.mel("   ")
    with pytest.raises(ValueError, match="outside the phoneme symbol set: '7'"):
        tts.mel(phonemes="hɛlo 7")
    assert main(["sample", f"checkpoint={tts_run}", "text=hi", "speaker=nobody"]) == 2
    assert "valid speakers:" in capsys.readouterr().err
    assert main(["sample", f"checkpoint={tts_run}", "text="]) == 2
    assert "empty text" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a run trained with model.speaker_input=ref"):
        tts.mel("hello", reference=torch.zeros(80, 20))


@needs_tools
def test_guidance_scales(tts_run):
    tts = TTS.from_pretrained(tts_run)
    kw = dict(speaker=0, steps=2, seed=3)
    plain = tts.mel("a small red rabbit", w_text=1.0, w_spk=1.0, **kw)  # the recipe guides
    nested = tts.mel("a small red rabbit", w_text=1 + 1e-9, w_spk=1 + 1e-9, **kw)
    assert torch.allclose(plain, nested, atol=1e-4)  # multi_cfg at (1, 1) = conditional
    text_cfg = tts.mel("a small red rabbit", w_text=1 + 1e-9, w_spk=1.0, **kw)
    assert torch.allclose(plain, text_cfg, atol=1e-4)
    assert not torch.allclose(plain, tts.mel("a small red rabbit", **kw), atol=1e-3)  # w_text 2
    uncond = tts.mel("a small red rabbit", w_text=0.0, w_spk=0.0, **kw)
    no_spk = tts.mel("a small red rabbit", w_text=1.0, w_spk=0.0, **kw)
    assert uncond.shape == plain.shape and not torch.allclose(uncond, no_spk)
    assert torch.isfinite(tts.mel("a small red rabbit", w_text=2.0, w_spk=1.5, **kw)).all()
    # a guidance interval that no Euler time reaches is the conditional model, exactly
    off = tts.mel("a small red rabbit", w_text=2.0, w_spk=1.5, guidance_interval=(1.0, 1.0), **kw)
    assert torch.allclose(off, plain, atol=1e-5)
    half = tts.mel("a small red rabbit", w_text=2.0, w_spk=1.5, guidance_interval=(0.0, 0.5), **kw)
    assert not torch.allclose(half, plain, atol=1e-3)
    with pytest.raises(ValueError, match="guidance_interval"):
        tts.mel("a small red rabbit", w_text=2.0, guidance_interval=(0.6, 0.2), **kw)


@needs_tools
def test_reference_mel_speakers(tmp_path):
    torch.set_num_threads(1)
    over = tiny_tts_overrides(tmp_path, "model.speaker_input=reference", "task.ref_frames=24",
                              "task.val_audio=false")
    train_recipe(compose_recipe("text2speech_cfm", over))
    run = tmp_path / "run"
    assert json.loads((run / "speakers.json").read_text())["refs"] == "speaker_refs.pt"
    tts = TTS.from_pretrained(run)
    assert tts.task.speaker_refs.shape == (3, 80, 24)
    a = tts.mel("hello there", speaker="kal16", steps=2)
    ref_wav = next((tmp_path / "speech").glob("*/wavs/*.wav"))
    b = tts.mel("hello there", reference=ref_wav, steps=2)
    assert a.shape[0] == b.shape[0] == 80 and torch.isfinite(b).all()
