"""Small reference networks for tests and toy problems, and the image / sequence backbones.

Backbones follow ``net(x_t, t, cond=Condition | None)``: :class:`DiT` and :class:`UNet` for
images ``(B, C, H, W)``, :class:`SeqTransformer` for sequences ``(B, L, D)`` (per-token
times and attention masks accepted); :class:`TimeMLP` for vectors.
"""

from toolkit.nn.dit import DiT
from toolkit.nn.head import DiffusionHead
from toolkit.nn.layers import ConditionLike, param_count
from toolkit.nn.mlp import TimeMLP, sinusoidal_embedding
from toolkit.nn.seq import SeqTransformer, block_causal_mask, causal_mask
from toolkit.nn.unet import UNet

__all__ = [
    "TimeMLP", "sinusoidal_embedding", "DiT", "UNet", "SeqTransformer", "param_count",
    "ConditionLike", "causal_mask", "block_causal_mask", "DiffusionHead",
]
