"""Networks over residue frames: an SE(3)-equivariant IPA frame network and a Euclidean baseline.

:class:`FrameNet` maps noisy frames ``T_t = (R_t, x_t)`` (translations in nm) at flow time t to
predicted clean frames ``T_1_hat``. Node features see only invariants (time, residue index,
motif flags); pair features see relative sequence positions and CA-CA distances of ``x_t``
(and of the self-conditioning prediction). Each block is a compact Invariant Point Attention
(IPA, AlphaFold 2, Jumper et al. 2021, Suppl. Alg. 22) followed by a transition MLP, a cheap
pair update and a backbone update ``T <- T o dT`` (Suppl. Alg. 23), as in FrameDiff / FrameFlow
(Yim et al. 2023). Because every input is invariant and every frame update is composed on the
right, ``FrameNet(g T_t) = g FrameNet(T_t)`` for any global rigid motion g (tested).

:class:`AtomNet` is the Euclidean (non-SE(3)) baseline of the same width and depth: a plain
transformer over residues whose tokens read the raw N, CA, C coordinates and predict clean
coordinates; it only learns the symmetry from random-rotation augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.geometry import so3
from toolkit.geometry.se3 import Rigid
from toolkit.nn.layers import TimestepEmbedding, sincos_1d

__all__ = ["AtomNet", "FrameNet", "InvariantPointAttention", "pair_features",
           "relative_positions"]


def _rbf(d: Tensor, bins: int, max_dist: float) -> Tensor:
    """Gaussian radial basis of distances ``(...,) -> (..., bins)`` on ``[0, max_dist]``."""
    centres = torch.linspace(0.0, max_dist, bins, device=d.device, dtype=d.dtype)
    width = max_dist / bins
    return torch.exp(-(((d[..., None] - centres) / width) ** 2))


def relative_positions(n: int, clip: int, device: torch.device | None = None) -> Tensor:
    """``clip(j - i, -clip, clip) + clip`` as indices ``(N, N)`` in ``[0, 2 clip]``."""
    idx = torch.arange(n, device=device)
    return (idx[None, :] - idx[:, None]).clamp(-clip, clip) + clip


def pair_features(x: Tensor, mask: Tensor, bins: int, max_dist: float,
                  sc: Tensor | None = None) -> Tensor:
    """Invariant distance inputs ``(B, N, N, 2 bins + 1)``: RBF of the CA distances of ``x``
    and of the self-conditioning prediction ``sc`` (zeros and flag 0 when absent); zero on
    padded pairs."""
    b, n, _ = x.shape
    feats = [_rbf(torch.cdist(x, x), bins, max_dist)]  # (B, N, N, bins), distances in nm
    if sc is None:
        feats += [x.new_zeros(b, n, n, bins + 1)]
    else:
        feats += [_rbf(torch.cdist(sc, sc), bins, max_dist), x.new_ones(b, n, n, 1)]
    pm = (mask[:, :, None] & mask[:, None, :]).to(x.dtype)[..., None]  # (B, N, N, 1)
    return torch.cat(feats, -1) * pm


class InvariantPointAttention(nn.Module):
    """IPA (Jumper et al. 2021, Suppl. Alg. 22), written for frames of batch shape ``(B, N)``.

    ``a_ij = softmax_j( w_L [ q_i.k_j / sqrt(c) + b_ij - gamma_h w_C / 2 sum_p
    |T_i q_ip - T_j k_jp|^2 ] )`` with ``w_L = sqrt(1/3)``, ``w_C = sqrt(2 / (9 P_qk))``; the
    output concatenates ``sum_j a_ij v_j``, ``T_i^-1 sum_j a_ij T_j v_jp`` (and its norms) and
    ``sum_j a_ij z_ij``. All of it is invariant to a global rigid motion of the frames.
    """

    def __init__(self, c_s: int, c_z: int, heads: int = 4, c_hidden: int = 16,
                 qk_points: int = 4, v_points: int = 8) -> None:
        super().__init__()
        self.h, self.c, self.pq, self.pv = heads, c_hidden, qk_points, v_points
        self.q = nn.Linear(c_s, heads * c_hidden)
        self.kv = nn.Linear(c_s, 2 * heads * c_hidden)
        self.q_pts = nn.Linear(c_s, heads * qk_points * 3)
        self.kv_pts = nn.Linear(c_s, heads * (qk_points + v_points) * 3)
        self.bias = nn.Linear(c_z, heads)
        self.gamma = nn.Parameter(torch.full((heads,), math.log(math.e - 1.0)))  # softplus -> 1
        out_in = heads * (c_hidden + c_z + v_points * 4)
        self.out = nn.Linear(out_in, c_s)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, s: Tensor, z: Tensor, T: Rigid, mask: Tensor) -> Tensor:
        """``s (B, N, c_s)``, ``z (B, N, N, c_z)``, frames ``(B, N)``, ``mask (B, N)`` bool."""
        b, n, _ = s.shape
        h, c, pq, pv = self.h, self.c, self.pq, self.pv
        q = self.q(s).view(b, n, h, c)
        k, v = self.kv(s).view(b, n, h, 2 * c).split(c, -1)  # (B, N, H, c) each
        # points in local frames -> global: T_i o p
        qp = T.unsqueeze(-1).apply(self.q_pts(s).view(b, n, h * pq, 3)).view(b, n, h, pq, 3)
        kvp = T.unsqueeze(-1).apply(self.kv_pts(s).view(b, n, h * (pq + pv), 3))
        kp, vp = kvp.view(b, n, h, pq + pv, 3).split((pq, pv), -2)
        w_l, w_c = math.sqrt(1.0 / 3.0), math.sqrt(2.0 / (9.0 * pq))
        logits = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(c)  # (B, H, N, N)
        logits = logits + self.bias(z).permute(0, 3, 1, 2)
        # |q_i - k_j|^2 = |q_i|^2 + |k_j|^2 - 2 q_i . k_j, summed over points
        qf, kf = qp.flatten(-2), kp.flatten(-2)  # (B, N, H, 3 P)
        d2 = ((qf ** 2).sum(-1).permute(0, 2, 1)[..., :, None]
              + (kf ** 2).sum(-1).permute(0, 2, 1)[..., None, :]
              - 2.0 * torch.einsum("bihp,bjhp->bhij", qf, kf))  # (B, H, N, N)
        gamma = F.softplus(self.gamma).view(1, h, 1, 1)
        logits = w_l * (logits - 0.5 * gamma * w_c * d2)
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        a = torch.softmax(logits, -1)  # (B, H, N, N)
        o = torch.einsum("bhij,bjhc->bihc", a, v).reshape(b, n, h * c)
        o_pair = torch.einsum("bhij,bijc->bihc", a, z).reshape(b, n, -1)
        o_pt = torch.einsum("bhij,bjhpx->bihpx", a, vp).reshape(b, n, h * pv, 3)
        o_pt = T.unsqueeze(-1).invert_apply(o_pt)  # back to frame i: (B, N, H Pv, 3)
        norm = torch.sqrt((o_pt ** 2).sum(-1) + 1e-8)  # (B, N, H Pv)
        return self.out(torch.cat([o, o_pair, o_pt.flatten(-2), norm], -1))


class _FrameBlock(nn.Module):
    def __init__(self, c_s: int, c_z: int, heads: int, mlp_ratio: float,
                 pair_update: bool) -> None:
        super().__init__()
        self.ipa = InvariantPointAttention(c_s, c_z, heads)
        self.pair_update = pair_update
        self.ln1, self.ln2 = nn.LayerNorm(c_s), nn.LayerNorm(c_s)
        hid = int(c_s * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c_s, hid), nn.GELU(), nn.Linear(hid, c_s))
        if pair_update:
            self.pair_i, self.pair_j = nn.Linear(c_s, c_z), nn.Linear(c_s, c_z, bias=False)
            self.pair_mlp = nn.Sequential(nn.LayerNorm(c_z), nn.Linear(c_z, c_z), nn.GELU(),
                                          nn.Linear(c_z, c_z))
        self.update = nn.Linear(c_s, 6)  # backbone update (Alg. 23): quaternion (b, c, d), t
        nn.init.zeros_(self.update.weight)
        nn.init.zeros_(self.update.bias)

    def forward(self, s: Tensor, z: Tensor, T: Rigid, mask: Tensor, fixed: Tensor | None
                ) -> tuple[Tensor, Tensor, Rigid]:
        s = self.ln1(s + self.ipa(s, z, T, mask))
        s = self.ln2(s + self.mlp(s))
        if self.pair_update:  # cheap edge transition; O(B N^2 c_z^2), off by default on CPU
            z = z + self.pair_mlp(z + self.pair_i(s)[:, :, None] + self.pair_j(s)[:, None, :])
        u = self.update(s)  # (B, N, 6)
        quat = torch.cat([torch.ones_like(u[..., :1]), u[..., :3]], -1)  # (1, b, c, d)
        dT = Rigid(so3.quat_to_matrix(quat), u[..., 3:])  # quat_to_matrix normalises
        keep = mask if fixed is None else mask & ~fixed  # motif frames stay put
        new = T.compose(dT)
        m = keep[..., None]
        T = Rigid(torch.where(m[..., None], new.rots, T.rots), torch.where(m, new.trans, T.trans))
        return s, z, T


class FrameNet(nn.Module):
    """SE(3)-equivariant frame denoiser ``(T_t, t) -> T_1_hat`` (module docstring).

    Args:
        width: node width c_s. pair_width: pair width c_z. depth: IPA blocks. heads: IPA heads.
        mlp_ratio: transition width factor. rel_clip: relative-position clip.
        rbf_bins / max_dist: distance features (nm). max_len: residue-index embedding range.
        pair_update: update the pair representation in every block (an MLP over
            ``z_ij + W s_i + W' s_j``); costs O(N^2) per block, so off by default on CPU.
        num_classes: K enables a class label ``y`` in ``[0, K]`` (K = null, for CFG) added to
            every node (e.g. the inertia class of a rigid-body trajectory).
    """

    def __init__(self, width: int = 128, pair_width: int = 32, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, rel_clip: int = 32, rbf_bins: int = 16,
                 max_dist: float = 2.0, max_len: int = 512, pair_update: bool = False,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls = None if not num_classes else nn.Embedding(num_classes + 1, width)  # K = null
        self.width, self.rel_clip, self.bins, self.max_dist = width, rel_clip, rbf_bins, max_dist
        self.max_len = int(max_len)
        self.time = TimestepEmbedding(width, freq_dim=64)
        self.register_buffer("pos", sincos_1d(max_len, width), persistent=False)
        self.node_in = nn.Sequential(nn.Linear(2 * width + 1, width), nn.GELU(),
                                     nn.Linear(width, width))
        self.rel = nn.Embedding(2 * rel_clip + 1, pair_width)
        self.pair_in = nn.Linear(2 * rbf_bins + 1 + 2, pair_width)
        self.blocks = nn.ModuleList(_FrameBlock(width, pair_width, heads, mlp_ratio, pair_update)
                                    for _ in range(depth))

    def forward(self, T: Rigid, t: Tensor, mask: Tensor, sc: Tensor | None = None,
                fixed: Tensor | None = None, y: Tensor | None = None) -> Rigid:
        """Predicted clean frames.

        Args:
            T: noisy frames, batch shape ``(B, N)``, translations in nm.
            t: ``(B,)`` flow times. mask: ``(B, N)`` bool residues.
            sc: optional ``(B, N, 3)`` self-conditioning CA prediction (nm).
            fixed: optional ``(B, N)`` bool motif residues (given, kept unchanged).
            y: optional ``(B,)`` class labels (``num_classes`` = null; None: null).
        """
        b, n = mask.shape
        if n > self.max_len:
            raise ValueError(f"FrameNet: {n} residues exceed max_len={self.max_len}")
        if T.trans.shape != (b, n, 3):
            raise ValueError(f"FrameNet: frames {tuple(T.trans.shape[:-1])} != mask {(b, n)}")
        fx = torch.zeros_like(mask) if fixed is None else fixed & mask
        s = torch.cat([self.time(t)[:, None].expand(b, n, -1), self.pos[:n].expand(b, n, -1),
                       fx[..., None].to(T.trans.dtype)], -1)
        s = self.node_in(s)
        if self.cls is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, dtype=torch.long, device=s.device)
            if y.shape != (b,) or int(y.min()) < 0 or int(y.max()) > self.num_classes:
                raise ValueError(f"FrameNet: y must be (B,) = ({b},) labels in [0, "
                                 f"{self.num_classes}], got shape {tuple(y.shape)}")
            s = s + self.cls(y)[:, None]
        elif y is not None:
            raise ValueError("FrameNet: got class labels y but num_classes is not set")
        s = s * mask[..., None]
        z = pair_features(T.trans, mask, self.bins, self.max_dist, sc)  # (B, N, N, F)
        both = fx[:, :, None] & fx[:, None, :]
        z = self.pair_in(torch.cat([z, both[..., None].to(z.dtype),
                                    (fx[:, :, None] | fx[:, None, :])[..., None].to(z.dtype)], -1))
        z = z + self.rel(relative_positions(n, self.rel_clip, z.device))  # (B, N, N, c_z)
        for blk in self.blocks:
            s, z, T = blk(s, z, T, mask, fixed)
        return T


class _AttnBlock(nn.Module):
    """Pre-LN transformer block with an additive attention bias ``(B, H, N, N)``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        hid = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hid), nn.GELU(), nn.Linear(hid, width))

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), attn_mask=bias)  # (B, H, N, c)
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return h + self.mlp(self.ln2(h))


class AtomNet(nn.Module):
    """Euclidean baseline ``(x_t (B, N, 3, 3) nm, t) -> x_1_hat`` of N, CA, C coordinates.

    A pre-LN transformer over residues (width, depth and heads as :class:`FrameNet`) whose
    tokens embed the raw coordinates, the time and the residue index; attention has a learned
    relative-position bias. Not equivariant: rotations are learned from augmentation.
    """

    def __init__(self, width: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 rel_clip: int = 32, max_len: int = 512, **_: object) -> None:
        super().__init__()
        self.heads, self.rel_clip, self.max_len = heads, rel_clip, int(max_len)
        self.time = TimestepEmbedding(width, freq_dim=64)
        self.register_buffer("pos", sincos_1d(max_len, width), persistent=False)
        self.inp = nn.Sequential(nn.Linear(9 + 9 + 1 + 2 * width, width), nn.GELU(),
                                 nn.Linear(width, width))
        self.rel = nn.Embedding(2 * rel_clip + 1, heads * depth)
        self.layers = nn.ModuleList(_AttnBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 9))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: Tensor, t: Tensor, mask: Tensor, sc: Tensor | None = None,
                fixed: Tensor | None = None) -> Tensor:
        """``x (B, N, 3, 3)`` nm, ``t (B,)``, ``mask (B, N)``; sc: previous ``x_1_hat``."""
        b, n = mask.shape
        if n > self.max_len:
            raise ValueError(f"AtomNet: {n} residues exceed max_len={self.max_len}")
        fx = torch.zeros_like(mask) if fixed is None else fixed & mask
        scf = x.new_zeros(b, n, 9) if sc is None else sc.reshape(b, n, 9)
        h = torch.cat([x.reshape(b, n, 9), scf, fx[..., None].to(x.dtype),
                       self.time(t)[:, None].expand(b, n, -1), self.pos[:n].expand(b, n, -1)], -1)
        h = self.inp(h)
        bias = self.rel(relative_positions(n, self.rel_clip, x.device)).permute(2, 0, 1)
        keymask = torch.zeros(b, 1, 1, n, dtype=h.dtype, device=h.device)
        keymask = keymask.masked_fill(~mask[:, None, None, :], -1e9)
        for i, layer in enumerate(self.layers):
            h = layer(h, bias[i * self.heads:(i + 1) * self.heads][None] + keymask)
        out = x + self.out(h).view(b, n, 3, 3)  # residual: predict the correction
        return torch.where(fx[..., None, None], x, out) * mask[..., None, None]
