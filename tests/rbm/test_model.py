"""The RBM math on tiny cases, against hand computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rbm.model import (
    RatingsBatch,
    RBMConfig,
    RBMParams,
    cd_statistics,
    entry_level_probabilities,
    hidden_input,
    level_probabilities,
    visible_units,
)
from rbm.scoring import Scorer

# 3 movies, 2 levels, 2 hidden units: small enough to sum over every hidden configuration.
CFG = RBMConfig(n_movies=3, n_levels=2, n_hidden=2)
USERS = [[(0, 1), (2, 0)], [(1, 1)]]  # (movie, level) pairs each user rated


def _params() -> RBMParams:
    w = torch.tensor(
        [
            [0.9, -1.2],
            [1.3, 0.5],
            [-1.4, 1.2],  # level 0 of movies 0, 1, 2
            [1.2, 1.1],
            [-1.1, 1.3],
            [1.5, -1.3],
        ]
    )  # level 1 of movies 0, 1, 2
    return RBMParams(w, torch.tensor([0.0, 0.1, -0.1, 0.2, 0.0, 0.3]), torch.tensor([0.3, -0.2]))


def _batch(copies: int = 1) -> RatingsBatch:
    rows, movies, levels = [], [], []
    for c in range(copies):
        for u, user in enumerate(USERS):
            for movie, level in user:
                rows.append(c * len(USERS) + u)
                movies.append(movie)
                levels.append(level)
    return RatingsBatch(
        torch.tensor(rows), torch.tensor(movies), torch.tensor(levels), copies * len(USERS)
    )


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _by_hand(p: RBMParams) -> tuple[np.ndarray, ...]:
    """Expected CD-1 statistics, with explicit loops over users, hidden samples and levels.

    The hidden sample h ~ P(h | v) is summed over exactly (all 2^F configurations); the
    reconstruction and the last hidden layer are probabilities, as in cd_statistics.
    """
    w, vb, hb = (t.double().numpy() for t in (p.weights, p.visible_bias, p.hidden_bias))
    m, n_levels, f = CFG.n_movies, CFG.n_levels, CFG.n_hidden
    dw, dvb, dhb = np.zeros_like(w), np.zeros_like(vb), np.zeros_like(hb)
    for user in USERS:
        ph0 = [_sigmoid(hb[j] + sum(w[k * m + mv, j] for mv, k in user)) for j in range(f)]
        for mv, k_obs in user:  # positive phase: the data
            dvb[k_obs * m + mv] += 1
            dw[k_obs * m + mv] += ph0
        dhb += ph0
        for h in itertools.product((0, 1), repeat=f):  # negative phase, weighted by P(h | v)
            weight = math.prod(ph0[j] if h[j] else 1 - ph0[j] for j in range(f))
            pv = []
            for mv, _ in user:
                logits = [
                    vb[k * m + mv] + sum(w[k * m + mv, j] * h[j] for j in range(f))
                    for k in range(n_levels)
                ]
                z = sum(math.exp(x) for x in logits)
                pv.append([math.exp(x) / z for x in logits])
            ph1 = [
                _sigmoid(
                    hb[j]
                    + sum(
                        pv[e][k] * w[k * m + mv, j]
                        for e, (mv, _) in enumerate(user)
                        for k in range(n_levels)
                    )
                )
                for j in range(f)
            ]
            for e, (mv, _) in enumerate(user):
                for k in range(n_levels):
                    dvb[k * m + mv] -= weight * pv[e][k]
                    for j in range(f):
                        dw[k * m + mv, j] -= weight * pv[e][k] * ph1[j]
            for j in range(f):
                dhb[j] -= weight * ph1[j]
    return dw, dvb, dhb


def test_cd1_statistics_match_a_hand_computation() -> None:
    # Monte Carlo over many copies of the same two users: the mean must match the exact
    # expectation (standard error ~0.002 at 40,000 copies; tolerance 0.01).
    copies = 40_000
    p = _params()
    stats = cd_statistics(p, _batch(copies), CFG, k=1, generator=torch.Generator().manual_seed(0))
    dw, dvb, dhb = _by_hand(p)
    np.testing.assert_allclose(stats.weights.numpy() / copies, dw, atol=0.01)
    np.testing.assert_allclose(stats.visible_bias.numpy() / copies, dvb, atol=0.01)
    np.testing.assert_allclose(stats.hidden_bias.numpy() / copies, dhb, atol=0.01)
    assert stats.n_entries == 3 * copies


def test_unrated_movies_do_not_touch_the_gradient() -> None:
    p = _params()
    only_movie_0 = RatingsBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), 1)
    stats = cd_statistics(p, only_movie_0, CFG, k=3, generator=torch.Generator().manual_seed(1))
    untouched = [
        visible_units(torch.tensor(mv), torch.tensor(k), CFG.n_movies).item()
        for mv in (1, 2)
        for k in range(CFG.n_levels)
    ]
    assert torch.count_nonzero(stats.weights[untouched]) == 0
    assert torch.count_nonzero(stats.visible_bias[untouched]) == 0
    assert torch.count_nonzero(stats.weights[[0, 3]]) > 0


def test_hidden_input_is_a_sum_over_rated_units() -> None:
    p = _params()
    pre = hidden_input(p, _batch(), CFG.n_movies)
    expected_user0 = p.hidden_bias + p.weights[1 * 3 + 0] + p.weights[0 * 3 + 2]
    torch.testing.assert_close(pre[0], expected_user0)
    torch.testing.assert_close(pre[1], p.hidden_bias + p.weights[1 * 3 + 1])


def test_level_probabilities_sum_to_one_and_match_per_entry() -> None:
    p = _params()
    hidden = torch.rand(4, CFG.n_hidden, generator=torch.Generator().manual_seed(2))
    probs = level_probabilities(p, hidden, CFG.n_levels)  # (B, K, M)
    assert probs.shape == (4, CFG.n_levels, CFG.n_movies)
    torch.testing.assert_close(probs.sum(1), torch.ones(4, CFG.n_movies))
    rows, movies = torch.tensor([0, 3, 2]), torch.tensor([2, 0, 1])
    per_entry = entry_level_probabilities(p, hidden, rows, movies, CFG)  # (n, K)
    torch.testing.assert_close(per_entry, probs[rows, :, movies])


def test_second_order_entry_probabilities_are_the_servers() -> None:
    # The trainer validates and fits its rating blend on these; the server's Scorer must
    # predict the same for the same user and movies.
    p = _params()
    levels = torch.tensor([1.0, 2.0])
    hidden_pre = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    rows, movies = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    per_entry = entry_level_probabilities(
        p, torch.sigmoid(hidden_pre), rows, movies, CFG, "second_order"
    )
    scorer = Scorer(p, levels, rating_inference="second_order")
    no_item = torch.tensor([-1, -1])
    _, logits = scorer.score(hidden_pre, no_item)
    served = scorer.predict_at(logits, hidden_pre, no_item, None)  # (B, M)
    torch.testing.assert_close(per_entry @ levels, served[rows, movies])
    plain = entry_level_probabilities(p, torch.sigmoid(hidden_pre), rows, movies, CFG)
    assert not torch.allclose(plain, per_entry)


def test_config_and_params_are_validated() -> None:
    with pytest.raises(ValueError, match="n_hidden"):
        RBMConfig(3, 2, 0)
    bad = _params()
    bad.weights = bad.weights[:, :1]
    with pytest.raises(ValueError, match="weights has shape"):
        bad.check(CFG)
    nan = _params()
    nan.visible_bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nan.check(CFG)


def test_liked_and_rated_score_is_the_log_probability_of_both() -> None:
    p = _params()
    levels = torch.tensor([3.0, 4.0])  # level 1 (rating 4) counts as liked
    popularity = torch.tensor([10.0, 0.0, 5.0])
    hidden_pre = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    no_item = torch.tensor([-1, -1])
    scores, expected = Scorer(p, levels, "liked_and_rated", popularity)(hidden_pre, no_item)
    probs = level_probabilities(p, torch.sigmoid(hidden_pre), CFG.n_levels)  # (B, K, M)
    p_rated = (popularity + 1) / (popularity.sum() + CFG.n_movies)
    torch.testing.assert_close(scores, torch.log(probs[:, 1, :]) + torch.log(p_rated))
    torch.testing.assert_close(expected, 3.0 * probs[:, 0, :] + 4.0 * probs[:, 1, :])
    plain, _ = Scorer(p, levels, "expected_rating")(hidden_pre, no_item)
    torch.testing.assert_close(plain, expected)
    with pytest.raises(ValueError, match="unknown ranking"):
        Scorer(p, levels, "bogus")  # type: ignore[arg-type]
