"""Using a trained text-to-speech run: the :class:`TTS` API, mel plots, and ``toolkit sample``.

>>> from modalities.audio import TTS
>>> tts = TTS.from_pretrained("runs/text2speech_cfm")
>>> wave, sr = tts.synthesize("the quick brown fox", speaker="f3")   # (L,) float32, Hz
>>> tts.save("fox.wav", "the quick brown fox", speaker="en_f3")       # + fox.png (mel plot)

Waveforms come from Griffin-Lim on the generated log-mels (:class:`GriffinLim`, training-free;
muffled and phasey compared with a neural vocoder) unless a ``vocoder`` callable
``log_mel (1, n_mels, T) -> wave (1, L)`` is given (e.g. a trained
:class:`~modalities.audio.vocoder.IStftVocoder`). ``T`` mel frames give ``T * hop`` samples
with the HiFi-GAN front-end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modalities.audio.features import MelConfig, MelSpec
from modalities.audio.io import load_audio, save_wav

_GL: dict[tuple, Any] = {}


def vocode(log_mel: Tensor, config: MelConfig, n_iter: int = 32) -> Tensor:
    """Griffin-Lim waveform ``(L,)`` of one log-mel ``(n_mels, T)`` (peak-limited to 0.95)."""
    from modalities.audio.vocoder import GriffinLim

    key = (config, int(n_iter))
    if key not in _GL:
        _GL[key] = GriffinLim(config, n_iter=int(n_iter))
    wave = _GL[key](log_mel.detach().cpu().float())  # (L,)
    peak = float(wave.abs().max())
    return wave * (0.95 / peak) if peak > 0.95 else wave


def save_mel_png(path: str | Path, mels: Sequence[Tensor], titles: Sequence[str] | None = None
                 ) -> Path:
    """Plot log-mels ``(n_mels, T_i)`` one above the other (frames on x, mel bin on y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(mels)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), squeeze=False)
    for k, mel in enumerate(mels):
        ax = axes[k, 0]
        ax.imshow(mel.detach().cpu().float().numpy(), origin="lower", aspect="auto",
                  cmap="magma", interpolation="nearest")
        ax.set_ylabel("mel bin")
        if titles is not None:
            ax.set_title(str(titles[k])[:90], fontsize=8)
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


class TTS:
    """A trained text-to-speech run, ready to speak.

    Args:
        model: the :class:`~modalities.audio.model.TTSModel` (eval mode).
        task: its :class:`~modalities.audio.task.TextToSpeechTask` (speakers loaded).
    """

    def __init__(self, model: torch.nn.Module, task: Any):
        self.model, self.task = model.eval(), task

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, checkpoint: str = "latest",
                        device: str = "cpu") -> TTS:
        """Load a ``toolkit train recipe=text2speech_cfm`` run directory (EMA weights)."""
        from toolkit.train.checkpoint import load_run

        model, task, _, _ = load_run(run_dir, checkpoint)
        if not hasattr(task, "synthesize"):
            raise ValueError(f"{run_dir} is not a text-to-speech run (task "
                             f"{type(task).__name__})")
        return cls(model.to(device), task)

    @property
    def speakers(self) -> list[str]:
        """Speaker names, in index order."""
        return list(self.task.speakers)

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz."""
        return int(self.task.mel_config.sample_rate)

    def reference_mel(self, wav: str | Path) -> Tensor:
        """Log-mel ``(n_mels, T)`` of a reference recording (resampled to the model's rate)."""
        wave, _ = load_audio(wav, sample_rate=self.sample_rate)
        with torch.no_grad():
            return MelSpec(self.task.mel_config)(wave)

    def mel(self, text: str | None = None, speaker: str | int | None = None, *,
            phonemes: str | None = None, reference: str | Path | Tensor | None = None,
            seed: int = 0, **kw: Any) -> Tensor:
        """Generated log-mel ``(n_mels, T)`` for ``text`` (or IPA ``phonemes``).

        Args:
            text: sentence to speak (phonemised with espeak-ng). speaker: a name from
                :attr:`speakers` (a unique suffix such as ``"f3"`` works) or an index;
                default the first speaker. phonemes: IPA string instead of ``text``.
            reference: reference recording (path or log-mel) for reference-encoder runs.
            seed: prior noise seed. kw: ``length_scale, steps, solver, w_text, w_spk,
                temperature`` (defaults: the run's task settings).
        """
        if phonemes is None:
            if text is None or not str(text).strip():
                raise ValueError('empty text: give a sentence to speak, e.g. text="hello"')
            phonemes = self.task.phonemes(str(text))
        ref = None
        if reference is not None:
            ref = reference if isinstance(reference, Tensor) else self.reference_mel(reference)
        values = self.task.speaker_values(self.model, None if speaker is None else [speaker],
                                          1, reference=ref)
        gen = torch.Generator().manual_seed(int(seed))
        mels, lengths = self.task.synthesize(self.model, [phonemes], values, gen, **kw)
        return mels[0, :, :int(lengths[0])]

    def synthesize(self, text: str | None = None, speaker: str | int | None = None, *,
                   vocoder: Callable[[Tensor], Tensor] | None = None, gl_iters: int = 32,
                   **kw: Any) -> tuple[np.ndarray, int]:
        """Waveform ``(L,)`` float32 in ``[-1, 1]`` and its sample rate; ``kw`` as in
        :meth:`mel`. Griffin-Lim (``gl_iters``) unless ``vocoder`` is given."""
        mel = self.mel(text, speaker, **kw)
        if vocoder is not None:
            with torch.no_grad():
                wave = vocoder(mel[None].to(self.model.device))[0].float().cpu()
        else:
            wave = vocode(mel, self.task.mel_config, gl_iters)
        return wave.numpy().astype(np.float32), self.sample_rate

    def save(self, path: str | Path, text: str | None = None, speaker: str | int | None = None,
             **kw: Any) -> tuple[Path, Path, dict[str, float]]:
        """Write ``path`` (WAV) and a mel plot next to it (same name, ``.png``).

        Returns ``(wav path, png path, {"seconds": audio length, "synthesis_s": time})``."""
        vocoder, gl_iters = kw.pop("vocoder", None), kw.pop("gl_iters", 32)
        t0 = time.perf_counter()
        mel = self.mel(text, speaker, **kw)
        if vocoder is not None:
            with torch.no_grad():
                wave = vocoder(mel[None].to(self.model.device))[0].float().cpu()
        else:
            wave = vocode(mel, self.task.mel_config, gl_iters)
        sec = time.perf_counter() - t0
        wav = save_wav(path, wave, self.sample_rate)
        label = text if text is not None else kw.get("phonemes", "")
        who = ("reference" if kw.get("reference") is not None
               else self.speakers[self.task.speaker_index(0 if speaker is None else speaker)])
        png = save_mel_png(Path(path).with_suffix(".png"), [mel], [f"{who}: {label}"])
        return wav, png, {"seconds": wave.shape[-1] / self.sample_rate, "synthesis_s": sec,
                          "frames": float(mel.shape[-1])}


def sample_tts_run(run_dir: str | Path, text: str | None, *, speaker: str | None = None,
                   phonemes: str | None = None, ref: str | None = None, out: str | None = None,
                   seed: int = 0, checkpoint: str = "latest", **kw: Any
                   ) -> tuple[Path, Path, dict[str, float]]:
    """``toolkit sample checkpoint=RUN_DIR text="..." speaker=NAME out=out.wav``: one WAV
    (default ``RUN_DIR/samples/tts_<seed>.wav``) and its mel plot (``.png`` beside it)."""
    if text is None and phonemes is None:
        raise ValueError('toolkit sample: give text="..." (or phonemes="...") to speak')
    tts = TTS.from_pretrained(run_dir, checkpoint)
    if speaker is not None:
        tts.task.speaker_index(speaker)  # unknown speaker: error listing the valid ones
    path = Path(out) if out else Path(run_dir) / "samples" / f"tts_{seed}.wav"
    return tts.save(path, text, speaker, phonemes=phonemes, reference=ref, seed=seed,
                    **{k: v for k, v in kw.items() if v is not None})


__all__ = ["TTS", "sample_tts_run", "save_mel_png", "vocode"]
