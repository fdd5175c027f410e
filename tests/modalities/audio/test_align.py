"""Monotonic alignment search (optimal and monotonic), length regulation, durations, losses."""

import itertools
import math

import numpy as np
import pytest
import torch

from modalities.audio.align import (
    duration_loss,
    durations_from_log,
    durations_to_alignment,
    gaussian_log_likelihood,
    length_regulate,
    monotonic_alignment_search,
    prior_loss,
    sequence_mask,
)


def _brute_force(lp: np.ndarray) -> float:
    """Best score over all monotonic surjective alignments of lp (N, T)."""
    n, t = lp.shape
    best = -np.inf
    for cuts in itertools.combinations(range(1, t), n - 1):
        b = (0, *cuts, t)
        best = max(best, sum(lp[i, b[i]:b[i + 1]].sum() for i in range(n)))
    return best


def _check_valid(a: np.ndarray, n: int, t: int) -> None:
    """Each valid frame has one token; tokens start at 0, end at n-1, step by 0 or 1."""
    assert a[:, t:].sum() == 0 and a[n:].sum() == 0
    tok = a[:n, :t].argmax(0)
    assert (a[:n, :t].sum(0) == 1).all() and tok[0] == 0 and tok[-1] == n - 1
    assert set(np.diff(tok).tolist()) <= {0, 1}


def test_mas_recovers_a_known_path():
    # scores reward the path with durations (2, 3, 1): MAS must return exactly that
    dur = [2, 3, 1]
    lp = torch.full((1, 3, 6), -5.0)
    want = durations_to_alignment(torch.tensor([dur]))
    lp = lp + 6.0 * want
    a = monotonic_alignment_search(lp, torch.tensor([3]), torch.tensor([6]))
    assert torch.equal(a, want) and a.sum(-1).tolist() == [dur]


def test_mas_is_optimal_and_monotonic_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lp = rng.normal(size=(3, 4, 8))
        nt = rng.integers(1, 5, size=3)
        nm = np.array([rng.integers(k, 9) for k in nt])
        a = monotonic_alignment_search(torch.tensor(lp), torch.tensor(nt), torch.tensor(nm))
        for b in range(3):
            _check_valid(a[b].numpy(), nt[b], nm[b])
            assert math.isclose(float((a[b].numpy() * lp[b]).sum()),
                                _brute_force(lp[b, :nt[b], :nm[b]]), abs_tol=1e-9)


def test_mas_errors_and_device_dtype():
    with pytest.raises(ValueError, match="at least one frame per token"):
        monotonic_alignment_search(torch.zeros(1, 4, 3), torch.tensor([4]), torch.tensor([3]))
    with pytest.raises(ValueError, match="lengths must be"):
        monotonic_alignment_search(torch.zeros(1, 2, 3), torch.tensor([3]), torch.tensor([3]))
    a = monotonic_alignment_search(np.zeros((1, 1, 5)), [1], [5])
    assert a.dtype == torch.float32 and a.sum() == 5


def test_gaussian_log_likelihood_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    mu, x = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 7, generator=g)
    want = torch.distributions.Normal(mu[:, :, :, None], 1.0).log_prob(x[:, :, None]).sum(1)
    assert torch.allclose(gaussian_log_likelihood(mu, x), want, atol=1e-5)


def test_length_regulate_expands_tokens_and_pads():
    h = torch.arange(6.0).view(1, 3, 2).repeat(2, 1, 1)  # (2, 3, 2)
    d = torch.tensor([[2, 0, 3], [1, 1, 0]])
    frames, lengths = length_regulate(h, d)
    assert frames.shape == (2, 5, 2) and lengths.tolist() == [5, 2]
    assert frames[0, :, 0].tolist() == [0, 0, 4, 4, 4]
    assert frames[1, :, 0].tolist() == [0, 2, 0, 0, 0] and frames[1, 2:].abs().sum() == 0
    assert length_regulate(h, d, max_len=7)[0].shape == (2, 7, 2)


def test_durations_from_log_rounds_the_cumulative_sum():
    d_true = torch.tensor([[0.4, 0.4, 0.4, 2.6, 0.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    dur = durations_from_log(torch.log1p(d_true), mask)
    assert dur.sum() == round(3.8) and dur[0, -1] == 0 and (dur >= 0).all()
    assert durations_from_log(torch.log1p(d_true), mask, 2.0).sum() == round(7.6)
    # an untrained predictor (all zeros) still gives >= 1 frame
    assert durations_from_log(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)).sum() == 3


def test_prior_and_duration_losses_are_masked_means():
    x = torch.zeros(1, 2, 4)
    mu = torch.ones(1, 2, 4)
    mu[..., 3] = 100.0  # padded frame: ignored
    mask = sequence_mask(torch.tensor([3]), 4)
    assert math.isclose(float(prior_loss(mu, x, mask)), 0.5)
    pred = torch.log1p(torch.tensor([[1.0, 2.0, 50.0]]))
    dur = torch.tensor([[1, 2, 0]])
    assert float(duration_loss(pred, dur, torch.tensor([[True, True, False]]))) < 1e-12
