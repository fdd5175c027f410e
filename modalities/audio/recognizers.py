"""Metric networks for text-to-speech evaluation: a speaker classifier and a CTC phoneme
recogniser, trained by the toolkit on the speech corpus' train split and cached.

Both read log-mels through :class:`MelEncoder`: per-bin standardisation (statistics of the
training mels), a strided convolution (``stride`` x fewer frames) and 1-D ConvNeXt blocks
(Liu et al., 2022; :class:`~modalities.audio.vocoder.ConvNeXtBlock`).

* :class:`SpeakerClassifier`: masked temporal mean pooling and a linear layer over speakers.
* :class:`PhonemeRecognizer`: per-frame logits over :data:`~modalities.audio.text.SYMBOL_SET`
  trained with CTC (Graves et al., 2006; the symbol set's blank is the CTC blank), greedy
  decoding (best path: argmax, merge repeats, drop blanks). Targets are the corpus' espeak-ng
  IPA without stress marks, word boundaries and punctuation (:func:`recognition_target`).

Training augments the mels (gain, spectral tilt, noise, a raised floor, temporal smoothing,
SpecAugment masks; Park et al., 2019) so that Griffin-Lim resynthesis and generated mels are
read fairly. Models are cached under ``$TOOLKIT_CACHE/speech_metrics`` (``~/.cache/toolkit``
by default) as ``KIND-KEY.safetensors`` + ``.json`` (the key hashes the corpus folder, the mel
front-end and the config), written atomically; the json keeps the held-out ceilings.

On the default corpus (450 train / 50 held-out utterances, 12 speakers; one CPU thread) the
speaker classifier trains in about 25 s and scores 100% on held-out real audio and on its
Griffin-Lim resynthesis; the recogniser trains in about 2 minutes to a held-out PER of about
7% on both.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from modalities.audio.features import MelConfig
from modalities.audio.text import SYMBOL_SET
from modalities.audio.vocoder import ConvNeXtBlock
from toolkit.files import atomic_write, cache_root

_VERSION = 1
IGNORED = " !'\"(),-.:;?ˈˌ"  # not recognised: word boundaries, punctuation, stress marks


@dataclass(frozen=True)
class MetricNetConfig:
    """Architecture and training of a metric network (every field enters the cache key).

    Attributes:
        dim / intermediate / n_blocks / kernel_size: ConvNeXt trunk. stride: frame stride.
        epochs: passes over the train split. batch_size: utterances per step. lr: peak AdamW
            learning rate (one-cycle). crop_frames: random training crops (0: whole
            utterances). augment: mel augmentation. seed: initialisation and batching.
    """

    dim: int = 96
    intermediate: int = 192
    n_blocks: int = 4
    kernel_size: int = 7
    stride: int = 2
    epochs: int = 40
    batch_size: int = 16
    lr: float = 3e-3
    crop_frames: int = 0
    augment: bool = True
    seed: int = 0


SPEAKER_DEFAULTS = MetricNetConfig(n_blocks=3, epochs=20, batch_size=32, crop_frames=128)
PHONEME_DEFAULTS = MetricNetConfig()


class MelEncoder(nn.Module):
    """Standardised log-mels ``(B, n_mels, T)`` -> features ``(B, ceil(T / stride), dim)``."""

    def __init__(self, n_mels: int, config: MetricNetConfig):
        super().__init__()
        c = config
        self.stride = c.stride
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.stem = nn.Conv1d(n_mels, c.dim, 5, stride=c.stride, padding=2)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(c.dim, c.intermediate, c.kernel_size)
                                      for _ in range(c.n_blocks)))
        self.norm = nn.LayerNorm(c.dim)

    def out_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames ``ceil(T / stride)`` for input frames ``(B,)``."""
        return torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")

    def forward(self, mel: Tensor) -> Tensor:
        """Features ``(B, ceil(T / stride), dim)`` of raw log-mels ``(B, n_mels, T)``."""
        if mel.dim() != 3 or mel.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected log-mels (B, {self.mean.shape[0]}, T), got shape "
                             f"{tuple(mel.shape)}")
        x = (mel - self.mean[:, None]) / self.std[:, None]  # (B, n_mels, T)
        h = self.blocks(self.stem(x))  # (B, dim, T')
        return self.norm(h.transpose(1, 2))  # (B, T', dim)


class SpeakerClassifier(nn.Module):
    """Speaker logits from log-mels; :meth:`predict` returns speaker names."""

    def __init__(self, n_mels: int, speakers: Sequence[str], config: MetricNetConfig):
        super().__init__()
        self.speakers = list(speakers)
        self.encoder = MelEncoder(n_mels, config)
        self.head = nn.Linear(config.dim, len(self.speakers))

    def forward(self, mel: Tensor, lengths: Tensor) -> Tensor:
        """Logits ``(B, n_speakers)`` for ``mel (B, n_mels, T)`` with ``lengths (B,)``."""
        h = self.encoder(mel)  # (B, T', dim)
        n = self.encoder.out_lengths(lengths).clamp(1, h.shape[1])
        mask = (torch.arange(h.shape[1])[None] < n[:, None]).to(h)  # (B, T')
        pooled = (h * mask[..., None]).sum(1) / n[:, None].to(h)  # masked mean over time
        return self.head(pooled)

    @torch.no_grad()
    def predict(self, mels: Sequence[Tensor]) -> list[str]:
        """Speaker name per log-mel ``(n_mels, T_i)`` (one utterance at a time)."""
        self.eval()
        out = [int(self(m.float()[None], torch.tensor([m.shape[-1]])).argmax(-1)) for m in mels]
        return [self.speakers[i] for i in out]


class PhonemeRecognizer(nn.Module):
    """CTC phoneme recogniser over :data:`SYMBOL_SET`; :meth:`transcribe` decodes greedily."""

    def __init__(self, n_mels: int, config: MetricNetConfig):
        super().__init__()
        self.encoder = MelEncoder(n_mels, config)
        self.head = nn.Linear(config.dim, SYMBOL_SET.size)

    def forward(self, mel: Tensor) -> Tensor:
        """Log-probabilities ``(B, T', n_symbols)``."""
        return self.head(self.encoder(mel)).log_softmax(-1)

    @torch.no_grad()
    def transcribe(self, mels: Sequence[Tensor]) -> list[str]:
        """Best-path decoding per log-mel ``(n_mels, T_i)``: argmax per frame, merge repeats,
        drop blanks (Graves et al., 2006)."""
        self.eval()
        out = []
        for m in mels:
            best = self(m.float()[None])[0].argmax(-1)  # (T',)
            keep = torch.ones_like(best, dtype=torch.bool)
            keep[1:] = best[1:] != best[:-1]
            out.append(SYMBOL_SET.decode(best[keep & (best != SYMBOL_SET.blank_id)].tolist()))
        return out


def recognition_target(phonemes: str) -> str:
    """The symbols a recogniser transcribes: NFC IPA without :data:`IGNORED` characters."""
    return "".join(c for c in unicodedata.normalize("NFC", phonemes) if c not in IGNORED)


def augment(mel: Tensor, gen: torch.Generator, floor: float) -> Tensor:
    """Random gain, spectral tilt, Gaussian noise, raised floor, temporal smoothing and
    SpecAugment masks (Park et al., 2019) on log-mels ``(B, n_mels, T)``."""
    b, nm, t = mel.shape

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape or (b, 1, 1), generator=gen)

    tilt = u(-0.5, 0.5) * torch.linspace(-1.0, 1.0, nm)[None, :, None]
    x = mel + u(-0.7, 0.7) + tilt + u(0.0, 0.3) * torch.randn(mel.shape, generator=gen)
    x = torch.maximum(x, torch.where(u(0, 1) < 0.5, u(floor, floor + 5.0), torch.full_like(
        tilt[:, :1], floor)))
    smooth = F.avg_pool1d(x, 3, 1, 1, count_include_pad=False)
    x = torch.where(u(0, 1) < 0.3, smooth, x)
    f0, fw = (u(0, nm, b, 1, 1)).long(), u(0, 10, b, 1, 1).long()
    t0, tw = (u(0, t, b, 1, 1)).long(), u(0, 6, b, 1, 1).long()
    fi, ti = torch.arange(nm)[None, :, None], torch.arange(t)[None, None, :]
    masked = ((fi >= f0) & (fi < f0 + fw)) | ((ti >= t0) & (ti < t0 + tw))
    return torch.where(masked, x.mean((1, 2), keepdim=True), x)


def _batch(mels: Sequence[Tensor], floor: float) -> tuple[Tensor, Tensor]:
    """Pad log-mels ``(n_mels, T_i)`` with the log floor -> ``(B, n_mels, T)``, ``(B,)``."""
    lengths = torch.tensor([m.shape[-1] for m in mels])
    out = torch.full((len(mels), mels[0].shape[0], int(lengths.max())), floor)
    for i, m in enumerate(mels):
        out[i, :, :m.shape[-1]] = m.float()
    return out, lengths


def _batches(lengths: Sequence[int], bs: int, n: int, gen: torch.Generator
             ) -> list[list[int]]:
    """``n`` batches of ``bs`` random items, similar lengths together (less padding): groups
    of ``8 bs`` random items are sorted by length and cut into batches, in random order."""
    order = torch.randperm(len(lengths), generator=gen)[:n * bs].tolist()
    out = []
    for g in range(0, len(order), 8 * bs):
        group = sorted(order[g:g + 8 * bs], key=lambda i: lengths[i])
        out += [group[k:k + bs] for k in range(0, len(group), bs)]
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def train_metric_net(kind: str, mels: Sequence[Tensor], labels: Sequence[Any],
                     speakers: Sequence[str], mel_config: MelConfig,
                     config: MetricNetConfig | None = None,
                     log: Callable[[str], None] | None = None) -> nn.Module:
    """Train a ``"speaker"`` classifier (labels: speaker names) or a ``"phoneme"`` recogniser
    (labels: IPA strings) on log-mels ``(n_mels, T_i)``. Returns the model in eval mode."""
    from toolkit.train.steps import supervised_step

    if kind not in ("speaker", "phoneme"):
        raise ValueError(f"kind must be 'speaker' or 'phoneme', got {kind!r}")
    if not mels or len(mels) != len(labels):
        raise ValueError(f"need >= 1 mels and one label each, got {len(mels)} and {len(labels)}")
    c = config or (SPEAKER_DEFAULTS if kind == "speaker" else PHONEME_DEFAULTS)
    floor, nm = math.log(mel_config.log_floor), mel_config.n_mels
    torch.manual_seed(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    if kind == "speaker":
        unknown = sorted(set(labels) - set(speakers))
        if unknown:
            raise ValueError(f"speaker labels {unknown} are not in the speaker list {speakers}")
        model: nn.Module = SpeakerClassifier(nm, speakers, c)
        targets = [torch.tensor(list(speakers).index(s)) for s in labels]
    else:
        model = PhonemeRecognizer(nm, c)
        targets = [torch.tensor(SYMBOL_SET.encode(recognition_target(p), add_blank=False))
                   for p in labels]
    cat = torch.cat([m.float() for m in mels], -1)  # (n_mels, sum T)
    model.encoder.mean.copy_(cat.mean(1))
    model.encoder.std.copy_(cat.std(1) + 1e-3)
    bs = min(c.batch_size, len(mels))
    per_epoch = max(1, len(mels) // bs)
    total = c.epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, c.lr, total_steps=total, pct_start=0.15)
    model.train()
    step = 0
    for _ in range(c.epochs):
        for idx in _batches([m.shape[-1] for m in mels], bs, per_epoch, gen):
            items = [mels[i].float() for i in idx]
            if c.crop_frames:
                starts = [int(torch.randint(0, max(1, m.shape[-1] - c.crop_frames) + 1, (1,),
                                            generator=gen)) for m in items]
                items = [m[:, s:s + c.crop_frames] for m, s in zip(items, starts)]
            x, lengths = _batch(items, floor)  # (B, n_mels, T), (B,)
            if c.augment:
                x = augment(x, gen, floor)
            if kind == "speaker":
                loss = F.cross_entropy(model(x, lengths), torch.stack([targets[i] for i in idx]))
            else:
                logp = model(x)  # (B, T', V)
                tg = [targets[i] for i in idx]
                loss = F.ctc_loss(logp.transpose(0, 1), torch.cat(tg),
                                  model.encoder.out_lengths(lengths),
                                  torch.tensor([len(t) for t in tg]),
                                  blank=SYMBOL_SET.blank_id, zero_infinity=True)
            supervised_step(loss, opt, sched, step=step, total=total, what=f"{kind} metric net",
                            log=log, log_every=200)
            step += 1
    return model.eval()


def default_cache_dir() -> Path:
    """``$TOOLKIT_CACHE/speech_metrics`` if set, else ``~/.cache/toolkit/speech_metrics``."""
    return cache_root("speech_metrics")


def load_or_train(kind: str, corpus: Any, mel_config: MelConfig,
                  config: MetricNetConfig | None = None, cache_dir: str | Path | None = None,
                  heldout: Any = None, log: Callable[[str], None] | None = None
                  ) -> tuple[nn.Module, dict]:
    """The cached ``kind`` network for a corpus, trained and cached on first use.

    Args:
        kind: ``"speaker"`` or ``"phoneme"``.
        corpus: the train split as a :class:`~modalities.audio.data.SpeechDataset` (its
            ``mels``, ``phonemes``, ``speakers``, ``speaker_index`` and ``key``).
        mel_config: the front-end of those mels. config: default per kind.
        cache_dir: default :func:`default_cache_dir`.
        heldout: optional :class:`~modalities.audio.data.SpeechDataset` of the held-out split,
            scored after training (:func:`ceilings`) and stored in the json.

    Returns:
        ``(model in eval mode, info)``; ``info["metrics"]`` holds the held-out ceilings and
        ``train_seconds``.
    """
    c = config or (SPEAKER_DEFAULTS if kind == "speaker" else PHONEME_DEFAULTS)
    blob = json.dumps({"v": _VERSION, "kind": kind, "data": corpus.key,
                       "mel": mel_config.to_dict(), "config": asdict(c)}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights, meta = folder / f"{kind}-{key}.safetensors", folder / f"{kind}-{key}.json"
    if weights.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        cfg = MetricNetConfig(**info["config"])
        model: nn.Module = (SpeakerClassifier(mel_config.n_mels, info["speakers"], cfg)
                            if kind == "speaker" else PhonemeRecognizer(mel_config.n_mels, cfg))
        model.load_state_dict(load_file(weights))
        return model.eval(), info
    t0 = time.perf_counter()
    names = [corpus.speakers[k] for k in corpus.speaker_index]
    labels = names if kind == "speaker" else list(corpus.phonemes)
    model = train_metric_net(kind, [m.float() for m in corpus.mels], labels, corpus.speakers,
                             mel_config, c, log)
    metrics: dict[str, Any] = {"train_seconds": time.perf_counter() - t0,
                               "n_train": len(corpus.mels)}
    if heldout is not None:
        metrics.update(ceilings(model, heldout, mel_config))
    info = {"kind": kind, "config": asdict(c), "speakers": list(corpus.speakers),
            "data": corpus.key, "mel": mel_config.to_dict(), "metrics": metrics}
    atomic_write(weights, lambda p: save_file({k: v.contiguous()
                                          for k, v in model.state_dict().items()}, p))
    atomic_write(meta, lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    return model, info


def resynthesize(log_mel: Tensor, mel_config: MelConfig, gl_iters: int = 32
                 ) -> tuple[Tensor, Tensor]:
    """Griffin-Lim waveform ``(L,)`` of a log-mel ``(n_mels, T)`` and its log-mel again."""
    from modalities.audio.features import MelSpec
    from modalities.audio.synth import vocode

    wave = vocode(log_mel.float(), mel_config, gl_iters)  # (L,)
    with torch.no_grad():
        return wave, MelSpec(mel_config)(wave)


def score(model: nn.Module, mels: Sequence[Tensor], labels: Sequence[str]) -> float:
    """Accuracy (speaker names) or PER (IPA strings) of a metric network on log-mels."""
    from modalities.audio.metrics import phoneme_error_rate

    if isinstance(model, SpeakerClassifier):
        pred = model.predict(mels)
        return sum(p == t for p, t in zip(pred, labels)) / len(labels)
    hyps = model.transcribe(mels)
    return phoneme_error_rate([recognition_target(t) for t in labels], hyps)


_RESYNTH: dict[tuple, list[Tensor]] = {}


def ceilings(model: nn.Module, heldout: Any, mel_config: MelConfig, gl_iters: int = 32
             ) -> dict[str, float]:
    """Scores on held-out real log-mels (``heldout_real``) and on their Griffin-Lim
    resynthesis (``heldout_resynth``: mel -> Griffin-Lim -> mel)."""
    is_spk = isinstance(model, SpeakerClassifier)
    labels = ([heldout.speakers[k] for k in heldout.speaker_index] if is_spk
              else list(heldout.phonemes))
    real = [m.float() for m in heldout.mels]
    key = (getattr(heldout, "key", id(heldout)), mel_config, gl_iters)
    if key not in _RESYNTH:  # shared by the two networks' ceilings
        _RESYNTH.clear()
        _RESYNTH[key] = [resynthesize(m, mel_config, gl_iters)[1] for m in real]
    resyn = _RESYNTH[key]
    return {"heldout_real": score(model, real, labels),
            "heldout_resynth": score(model, resyn, labels), "n_heldout": len(real)}


__all__ = ["IGNORED", "PHONEME_DEFAULTS", "SPEAKER_DEFAULTS", "MelEncoder", "MetricNetConfig",
           "PhonemeRecognizer", "SpeakerClassifier", "augment", "ceilings", "default_cache_dir",
           "load_or_train", "recognition_target", "resynthesize", "score", "train_metric_net"]
