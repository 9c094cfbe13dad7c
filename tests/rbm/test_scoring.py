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


def _scorer(
    ranking: str, blend_ranking: bool, blend: float = 0.4, inference: str = "mean_field"
) -> Scorer:
    gen = torch.Generator().manual_seed(7)
    params = _random(K * M, F, gen)
    item = ItemModel(_random(K * USERS, F2, gen), torch.rand(M, F2, generator=gen), blend)
    implicit = _random(M, 3, gen)
    return Scorer(
        params,
        LEVELS,
        ranking,  # type: ignore[arg-type]
        None,
        implicit,
        item,
        blend_ranking,
        rating_inference=inference,  # type: ignore[arg-type]
    )


HIDDEN = torch.randn(3, F + 3, generator=torch.Generator().manual_seed(1))
ROWS = torch.tensor([0, -1, 2])  # the second user is unknown to the item-based RBM


def _probs(
    scorer: Scorer, hidden: torch.Tensor, rows: torch.Tensor, second_order: bool = False
) -> torch.Tensor:
    """The blended level distribution (B, K, M), written out the long way."""
    p = torch.sigmoid(hidden[:, :F])
    user_logits = (p @ scorer.weights_t + scorer.visible_bias).view(-1, K, M)
    w = scorer.item_weights[rows.clamp(min=0)]  # (B, K, F2)
    q = scorer.movie_hidden_t  # (F2, M)
    item_logits = torch.einsum("bkf,fm->bkm", w, q)
    if second_order:  # + (1/2) sum_j var_j W_j^2, var = p (1 - p) of the side's hidden units
        user_logits = user_logits + 0.5 * (p * (1 - p) @ scorer.weights_t**2).view(-1, K, M)
        item_logits = item_logits + 0.5 * torch.einsum("bkf,fm->bkm", w**2, q * (1 - q))
    user = torch.softmax(user_logits, dim=1)
    item = torch.softmax(item_logits + scorer.item_bias[rows.clamp(min=0)].unsqueeze(2), dim=1)
    share = (rows >= 0).float().view(-1, 1, 1) * scorer.blend
    return share * item + (1 - share) * user


def test_predicted_at_some_movies_equals_predicted_at_all() -> None:
    scorer = _scorer("liked_and_rated", blend_ranking=False)
    _, logits = scorer.score(HIDDEN, ROWS)
    every = scorer.predict_at(logits, HIDDEN, ROWS, None)  # (B, M)
    movies = torch.tensor([[5, 0], [2, 2], [1, 3]])
    at = scorer.predict_at(logits, HIDDEN, ROWS, movies)
    torch.testing.assert_close(at, every.gather(1, movies))
    want = (_probs(scorer, HIDDEN, ROWS) * LEVELS.view(1, K, 1)).sum(1)
    torch.testing.assert_close(every, want)


def test_second_order_ratings_at_some_movies_equal_the_long_way_and_every_movie(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scorer = _scorer("liked_and_rated", blend_ranking=False, inference="second_order")
    _, logits = scorer.score(HIDDEN, ROWS)
    every = scorer.predict_at(logits, HIDDEN, ROWS, None)
    want = (_probs(scorer, HIDDEN, ROWS, second_order=True) * LEVELS.view(1, K, 1)).sum(1)
    torch.testing.assert_close(every, want)
    mean_field = _scorer("liked_and_rated", blend_ranking=False).predict_at(
        logits, HIDDEN, ROWS, None
    )
    assert (every - mean_field).abs().max() > 0.01  # the term is there, not a no-op
    movies = torch.tensor([[5, 0], [2, 2], [1, 3]])
    gathered = scorer.predict_at(logits, HIDDEN, ROWS, movies)  # the gather path
    torch.testing.assert_close(gathered, every.gather(1, movies))
    monkeypatch.setattr("rbm.scoring.GATHER_LIMIT", 2 * K * F)  # a large batch: in chunks
    torch.testing.assert_close(scorer.predict_at(logits, HIDDEN, ROWS, movies), gathered)
    none = scorer.predict_at(logits, HIDDEN, ROWS, movies[:, :0])  # no movie asked
    assert none.shape == (3, 0)


def test_second_order_is_nearer_the_exact_level_distribution_than_mean_field() -> None:
    # Exact: P(v_m = k | the user's ratings) ∝ exp(b_mk) prod_j (1 + exp(x_j + W_mkj)).
    gen = torch.Generator().manual_seed(3)
    params = _random(K * M, F, gen)
    params.weights.mul_(0.5)  # weights of a trained model's size (|W| mostly below 1)
    x = torch.randn(4, F, generator=gen)
    exact_logits = params.visible_bias.view(1, K, M) + torch.nn.functional.softplus(
        x.view(4, 1, 1, F) + params.weights.view(1, K, M, F)
    ).sum(-1)
    exact = (torch.softmax(exact_logits, 1) * LEVELS.view(1, K, 1)).sum(1)
    no_item = torch.full((4,), -1)
    errors = {}
    for inference in ("mean_field", "second_order"):
        scorer = Scorer(params, LEVELS, rating_inference=inference)  # type: ignore[arg-type]
        _, logits = scorer.score(x, no_item)
        errors[inference] = (scorer.predict_at(logits, x, no_item, None) - exact).abs().max()
    assert errors["second_order"] < errors["mean_field"] / 3, errors


@pytest.mark.parametrize("ranking", ["expected_rating", "liked_and_rated"])
def test_the_rating_inference_leaves_ranking_scores_alone(ranking: str) -> None:
    mean_field, _ = _scorer(ranking, blend_ranking=True).score(HIDDEN, ROWS)
    second, _ = _scorer(ranking, blend_ranking=True, inference="second_order").score(HIDDEN, ROWS)
    torch.testing.assert_close(second, mean_field)


def test_an_unknown_rating_inference_is_refused() -> None:
    with pytest.raises(ValueError, match="rating inference"):
        _scorer("rated", blend_ranking=False, inference="exact")


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
    torch.testing.assert_close(scores, by_rating.predict_at(logits, HIDDEN, ROWS, None))


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
    every = scorer.predict_at(logits, hidden, ROWS, None)
    user = plain.predict_at(logits, hidden, torch.full_like(ROWS, -1), None)  # user RBM alone
    item_alone = plain.predict_at(logits, hidden, ROWS.clamp(min=0), None)  # share 1: item RBM
    slope = 0.3 * (torch.log1p(popularity) - 1.0) - 0.2 * (
        torch.log1p(user_counts[ROWS.clamp(min=0)].float()) - 2.0
    ).unsqueeze(1)
    want = (-0.5 + 0.6 * user + 1.2 * item_alone + (item_alone - user) * slope).clamp(1.0, 5.0)
    torch.testing.assert_close(every[[0, 2]], want[[0, 2]])
    torch.testing.assert_close(every[1], user[1])  # unknown to the item RBM: user RBM only
    assert bool((want[[0, 2]] == 5.0).any() or (want[[0, 2]] == 1.0).any())  # clamped
    movies = torch.tensor([[5, 0], [2, 2], [1, 3]])
    at = scorer.predict_at(logits, hidden, ROWS, movies)
    torch.testing.assert_close(at, every.gather(1, movies))
