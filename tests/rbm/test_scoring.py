"""The one scoring API: scores, predicted ratings at some movies or all, and the blend."""

from __future__ import annotations

import pytest
import torch

from rbm.model import ItemModel, RatingBlend, RBMParams
from rbm.scoring import Scorer

M, K, F, USERS, F2 = 6, 5, 4, 3, 2
LEVELS = torch.arange(1.0, 6.0)


def _random(n_visible: int, n_hidden: int, gen: torch.Generator) -> RBMParams:
    return RBMParams(
        torch.randn(n_visible, n_hidden, generator=gen),
        torch.randn(n_visible, generator=gen),
        torch.randn(n_hidden, generator=gen),
    )


def _scorer(ranking: str, blend_ranking: bool, blend: float = 0.4) -> Scorer:
    gen = torch.Generator().manual_seed(7)
    params = _random(K * M, F, gen)
    item = ItemModel(_random(K * USERS, F2, gen), torch.rand(M, F2, generator=gen), blend)
    implicit = _random(M, 3, gen)
    return Scorer(params, LEVELS, ranking, None, implicit, item, blend_ranking)  # type: ignore[arg-type]


HIDDEN = torch.randn(3, F + 3, generator=torch.Generator().manual_seed(1))
ROWS = torch.tensor([0, -1, 2])  # the second user is unknown to the item-based RBM


def _probs(scorer: Scorer, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The blended level distribution (B, K, M), written out the long way."""
    user_logits = (torch.sigmoid(hidden[:, :F]) @ scorer.weights_t + scorer.visible_bias).view(
        -1, K, M
    )
    user = torch.softmax(user_logits, dim=1)
    item_logits = torch.einsum(
        "bkf,fm->bkm", scorer.item_weights[rows.clamp(min=0)], scorer.movie_hidden_t
    )
    item = torch.softmax(item_logits + scorer.item_bias[rows.clamp(min=0)].unsqueeze(2), dim=1)
    share = (rows >= 0).float().view(-1, 1, 1) * scorer.blend
    return share * item + (1 - share) * user


def test_predicted_at_some_movies_equals_predicted_at_all() -> None:
    scorer = _scorer("liked_and_rated", blend_ranking=False)
    _, logits = scorer.score(HIDDEN, ROWS)
    every = scorer.predict_at(logits, ROWS, None)  # (B, M)
    movies = torch.tensor([[5, 0], [2, 2], [1, 3]])
    torch.testing.assert_close(scorer.predict_at(logits, ROWS, movies), every.gather(1, movies))
    want = (_probs(scorer, HIDDEN, ROWS) * LEVELS.view(1, K, 1)).sum(1)
    torch.testing.assert_close(every, want)


def test_without_blend_ranking_the_item_rows_do_not_move_the_scores() -> None:
    scorer = _scorer("liked_and_rated", blend_ranking=False)
    a, _ = scorer.score(HIDDEN, ROWS)
    b, _ = scorer.score(HIDDEN, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(a, b)


def test_blend_ranking_ranks_on_the_blended_distribution() -> None:
    scorer = _scorer("liked_and_rated", blend_ranking=True)
    scores, _ = scorer.score(HIDDEN, ROWS)
    probs = _probs(scorer, HIDDEN, ROWS)
    log_liked = torch.log(probs[:, 3:, :].sum(1))  # levels 4 and 5
    implicit = (
        torch.sigmoid(HIDDEN[:, F:]) @ scorer.implicit_weights.t() + scorer.implicit_visible_bias
    )
    torch.testing.assert_close(scores, log_liked + torch.nn.functional.logsigmoid(implicit))

    by_rating = _scorer("expected_rating", blend_ranking=True)
    scores, logits = by_rating.score(HIDDEN, ROWS)
    torch.testing.assert_close(scores, by_rating.predict_at(logits, ROWS, None))


@pytest.mark.parametrize("ranking", ["expected_rating", "liked_and_rated"])
def test_blend_ranking_is_off_without_a_blend(ranking: str) -> None:
    assert not _scorer(ranking, blend_ranking=True, blend=0.0).blend_ranking
    assert not _scorer("rated", blend_ranking=True).blend_ranking


def test_a_fitted_rating_blend_is_served_within_the_scale_for_known_users_only() -> None:
    gen = torch.Generator().manual_seed(7)
    params = _random(K * M, F, gen)
    item_params = _random(K * USERS, F2, gen)
    movie_hidden = torch.rand(M, F2, generator=gen)
    blend = RatingBlend(-0.5, 0.6, 1.2, 0.3, -0.2, 1.0, 2.0)  # stretched: some go off 1..5
    popularity, user_counts = torch.tensor([0.0, 1, 3, 7, 20, 54]), torch.tensor([2, 9, 30])
    item = ItemModel(item_params, movie_hidden, 0.4, blend)
    scorer = Scorer(params, LEVELS, "rated", popularity, None, item, user_counts=user_counts)
    plain = Scorer(
        params, LEVELS, "rated", popularity, None, ItemModel(item_params, movie_hidden, 1.0)
    )
    hidden = HIDDEN[:, :F]
    _, logits = scorer.score(hidden, ROWS)
    every = scorer.predict_at(logits, ROWS, None)
    user = plain.predict_at(logits, torch.full_like(ROWS, -1), None)  # the user RBM alone
    item_alone = plain.predict_at(logits, ROWS.clamp(min=0), None)  # share 1: the item RBM
    slope = 0.3 * (torch.log1p(popularity) - 1.0) - 0.2 * (
        torch.log1p(user_counts[ROWS.clamp(min=0)].float()) - 2.0
    ).unsqueeze(1)
    want = (-0.5 + 0.6 * user + 1.2 * item_alone + (item_alone - user) * slope).clamp(1.0, 5.0)
    torch.testing.assert_close(every[[0, 2]], want[[0, 2]])
    torch.testing.assert_close(every[1], user[1])  # unknown to the item RBM: user RBM only
    assert bool((want[[0, 2]] == 5.0).any() or (want[[0, 2]] == 1.0).any())  # clamped
    movies = torch.tensor([[5, 0], [2, 2], [1, 3]])
    torch.testing.assert_close(scorer.predict_at(logits, ROWS, movies), every.gather(1, movies))
