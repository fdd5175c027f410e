"""DiffusionHead: shapes, exact sampling with an oracle field, masked loss, a conditional fit."""

from __future__ import annotations

import pytest
import torch

from toolkit.nn.head import DiffusionHead

MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])  # (K, 2) conditional means
STD = torch.tensor([[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]])  # (K, 2) conditional stds


def _draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 3, (n,), generator=g)
    x = MU[y] + STD[y] * torch.randn(n, 2, generator=g)  # (n, 2)
    return x, torch.nn.functional.one_hot(y, 3).float()


class _Oracle(DiffusionHead):
    """Exact velocity of x | z ~ N(mu_z, diag(s_z^2)) on the linear path, prior N(0, tau^2):
    x_t ~ N(t mu, t^2 s^2 + (1-t)^2 tau^2); v = mu + (t s^2 - (1-t) tau^2)/var (x - t mu)."""

    tau = 1.0

    def forward(self, x, t, z):  # noqa: D102
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])[:, None]
        mu, s2 = z @ MU.to(z), (z @ STD.to(z)) ** 2
        var = t**2 * s2 + (1 - t) ** 2 * self.tau**2
        return mu + (t * s2 - (1 - t) * self.tau**2) / var * (x - t * mu)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_sample_with_oracle_field_matches_conditional_law(tau):
    head = _Oracle(2, 3, width=8, depth=1, solver="heun", steps=48).double()
    head.tau = tau  # the oracle knows the prior the temperature sets
    z = torch.nn.functional.one_hot(torch.arange(3).repeat_interleave(4000), 3).double()
    info: dict = {}
    x = head.sample(z, temperature=tau, generator=torch.Generator().manual_seed(0), info=info)
    assert x.shape == (12000, 2) and info["nfe"] == 2 * 48
    x = x.view(3, 4000, 2)
    assert torch.allclose(x.mean(1), MU.double(), atol=0.03)
    assert torch.allclose(x.std(1), STD.double(), rtol=0.05)


def test_cfg_extrapolates_between_conditions():
    head = _Oracle(2, 3, width=8, depth=1, solver="euler", steps=64).double()
    n = 2000
    z = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), 3).double()
    zu = torch.nn.functional.one_hot(torch.ones(n, dtype=torch.long), 3).double()
    g = torch.Generator().manual_seed(1)
    m1 = head.sample(z, cfg=1.0, z_uncond=zu, generator=g).mean(0)
    m2 = head.sample(z, cfg=2.0, z_uncond=zu, generator=torch.Generator().manual_seed(1)).mean(0)
    # guidance moves the sample mean away from the unconditional class, past the conditional
    assert (m2 - m1) @ (MU[0] - MU[1]).double() > 0.5
    with pytest.raises(ValueError, match="z_uncond"):
        head.sample(z, cfg=2.0)


def test_loss_counts_only_masked_tokens_and_checks_shapes():
    torch.manual_seed(0)
    head = DiffusionHead(4, 6, width=16, depth=1, batch_mul=3)
    nn_init = torch.nn.init
    nn_init.normal_(head.out.weight, std=0.1)
    x, z = torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    x0, t = torch.randn(3, 2, 5, 4), torch.rand(3, 2, 5)
    base = head.loss(x, z, mask, x0=x0, t=t)
    x2 = x.clone()
    x2[~mask] += 10.0  # unmasked tokens do not count
    assert torch.allclose(head.loss(x2, z, mask, x0=x0, t=t), base)
    x2[0, 1] += 1.0
    assert not torch.allclose(head.loss(x2, z, mask, x0=x0, t=t), base)
    # a zero mask gives an exact 0 that still backpropagates
    zero = head.loss(x, z.requires_grad_(), torch.zeros(2, 5), x0=x0, t=t)
    zero.backward()
    assert float(zero.detach()) == 0.0 and z.grad is not None
    with pytest.raises(ValueError, match="tokens must be"):
        head.loss(torch.randn(2, 5, 3), torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="z must be"):
        head.sample(torch.randn(2, 5))
    with pytest.raises(ValueError, match="x0 must be"):
        head.loss(x, torch.randn(2, 5, 6), x0=torch.randn(2, 5, 4))


def test_head_learns_conditional_gaussians():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    head = DiffusionHead(2, 3, width=48, depth=2, batch_mul=4, steps=16)
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    for _ in range(300):
        x, z = _draw(128, g)
        loss = head.loss(x, z, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.nn.functional.one_hot(torch.arange(3).repeat_interleave(3000), 3).float()
    x = head.sample(z, generator=g).view(3, 3000, 2)
    assert (x.mean(1) - MU).abs().max() < 0.15
    assert ((x.std(1) - STD).abs() / STD).max() < 0.3
    # temperature < 1 concentrates samples
    xc = head.sample(z, temperature=0.3, generator=g).view(3, 3000, 2)
    assert (xc.std(1) < x.std(1)).all()
