"""The implicit-feedback RBM's math on a tiny case, against an exact expectation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from rbm.implicit import (
    combine_implicit,
    implicit_cd_statistics,
    implicit_config,
    implicit_hidden_input,
    log_p_rated,
    log_sigmoid,
)
from rbm.model import RatingsBatch, RBMParams
from rbm.scoring import Scorer

M, F = 4, 2
RATED = [[0, 2], [1]]  # the movies each of two users rated


def _params() -> RBMParams:
    w = torch.tensor([[0.8, -1.1], [1.2, 0.4], [-0.9, 1.3], [0.3, 0.6]])
    return RBMParams(w, torch.tensor([-0.5, 0.2, -1.0, 0.1]), torch.tensor([0.3, -0.4]))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _by_hand(p: RBMParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected CD-1 statistics: the hidden sample summed over all 2^F configurations."""
    w, b, c = (t.double().numpy() for t in (p.weights, p.visible_bias, p.hidden_bias))
    dw, db, dc = np.zeros_like(w), np.zeros_like(b), np.zeros_like(c)
    for rated in RATED:
        v = [1.0 if m in rated else 0.0 for m in range(M)]
        ph0 = [_sigmoid(c[j] + sum(v[m] * w[m, j] for m in range(M))) for j in range(F)]
        for m in range(M):
            db[m] += v[m]
            for j in range(F):
                dw[m, j] += v[m] * ph0[j]
        dc += ph0
        for h in itertools.product((0, 1), repeat=F):
            weight = math.prod(ph0[j] if h[j] else 1 - ph0[j] for j in range(F))
            pv = [_sigmoid(b[m] + sum(w[m, j] * h[j] for j in range(F))) for m in range(M)]
            ph1 = [_sigmoid(c[j] + sum(pv[m] * w[m, j] for m in range(M))) for j in range(F)]
            for m in range(M):
                db[m] -= weight * pv[m]
                for j in range(F):
                    dw[m, j] -= weight * pv[m] * ph1[j]
            for j in range(F):
                dc[j] -= weight * ph1[j]
    return dw, db, dc


def test_implicit_cd1_statistics_match_a_hand_computation() -> None:
    copies = 40_000
    visible = torch.zeros(len(RATED) * copies, M)
    for u, rated in enumerate(RATED):
        visible[u :: len(RATED), rated] = 1.0
    stats = implicit_cd_statistics(_params(), visible, torch.Generator().manual_seed(0))
    dw, db, dc = _by_hand(_params())
    np.testing.assert_allclose(stats.weights.numpy() / copies, dw, atol=0.01)
    np.testing.assert_allclose(stats.visible_bias.numpy() / copies, db, atol=0.01)
    np.testing.assert_allclose(stats.hidden_bias.numpy() / copies, dc, atol=0.01)


def test_hidden_input_ignores_the_rating_value() -> None:
    p = _params()
    low = RatingsBatch(torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([0, 0]), 1)
    high = RatingsBatch(torch.tensor([0, 0]), torch.tensor([0, 2]), torch.tensor([4, 3]), 1)
    want = p.hidden_bias + p.weights[0] + p.weights[2]
    torch.testing.assert_close(implicit_hidden_input(p, low)[0], want)
    torch.testing.assert_close(implicit_hidden_input(p, high)[0], want)
    assert implicit_config(M, F).n_visible == M


def test_log_sigmoid_is_exact_far_in_the_tail() -> None:
    x = torch.tensor([-80.0, -30.0, -9.9, -1.0, 0.0, 1.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(log_sigmoid(x), torch.nn.functional.logsigmoid(x))


def test_rated_ranking_uses_the_implicit_part_of_the_input() -> None:
    softmax = RBMParams(torch.zeros(2 * M, 3), torch.zeros(2 * M), torch.zeros(3))
    implicit = _params()
    scorer = Scorer(softmax, torch.tensor([1.0, 5.0]), "rated", implicit=implicit)
    pre = torch.cat([torch.zeros(1, 3), torch.tensor([[0.7, -0.2]])], dim=1)  # (1, F + F')
    scores, expected = scorer(pre, torch.tensor([-1]))
    torch.testing.assert_close(scores, log_p_rated(implicit, pre[:, 3:]))
    torch.testing.assert_close(expected, torch.full((1, M), 3.0))  # uniform over {1, 5}


def test_several_implicit_rbms_serve_the_mean_of_their_logits() -> None:
    gen = torch.Generator().manual_seed(11)
    members = [
        RBMParams(torch.randn(M, F, generator=gen), torch.randn(M, generator=gen), torch.randn(F))
        for _ in range(3)
    ]
    combined = combine_implicit(members)
    assert tuple(combined.weights.shape) == (M, 3 * F)
    batch = RatingsBatch(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.zeros(3).long(), 2)
    pre = implicit_hidden_input(combined, batch)  # the members' pre-activations side by side
    for r, member in enumerate(members):
        torch.testing.assert_close(
            pre[:, r * F : (r + 1) * F], implicit_hidden_input(member, batch)
        )
    softmax = RBMParams(torch.zeros(2 * M, 3), torch.zeros(2 * M), torch.zeros(3))
    scorer = Scorer(
        softmax, torch.tensor([1.0, 5.0]), "rated", implicit=combined, implicit_scale=1 / 3
    )
    scores, _ = scorer(torch.cat([torch.zeros(2, 3), pre], dim=1), torch.tensor([-1, -1]))
    logits = torch.stack(
        [
            torch.sigmoid(pre[:, r * F : (r + 1) * F]) @ m.weights.t() + m.visible_bias
            for r, m in enumerate(members)
        ]
    ).mean(0)
    torch.testing.assert_close(scores, log_sigmoid(logits))
    assert combine_implicit(members[:1]) is members[0]
