"""EMA math: decay warm-up formula, the update rule, frozen parameters and buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.train.ema import EMA, ema_decay_at


def test_decay_warmup_formula():
    # d_k = min(decay, 1 - (1 + k / inv_gamma)^-power)
    assert ema_decay_at(1, 0.999, power=1.0) == pytest.approx(0.5)
    assert ema_decay_at(3, 0.999, power=0.5) == pytest.approx(1 - 4 ** -0.5)
    assert ema_decay_at(10**9, 0.999) == 0.999
    assert ema_decay_at(5, 0.9, warmup=False) == 0.9
    assert ema_decay_at(5, 0.9, start_step=5) == 0.0  # before start: copy
    ds = [ema_decay_at(k, 0.9999) for k in range(1, 200)]
    assert all(a < b for a, b in zip(ds, ds[1:]))  # increasing during warm-up


def test_update_matches_manual_recursion():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.9, warmup=False)
    expect = {n: p.detach().clone() for n, p in net.named_parameters()}
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # changes BatchNorm running stats
        d = ema.update(net)
        assert d == 0.9
        for n, p in net.named_parameters():
            expect[n] = 0.9 * expect[n] + 0.1 * p.detach()
    for n, p in ema.model.named_parameters():
        torch.testing.assert_close(p, expect[n], rtol=1e-6, atol=1e-6)
        assert not torch.equal(p, dict(net.named_parameters())[n])
    # buffers are copied, not averaged
    torch.testing.assert_close(ema.model[1].running_mean, net[1].running_mean)
    assert ema.num_updates == 5


def test_frozen_params_are_copied_and_state_roundtrips():
    net = nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    ema = EMA(net, decay=0.99, warmup=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    ema.update(net)
    assert torch.equal(ema.model.bias, net.bias)  # frozen: copied
    assert not torch.equal(ema.model.weight, net.weight)  # averaged
    other = EMA(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict(), ema.num_updates)
    assert torch.equal(other.model.weight, ema.model.weight) and other.num_updates == 1


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 2), decay=1.0)
