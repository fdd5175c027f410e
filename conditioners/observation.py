"""Robot observation conditioning: proprioceptive state, camera images, instruction text.

Each present modality becomes tokens of one width D, concatenated as a prefix for a policy
backbone (as diffusion policies / pi0 condition an action expert on observation tokens,
Chi et al. 2023; Black et al. 2024): one token for the normalised state (MLP), one token
per camera (a small CNN, :class:`ImageEncoder`), and the instruction's tokens from any text
conditioner, projected to D. The pooled vector is the mean of the per-modality summaries.
The robot-policy issue brings stronger vision towers; this fixes the interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.base import Condition, Conditioner

__all__ = ["ImageEncoder", "ObservationConditioner"]


class ImageEncoder(nn.Module):
    """A small CNN: ``(B, C, H, W)`` -> ``(B, out_dim)`` (strided convs + global mean pool).

    Args:
        in_channels: image channels. out_dim: output size. width: channels of the first
            conv (doubled per stage). stages: strided 3x3 conv stages.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 256, width: int = 32,
                 stages: int = 3) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        for s in range(stages):
            c_out = width * 2**s
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Images -> features ``(B, out_dim)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ImageEncoder: images must be (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        return self.out(self.body(x).mean(dim=(-2, -1)))


class ObservationConditioner(Conditioner):
    """Observation dict -> ``Condition(pooled (B, D), tokens (B, L, D), mask (B, L))``.

    Args:
        dim: token / pooled width D.
        state_dim: size of the state vector (None = no state).
        cameras: camera names (images expected under ``values["images"][name]``).
        text: a text conditioner for ``values["instruction"]`` (None = no instruction);
            its own dropout is not used, the observation is dropped as a whole.
        image_channels: channels of camera images. p_drop / null: see Conditioner.

    Values: ``{"state": (B, S), "images": {cam: (B, C, H, W)}, "instruction": [str]}``
    (``images`` may also be a ``(B, N_cam, C, H, W)`` tensor in ``cameras`` order).
    """

    def __init__(
        self, dim: int = 256, *, state_dim: int | None = None, cameras: Sequence[str] = (),
        text: Conditioner | None = None, image_channels: int = 3, p_drop: float = 0.1,
        null: str = "learned",
    ) -> None:
        super().__init__(p_drop, null)
        if state_dim is None and not cameras and text is None:
            raise ValueError("ObservationConditioner: configure at least one of state_dim, "
                             "cameras, text")
        if text is not None and text.token_dim is None:
            raise ValueError("ObservationConditioner: the text conditioner must produce tokens")
        self.state_dim, self.cameras = state_dim, tuple(cameras)
        self.state_mlp = (nn.Sequential(nn.Linear(state_dim, dim), nn.SiLU(),
                                        nn.Linear(dim, dim)) if state_dim else None)
        if state_dim:
            self.register_buffer("state_mean", torch.zeros(state_dim))
            self.register_buffer("state_std", torch.ones(state_dim))
        self.image_encoders = nn.ModuleDict(
            {c: ImageEncoder(image_channels, dim) for c in self.cameras})
        self.text = text
        self.text_proj = nn.Linear(text.token_dim, dim) if text is not None else None
        self.text_pool_proj = (nn.Linear(text.pooled_dim, dim)
                               if text is not None and text.pooled_dim else None)
        self._init_null(dim, dim, 1)

    def set_state_stats(self, mean: Tensor, std: Tensor, eps: float = 1e-6) -> None:
        """Normalise states as ``(s - mean) / std`` (statistics of the training data)."""
        if self.state_dim is None:
            raise ValueError("ObservationConditioner: no state_dim configured")
        self.state_mean.copy_(torch.as_tensor(mean).reshape(self.state_dim))
        self.state_std.copy_(torch.as_tensor(std).reshape(self.state_dim).clamp_min(eps))

    def batch_size_of(self, values: Mapping[str, Any]) -> int:
        """Batch size of the first present entry."""
        if "state" in values:
            return values["state"].shape[0]
        if "instruction" in values:
            return len(values["instruction"])
        imgs = values["images"]
        return (next(iter(imgs.values())) if isinstance(imgs, Mapping) else imgs).shape[0]

    def _images(self, values: Mapping[str, Any]) -> list[Tensor]:
        imgs = values.get("images")
        if imgs is None:
            raise KeyError(f"ObservationConditioner: missing 'images' for cameras {self.cameras}")
        if isinstance(imgs, Tensor):
            if imgs.ndim != 5 or imgs.shape[1] != len(self.cameras):
                raise ValueError(f"ObservationConditioner: images tensor must be (B, "
                                 f"{len(self.cameras)}, C, H, W), got {tuple(imgs.shape)}")
            return [imgs[:, i] for i in range(len(self.cameras))]
        missing = [c for c in self.cameras if c not in imgs]
        if missing:
            raise KeyError(f"ObservationConditioner: missing camera(s) {missing}; got "
                           f"{sorted(imgs)}")
        return [imgs[c] for c in self.cameras]

    def encode(self, values: Mapping[str, Any]) -> Condition:
        """Observation dict -> Condition."""
        if not isinstance(values, Mapping):
            raise TypeError(f"ObservationConditioner: expected a dict of observations, got "
                            f"{type(values).__name__}")
        tokens: list[Tensor] = []  # each (B, n, D)
        masks: list[Tensor] = []
        summaries: list[Tensor] = []  # each (B, D)
        if self.state_mlp is not None:
            if "state" not in values:
                raise KeyError("ObservationConditioner: missing 'state'")
            s = torch.as_tensor(values["state"], device=self.device).float()
            if s.ndim != 2 or s.shape[1] != self.state_dim:
                raise ValueError(f"ObservationConditioner: state must be (B, {self.state_dim}),"
                                 f" got {tuple(s.shape)}")
            e = self.state_mlp((s - self.state_mean) / self.state_std)  # (B, D)
            tokens.append(e[:, None])
            summaries.append(e)
        for cam, img in zip(self.cameras, self._images(values) if self.cameras else [],
                            strict=False):
            e = self.image_encoders[cam](img.to(self.device).float())  # (B, D)
            tokens.append(e[:, None])
            summaries.append(e)
        for e in tokens:
            masks.append(torch.ones(e.shape[:2], dtype=torch.bool, device=e.device))
        if self.text is not None:
            if "instruction" not in values:
                raise KeyError("ObservationConditioner: missing 'instruction'")
            c = self.text(values["instruction"])
            tokens.append(self.text_proj(c.tokens))  # (B, Lt, D)
            masks.append(c.full_mask())
            if self.text_pool_proj is not None:
                summaries.append(self.text_pool_proj(c.pooled))
        b = {t.shape[0] for t in tokens}
        if len(b) != 1:
            raise ValueError(f"ObservationConditioner: observation entries have different "
                             f"batch sizes {sorted(b)}")
        pooled = torch.stack(summaries, 0).mean(0) if summaries else tokens[0].mean(1)
        return Condition(pooled, torch.cat(tokens, 1), torch.cat(masks, 1))
