"""The trainable text-to-speech model: speaker conditioner, text encoder, duration predictor,
mel decoder, the learned null text condition and the fitted mel normaliser in one module.

``forward(x_t, t, mu=, spk=, mask=)`` is the decoder's velocity (the model that
:func:`toolkit.losses.cfm_loss`, :func:`toolkit.sample` and :func:`toolkit.guidance.multi_cfg`
call); :meth:`TTSModel.encode` and :meth:`TTSModel.speaker_embedding` produce its
conditions. The normaliser's statistics are buffers, so checkpoints carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.speaker import MelReferenceEncoder, SpeakerConditioner
from modalities.audio.features import MelNormalizer
from modalities.audio.nets import DurationPredictor, MelDecoder, TextEncoder
from modalities.audio.text import SYMBOL_SET

SPEAKER_INPUTS = ("id", "reference")


class TTSModel(nn.Module):
    """Matcha-TTS-style acoustic model (Mehta et al. 2024) with CFG nulls for text and speaker.

    Args:
        n_mels: mel bins. n_symbols: phoneme table size (default: the built-in set).
        num_speakers: speaker-id table size (``speaker_input="id"``).
        speaker_input: ``"id"`` (embedding table) or ``"reference"`` (a conv encoder over a
            reference mel with mean pooling over frames).
        spk_dim: speaker embedding width. ref_hidden / ref_layers: reference encoder.
        enc_dim / enc_depth / enc_heads / prenet_layers / enc_dropout: text encoder.
        dp_channels / dp_dropout: duration predictor width and dropout.
        dec_channels / dec_transformer_depth / dec_heads: mel decoder U-Net.
    """

    def __init__(self, n_mels: int = 80, n_symbols: int | None = None, num_speakers: int = 12,
                 speaker_input: str = "id", spk_dim: int = 64, ref_hidden: int = 128,
                 ref_layers: int = 3, enc_dim: int = 192, enc_depth: int = 4, enc_heads: int = 2,
                 prenet_layers: int = 3, enc_dropout: float = 0.1, dp_channels: int = 128,
                 dp_dropout: float = 0.1,
                 dec_channels: tuple[int, ...] | list[int] = (128, 256),
                 dec_transformer_depth: int = 2, dec_heads: int = 4):
        super().__init__()
        if speaker_input not in SPEAKER_INPUTS:
            raise ValueError(f"model.speaker_input must be one of {SPEAKER_INPUTS}, got "
                             f"{speaker_input!r}")
        if speaker_input == "id" and num_speakers < 1:
            raise ValueError(f"model.num_speakers must be >= 1, got {num_speakers}")
        self.n_mels, self.speaker_input = int(n_mels), speaker_input
        self.n_symbols = int(n_symbols or SYMBOL_SET.size)
        self.num_speakers = int(num_speakers)
        ref = (MelReferenceEncoder(n_mels, spk_dim, ref_hidden, ref_layers)
               if speaker_input == "reference" else None)
        self.speaker = SpeakerConditioner(num_speakers if ref is None else None, spk_dim,
                                          ref_encoder=ref, p_drop=0.0, null="learned")
        self.encoder = TextEncoder(self.n_symbols, n_mels, enc_dim, spk_dim, prenet_layers,
                                   depth=enc_depth, heads=enc_heads, dropout=enc_dropout)
        self.duration = DurationPredictor(enc_dim, dp_channels, dropout=dp_dropout)
        self.decoder = MelDecoder(n_mels, tuple(dec_channels), spk_dim, dec_transformer_depth,
                                  dec_heads)
        self.null_mu = nn.Parameter(torch.zeros(n_mels))  # (n_mels,) learned "no text"
        self.normalizer = MelNormalizer(n_mels)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.null_mu.device

    def speaker_embedding(self, values: Any, drop: Tensor | None = None) -> Tensor:
        """Speaker ids ``(B,)`` or ``{"mel": (B, n_mels, T) normalised, "lengths": (B,)}``
        -> ``(B, spk_dim)``; rows with ``drop`` True get the learned null speaker. Reference
        log-mels are raw (natural-log mels); they are normalised here."""
        if isinstance(values, dict):
            values = {"mel": self.normalizer(values["mel"].to(self.device)),
                      "lengths": values.get("lengths")}
        return self.speaker(values, drop=drop).pooled

    def null_speaker(self, batch: int) -> Tensor:
        """The null speaker embedding ``(B, spk_dim)``."""
        return self.speaker.null(batch).pooled

    def null_text(self, mask: Tensor) -> Tensor:
        """The null text condition as frame-aligned ``mu`` ``(B, n_mels, T)`` for ``mask``
        ``(B, T)``."""
        return self.null_mu[None, :, None] * mask[:, None].to(self.null_mu.dtype)

    def encode(self, tokens: Tensor, mask: Tensor, spk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Text encoder and duration predictor.

        Returns:
            ``h (B, N, D)``, ``mu_x (B, n_mels, N)`` (token means in normalised mel space) and
            ``log(1 + d)`` ``(B, N)`` predicted from ``h`` detached (Glow-TTS sec. 3.3: the
            duration loss does not shape the encoder).
        """
        h, mu_x = self.encoder(tokens, mask, spk)
        return h, mu_x, self.duration(h.detach(), mask)

    def forward(self, x: Tensor | None = None, t: Tensor | None = None, mu: Tensor | None = None,
                spk: Tensor | None = None, mask: Tensor | None = None,
                **train: Any) -> Tensor | dict[str, Tensor]:
        """Velocity ``(B, n_mels, T)`` at ``x_t`` ``(B, n_mels, T)``, times ``t (B,)`` given
        frame-aligned ``mu (B, n_mels, T)``, speaker ``spk (B, S)`` and ``mask (B, T)``.

        Called with the keyword arguments of :meth:`losses` instead (``batch=...``), it
        returns the training losses: the whole training computation then runs inside one
        ``forward``, as data-parallel wrappers require.
        """
        if train:
            return self.losses(**train)
        return self.decoder(x, t, mu, spk, mask)

    def losses(self, *, batch: dict[str, Tensor], path: Any, drop_text: Tensor,
               drop_spk: Tensor, times: Tensor, x0: Tensor, seg_start: Tensor,
               speaker_values: Any,
               global_scale: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Matcha-TTS training losses ``L = L_dur + L_prior + L_cfm`` (Mehta et al. 2024,
        sec. 3.2-3.3), with condition dropout for classifier-free guidance.

        Args:
            batch: :func:`~modalities.audio.data.collate_tts` output (raw log-mels).
            path: the probability path of the CFM loss (e.g. OT path, sigma_min 1e-4).
            drop_text / drop_spk: ``(B,)`` bool: decoder gets the null ``mu`` / the encoder,
                duration predictor and decoder get the null speaker.
            times: ``(B,)`` flow times. x0: ``(B, n_mels, S)`` noise of the decoder window.
            seg_start: ``(B,)`` first frame of each sample's decoder window of ``S`` frames.
            speaker_values: ids ``(B,)`` or ``{"mel", "lengths"}`` reference log-mels.
            global_scale: ``mask -> count_local * world / count_global`` (e.g.
                ``StepContext.masked_mean`` of ones): rescales each masked mean (tokens,
                frames, decoder windows) to the global batch's, so several processes train
                like one; None = this process's batch.
        """
        from modalities.audio import align
        from toolkit.losses import cfm_loss

        tokens, tl, ml = batch["tokens"], batch["token_lengths"], batch["mel_lengths"]
        x_mask = align.sequence_mask(tl, tokens.shape[1])  # (B, N)
        y_mask = align.sequence_mask(ml, batch["mel"].shape[-1])  # (B, T)
        x1 = self.normalizer(batch["mel"]) * y_mask[:, None]  # (B, n_mels, T)
        spk = self.speaker_embedding(speaker_values, drop=drop_spk)  # (B, S)
        h, mu_x, log_dur = self.encode(tokens, x_mask, spk)
        with torch.no_grad():  # MAS: Glow-TTS sec. 3.2 (the alignment is not differentiated)
            log_p = align.gaussian_log_likelihood(mu_x.detach(), x1)  # (B, N, T)
            attn = align.monotonic_alignment_search(log_p, tl, ml)  # (B, N, T)
        l_dur = align.duration_loss(log_dur, attn.sum(-1), x_mask)
        mu_y = torch.einsum("bdn,bnt->bdt", mu_x, attn)  # (B, n_mels, T): aligned prior
        l_prior = align.prior_loss(mu_y, x1, y_mask)
        # decoder window of S frames per sample (Matcha-TTS trains on random segments)
        n_seg = x0.shape[-1]
        idx = seg_start[:, None].to(tokens.device) + torch.arange(n_seg, device=x1.device)
        seg_mask = idx < ml[:, None]  # (B, S)
        gather = idx.clamp(max=x1.shape[-1] - 1)[:, None].expand(-1, self.n_mels, -1)
        x1_s = x1.gather(2, gather) * seg_mask[:, None]  # (B, n_mels, S)
        mu_s = mu_y.gather(2, gather) * seg_mask[:, None]
        mu_s = torch.where(drop_text[:, None, None].to(mu_s.device), self.null_text(seg_mask),
                           mu_s)
        # CFM on the OT path: x_t = (1 - (1 - s) t) x0 + t x1, u = x1 - (1 - s) x0
        # (Lipman et al. 2023, eq. 20-23; Matcha-TTS sec. 3.1, eq. 5)
        out = cfm_loss(self.decoder, x1_s, x0, path=path, t=times,
                       cond={"mu": mu_s, "spk": spk, "mask": seg_mask}, mask=seg_mask[:, None])
        l_cfm = out.loss
        if global_scale is not None:  # processes hold different numbers of valid elements
            l_dur = l_dur * global_scale(x_mask)
            l_prior = l_prior * global_scale(y_mask)
            l_cfm = l_cfm * global_scale(seg_mask)
        return {"loss": l_dur + l_prior + l_cfm, "dur": l_dur.detach(),
                "prior": l_prior.detach(), "cfm": l_cfm.detach()}


__all__ = ["SPEAKER_INPUTS", "TTSModel"]
