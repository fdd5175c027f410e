"""Trainer tasks for action-chunk policies: pi0-style flow matching and Diffusion Policy.

Batches follow the chunk-dataset contract: ``"observation.state"`` (B, S), ``"action"``
(B, H, A), ``"action_is_pad"`` (B, H) bool, ``"task"`` list[str] and optional
``"observation.images.<cam>"`` (B, 3, h, w) in [0, 1]. States and actions are normalised by
a :class:`~modalities.actions.normalize.Normalizer` owned by the model (fitted from
``dataset.stats`` at set-up of a fresh run, saved with the weights); padded chunk steps
are excluded from the loss.

- :class:`FlowPolicyTask` (Black et al. 2024, pi0, sec. IV): linear path
  ``A^t = t A + (1 - t) eps``, target ``u = A - eps``, ``t ~ beta_pi0``; sampling by
  Euler steps against the cached observation prefix.
- :class:`DiffusionPolicyTask` (Chi et al. 2023): DDPM noise prediction on a discrete VP path
  (100 steps, squared-cosine betas), ``L = ||eps_hat(A_k, k, o) - eps||^2``; DDIM sampling.

The instruction (``"task"``) is encoded by a frozen text conditioner held by the task, not
the model (each unique instruction is encoded once and cached); ``text_kind="hash"`` is a
built-in weight-free bag-of-words encoder for tests and CPU demos.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from conditioners.text_backends import TextBackend
from modalities.actions.normalize import Normalizer
from modalities.image.task import text_conditioner, unwrap
from toolkit import paths as paths_mod
from toolkit import timesteps as timesteps_mod
from toolkit.losses import cfm_loss, regression_loss
from toolkit.sampling import sample
from toolkit.train.checkpoint import latest_checkpoint
from toolkit.train.tasks import SamplerSpec, StepContext, Task

__all__ = ["PolicyModel", "FlowPolicyTask", "DiffusionPolicyTask", "HashTextBackend"]

STATE, ACTION, IMAGE = "observation.state", "action", "observation.images."
_HASH_ENCODERS: dict[int, Any] = {}


class HashTextBackend(TextBackend):
    """Weight-free text encoder: each lower-cased word -> a fixed random vector (seeded by
    its CRC32); pooled = mean of the word vectors. Deterministic across processes."""

    def __init__(self, dim: int = 32, max_length: int = 32) -> None:
        super().__init__()
        self.token_dim = self.pooled_dim = int(dim)
        self.max_length, self.fingerprint = int(max_length), f"hash-{dim}-{max_length}"

    def _word(self, w: str) -> Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
        return torch.randn(self.token_dim, generator=g)

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        words = [t.lower().split()[: self.max_length] for t in texts]
        n = max(1, max(len(w) for w in words))
        tok = torch.zeros(len(texts), n, self.token_dim)  # (B, L, D)
        mask = torch.zeros(len(texts), n, dtype=torch.bool)  # (B, L)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                tok[i, j], mask[i, j] = self._word(w), True
        pooled = tok.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, D)
        return tok, mask, pooled


class PolicyModel(nn.Module):
    """The trained module: the network plus its state/action normaliser.

    ``forward(x_t (B,H,A), t (B,), obs) -> (B,H,A)`` with ``obs`` the network's observation
    dict (see :mod:`modalities.actions.nets`).
    """

    def __init__(self, net: nn.Module, normalizer: Normalizer) -> None:
        super().__init__()
        self.net, self.normalizer = net, normalizer

    def forward(self, x_t: Tensor, t: Tensor, obs: Mapping[str, Any]) -> Tensor:
        return self.net(x_t, t, obs)


class _ChunkTask(Task):
    """Shared data path of both policy tasks (normalisation, text, validation)."""

    prediction = "velocity"

    def __init__(self, state_norm: str = "mean_std", action_norm: str = "mean_std",
                 text: bool = False, text_path: str | None = None, text_kind: str = "auto",
                 text_max_length: int | None = None, clip_actions: bool = False,
                 val_batch: int = 32, state_noise: float = 0.0,
                 sampler: SamplerSpec | None = None) -> None:
        if not state_noise >= 0.0:
            raise ValueError(f"state_noise must be >= 0, got {state_noise}")
        self.state_noise = float(state_noise)
        self.modes = {STATE: state_norm, ACTION: action_norm}
        self.use_text, self.text_args = bool(text), (text_path, text_kind, text_max_length)
        self.clip_actions, self.val_size = bool(clip_actions), int(val_batch)
        self.sampler = sampler or SamplerSpec(solver="euler", steps=10)
        self.val_batch: dict[str, Any] | None = None
        self._text = None

    # ------------------------------------------------------------------ text
    @property
    def text(self) -> Any:
        """The frozen text conditioner (None without text; loaded on first use)."""
        if not self.use_text:
            return None
        if self._text is None:
            path, kind, max_len = self.text_args
            if kind == "hash":
                from conditioners.text import TextConditioner

                dim = int(path or 32)
                if dim not in _HASH_ENCODERS:
                    _HASH_ENCODERS[dim] = TextConditioner(
                        backend=HashTextBackend(dim), null="empty", p_drop=0.0, cache_size=0)
                self._text = _HASH_ENCODERS[dim]
            else:
                self._text = text_conditioner(path, kind, max_len)
        return self._text

    # ------------------------------------------------------------------ Task hooks
    def wrap_model(self, net: nn.Module) -> PolicyModel:
        """``net`` + a :class:`Normalizer` for ``observation.state`` (S,) and ``action`` (A,)."""
        for attr in ("state_dim", "action_dim", "horizon"):
            if not hasattr(net, attr):
                raise ValueError(f"the policy network needs attribute {attr!r}")
        text_dim = getattr(net, "text_dim", None)
        if self.use_text and text_dim != self.text.token_dim:
            raise ValueError(f"model.text_dim={text_dim} but the text encoder has token_dim "
                             f"{self.text.token_dim}; set model.text_dim={self.text.token_dim}")
        if text_dim and not self.use_text:
            raise ValueError(f"model.text_dim={text_dim} but task.text is false")
        norm = Normalizer({STATE: (net.state_dim,), ACTION: (net.action_dim,)}, self.modes,
                          clip_actions=self.clip_actions)
        return PolicyModel(net, norm)

    def setup(self, dataset: Any, run_dir: Path, model: nn.Module | None = None) -> None:
        """Check the data's features against the model (and a checkpoint being resumed),
        fit the normaliser on a fresh run, cache instruction embeddings, keep a val batch."""
        m = unwrap(model)
        net, norm = m.net, m.normalizer
        data = {STATE: (int(dataset.state_dim),), ACTION: (int(dataset.action_dim),)}
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:  # resume: the checkpoint's statistics must fit the data
            from safetensors import safe_open

            with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
                state = {k: f.get_slice(k) for k in f.keys() if k.startswith("normalizer.")}
                state = {k: torch.empty(v.get_shape()) for k, v in state.items()}
            theirs = Normalizer.features_in(state, "normalizer.")
            Normalizer({n: s for n, s in theirs.items()}).check_features(
                data, "data", "checkpoint")
        norm.check_features(data, "data", "model")
        if int(dataset.horizon) != net.horizon:
            raise ValueError(f"feature 'action' has horizon {dataset.horizon} in the data but "
                             f"{net.horizon} in the model (set model.horizon)")
        feats = getattr(dataset, "features", {})
        missing = [c for c in getattr(net, "cameras", ()) if IMAGE + c not in feats]
        if missing:
            raise KeyError(f"model cameras {missing} are not in the data's features "
                           f"{sorted(feats)}")
        if not bool(norm.fitted):
            norm.fit(dataset.stats)
        if self.use_text:
            self.text.precompute(list(getattr(dataset, "tasks", [])) or [""])
        if self.val_size > 0 and len(dataset) > 0:
            n = min(self.val_size, len(dataset))
            idx = torch.linspace(0, len(dataset) - 1, n).long().tolist()
            self.val_batch = torch.utils.data.default_collate([dataset[i] for i in idx])

    # ------------------------------------------------------------------ data path
    def model_obs(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A raw observation batch -> the network's observation dict (normalised state,
        camera images, encoded instruction tokens + mask)."""
        m = unwrap(model)
        dev = m.normalizer.fitted.device
        obs: dict[str, Any] = {}
        if STATE in batch:
            obs["state"] = m.normalizer.normalize(STATE, batch[STATE].to(dev).float())
        cams = getattr(m.net, "cameras", ())
        if cams:
            obs["images"] = {c: batch[IMAGE + c].to(dev).float() for c in cams}
        if self.use_text:
            cond = self.text.encode(list(batch["task"]))
            obs["text"], obs["text_mask"] = cond.tokens.to(dev).float(), cond.mask.to(dev)
        return obs

    def train_obs(self, model: nn.Module, batch: Mapping[str, Any], ctx: StepContext
                  ) -> dict[str, Any]:
        """:meth:`model_obs` plus, when ``state_noise > 0``, Gaussian noise of that std on the
        normalised state (training only; noise injection regularises behaviour cloning
        from few demonstrations, e.g. Laskey et al. 2017, DART)."""
        obs = self.model_obs(model, batch)
        if self.state_noise > 0 and "state" in obs:
            s = obs["state"]  # (B, S)
            obs["state"] = s + self.state_noise * ctx.randn(s.shape, dtype=s.dtype).to(s.device)
        return obs

    def _targets(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        a = batch[ACTION]
        if a.ndim != 3:
            raise ValueError(f"batch['action'] must be (B, H, A), got {tuple(a.shape)}")
        x1 = unwrap(model).normalizer.normalize(ACTION, a.float())  # (B, H, A)
        pad = batch.get("action_is_pad")
        if pad is None:
            return x1, torch.ones(a.shape[:2], dtype=torch.bool, device=x1.device)
        valid = ~pad.bool().to(x1.device)  # (B, H)
        # padded steps (past the episode end) hold the last valid action, so whatever the
        # dataset put there never reaches the network; they are also masked out of the loss
        last = (valid.sum(1) - 1).clamp_min(0)  # (B,)
        hold = x1[torch.arange(x1.shape[0], device=x1.device), last]  # (B, A)
        return torch.where(valid[..., None], x1, hold[:, None]), valid

    def chunk_loss(self, model: nn.Module, batch: Mapping[str, Any], ctx: StepContext
                   ) -> Tensor:
        """The objective on one batch (implemented by the two tasks)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, Tensor]:
        """Masked chunk loss (padded steps excluded). Processes hold different numbers of
        valid steps, so the local mean is rescaled to the global batch's
        (:meth:`StepContext.masked_mean`; 1 in one process)."""
        pad = batch.get(ACTION + "_is_pad") if isinstance(batch, Mapping) else None
        loss = self.chunk_loss(model, batch, ctx)
        if pad is not None and ctx.world_size > 1:
            valid = ~pad.bool().to(loss.device)  # (B, H)
            loss = loss * ctx.masked_mean(torch.ones(valid.shape, device=loss.device), valid)
        return {"loss": loss}

    def predict_chunk(self, model: nn.Module, obs_batch: Mapping[str, Any],
                      generator: torch.Generator | None = None, steps: int | None = None,
                      solver: str | None = None) -> Tensor:
        """Unnormalised action chunks ``(B, H, A)`` for a raw observation batch."""
        m = unwrap(model)
        obs = self.model_obs(model, obs_batch)
        b = next(len(v) for k, v in obs_batch.items() if k == STATE or k.startswith(IMAGE)
                 or k == "task")
        x0 = torch.randn(b, m.net.horizon, m.net.action_dim, generator=generator)
        with torch.no_grad():
            x = self.sample_normalized(m, obs, x0.to(m.normalizer.fitted.device), steps, solver)
        return m.normalizer.unnormalize(ACTION, x)

    def sample_normalized(self, model: PolicyModel, obs: Mapping[str, Any], x0: Tensor,
                          steps: int | None, solver: str | None) -> Tensor:
        """Normalised chunks from noise ``x0 (B, H, A)`` (implemented by the two tasks)."""
        raise NotImplementedError

    def validate(self, model: nn.Module, step: int, out_dir: Path,
                 generator: torch.Generator) -> dict[str, float]:
        """Loss on the fixed validation batch and the masked MSE of sampled chunks to the
        ground-truth actions (unnormalised units; no simulator here)."""
        if self.val_batch is None:
            return {}
        vb = self.val_batch
        ctx = StepContext(step, 0, torch.Generator().manual_seed(0))
        with torch.no_grad():
            loss = float(self.chunk_loss(model, vb, ctx))
            chunk = self.predict_chunk(model, vb, generator)  # (B, H, A)
        valid = (~vb["action_is_pad"].bool()).to(chunk.device)[..., None].float()
        err = ((chunk - vb[ACTION].to(chunk.device)) ** 2 * valid).sum()
        res = {"val/loss": loss,
               "val/chunk_mse": float(err / (valid.sum() * chunk.shape[-1]).clamp_min(1))}
        if self.clip_actions:  # reported, not silent
            res["val/clipped_actions"] = float(unwrap(model).normalizer.clipped.get(ACTION, 0))
        plot_chunks(chunk.cpu(), vb[ACTION].cpu(), vb["action_is_pad"].cpu(),
                    out_dir / f"step_{step:08d}.png", title=f"step {step}: sampled (dashed) vs "
                    f"demonstrated (solid) action chunks, MSE {res['val/chunk_mse']:.4f}")
        return res


def plot_chunks(pred: Tensor, true: Tensor, pad: Tensor, path: Path, title: str = "",
                n: int = 4) -> Path:
    """PNG of up to ``n`` validation chunks: one panel per sample, every action dimension
    over the horizon, demonstrated (solid, padded steps hidden) vs sampled (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, pred.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    steps = torch.arange(pred.shape[1])
    for i, ax in enumerate(axes[0]):
        keep = ~pad[i].bool()  # (H,)
        for d in range(pred.shape[2]):
            color = f"C{d % 10}"
            ax.plot(steps[keep], true[i, keep, d], color=color, lw=1.5)
            ax.plot(steps, pred[i, :, d], color=color, lw=1.2, ls="--")
        ax.set_xlabel("chunk step")
        ax.set_title(f"sample {i}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class FlowPolicyTask(_ChunkTask):
    """pi0-style flow matching on normalised action chunks (see the module docstring).

    Args:
        state_norm / action_norm: :mod:`~modalities.actions.normalize` modes.
        t_sampler / t_sampler_kwargs: training-time distribution (pi0's ``beta_pi0``).
        text / text_path / text_kind / text_max_length: frozen instruction encoder
            (``text_kind="hash"``: ``text_path`` is its width, default 32).
        clip_actions: clamp unnormalised actions to the data range (counted).
        val_batch: size of the fixed validation batch. state_noise: std of Gaussian noise
            added to the normalised training states (0: none). sampler: default Euler, 10.
    """

    prediction = "velocity"

    def __init__(self, state_norm: str = "mean_std", action_norm: str = "mean_std",
                 t_sampler: str = "beta_pi0", t_sampler_kwargs: dict[str, Any] | None = None,
                 **kw: Any) -> None:
        super().__init__(state_norm, action_norm, **kw)
        self.path = paths_mod.get("linear")
        self.t_sampler = timesteps_mod.get(t_sampler, **dict(t_sampler_kwargs or {}))

    def chunk_loss(self, model, batch, ctx):
        """``|| v(A^t, t, o) - (A - eps) ||^2`` over valid steps, ``A^t = t A + (1-t) eps``
        (Black et al. 2024, sec. IV; noise at t = 0)."""
        x1, valid = self._targets(model, batch)
        x0 = ctx.randn(x1.shape, dtype=x1.dtype).to(x1.device)  # (B, H, A)
        t = ctx.sample_t(self.t_sampler, x1.shape[0], dtype=x1.dtype).to(x1.device)  # (B,)
        obs = self.train_obs(model, batch, ctx)
        return cfm_loss(model, x1, x0, path=self.path, t=t, cond={"obs": obs},
                        mask=valid).loss

    def velocity_field(self, model: PolicyModel, obs: Mapping[str, Any]
                       ) -> Callable[[Tensor, Tensor], Tensor]:
        """``v(x (B,H,A), t (B,))`` against the prefix of ``obs``, encoded once."""
        cache = model.net.encode_prefix(obs)
        return lambda x, t: model.net.velocity(x, t, cache)

    def sample_normalized(self, model, obs, x0, steps, solver):
        """Euler steps ``A^{t+dt} = A^t + dt v(A^t, t, o)`` (pi0, sec. IV) against the cached
        prefix; any other toolkit solver through :func:`toolkit.sample`."""
        steps = int(steps or self.sampler.steps)
        solver = solver or self.sampler.solver
        net = model.net
        if solver != "euler":
            return sample(self.velocity_field(model, obs), x0, path=self.path, solver=solver,
                          steps=steps)
        cache = net.encode_prefix(obs)
        ts = torch.arange(steps, dtype=torch.float32, device=x0.device) / steps  # (K,)
        biases = net.time_bias(ts)  # (K, Wa): the time MLP part, once per grid
        x, dt = x0, 1.0 / steps
        for k in range(steps):
            tk = ts[k].expand(x.shape[0])
            x = x + dt * net.velocity(x, tk, cache, biases[k].expand(x.shape[0], -1))
        return x


class DiffusionPolicyTask(_ChunkTask):
    """Diffusion Policy (Chi et al. 2023): DDPM noise prediction on normalised chunks.

    Args:
        schedule / num_train_timesteps: the discrete VP path (``cosine`` = DP's
            ``squaredcos_cap_v2``, 100 steps). clip_sample: clip the predicted clean chunk
            to [-1, 1] at every sampling step (as Diffusion Policy does).
            state_norm / action_norm: default ``min_max`` (DP normalises to [-1, 1]).
            Other arguments as :class:`FlowPolicyTask`; sampler: default DDIM, 10 steps.
    """

    prediction = "noise"

    def __init__(self, state_norm: str = "min_max", action_norm: str = "min_max",
                 schedule: str = "cosine", num_train_timesteps: int = 100,
                 clip_sample: bool = True, **kw: Any) -> None:
        kw.setdefault("sampler", None)
        kw["sampler"] = kw["sampler"] or SamplerSpec(solver="ddim", steps=10)
        super().__init__(state_norm, action_norm, **kw)
        self.path = paths_mod.get("vp_discrete", schedule=schedule,
                                  num_train_timesteps=int(num_train_timesteps))
        self.t_sampler = timesteps_mod.get("discrete", path=self.path)
        self.clip_sample = bool(clip_sample)

    def chunk_loss(self, model, batch, ctx):
        """``|| eps_hat(sqrt(abar_k) A + sqrt(1 - abar_k) eps, k, o) - eps ||^2`` over valid
        steps, ``k ~ U{0..N-1}`` (Ho et al. 2020, eq. 14; Chi et al. 2023, sec. III)."""
        x1, valid = self._targets(model, batch)
        x0 = ctx.randn(x1.shape, dtype=x1.dtype).to(x1.device)  # (B, H, A)
        t = ctx.sample_t(self.t_sampler, x1.shape[0], dtype=x1.dtype).to(x1.device)  # (B,)
        obs = self.train_obs(model, batch, ctx)
        return regression_loss(model, x1, self.path, "noise", x0=x0, t=t, cond={"obs": obs},
                               mask=valid).loss

    def sample_normalized(self, model, obs, x0, steps, solver):
        """DDIM (Song et al. 2021; eta = 0) or any toolkit solver, with the observation
        embedding computed once."""
        emb = model.net.encode_obs(obs)
        path = self.path

        def data_pred(x: Tensor, t: Tensor) -> Tensor:
            # x1_hat = (x_t - sigma_t eps_hat) / alpha_t, clipped to the normalised action
            # range [-1, 1] (DDPM's / Diffusion Policy's clip_sample; Ho et al. 2020 code):
            # near pure noise alpha_t -> 0 and the unclipped estimate explodes.
            t64 = t.to(torch.float64)
            a = path.alpha(t64).clamp_min(1e-12).to(x.dtype)[:, None, None]  # (B, 1, 1)
            sig = path.sigma(t64).to(x.dtype)[:, None, None]
            x1 = (x - sig * model.net.denoise(x, t, emb)) / a  # (B, H, A)
            return x1.clamp(-1.0, 1.0) if self.clip_sample else x1

        return sample(data_pred, x0, path=path, prediction="data",
                      solver=solver or self.sampler.solver,
                      steps=int(steps or self.sampler.steps), **dict(self.sampler.options))
