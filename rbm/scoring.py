"""The serving computation, shared by the server, the evaluation and the ONNX export.

Input is each user's hidden pre-activation (hidden biases plus the weight rows of the
movies it rated); output is a ranking score and the expected rating for every movie.

Three ranking scores exist; the trainer picks one on its validation slice:

- ``expected_rating``: E[rating | h]. Rating prediction alone ranks rarely rated movies
  first, because the model is confidently positive about movies few people saw.
- ``rated``: log P(rated), the probability that the user rates the movie at all.
- ``liked_and_rated``: w * log P(rating >= 4 | h) + log P(rated); with w = 1 (the
  default) the log-probability that the user both watches and likes the movie. The
  trainer chooses w (``liked_weight``) on its validation slice too: the softmax RBM's
  P(liked) is noisier than the implicit RBM's P(rated), and a smaller w ranked better.

Predicted ratings use the checkpoint's ``rating_inference`` (``rbm.model.RatingInference``):
the second-order level distribution adds (1/2) sum_j p_j (1 - p_j) W_mkj^2 to the
mean-field logits of both rating RBMs. Only the movies asked for pay it (a gather of their
weights), or one more matrix product for every movie. Ranking scores stay mean-field.

P(rated) comes from the implicit-feedback RBM (``rbm.implicit``) when the checkpoint has
one, whose hidden pre-activation then follows the softmax RBM's in the input; without it,
from each movie's share of training ratings (the same for every user). The implicit RBM
may be an average of several trained from different seeds, stored side by side
(``rbm.implicit.combine_implicit``): their hidden units are concatenated and
``implicit_scale`` = 1 / their number turns the summed visible input into the mean of
the members' logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rbm.implicit import log_sigmoid
from rbm.model import (
    LIKED_AT,
    RANKINGS,
    RATING_INFERENCES,
    ItemModel,
    Ranking,
    RatingBlend,
    RatingInference,
    RBMParams,
    second_order_term,
    visible_units,
)

__all__ = ["LIKED_AT", "RANKINGS", "Ranking", "Scorer"]

# The most weights (rows x movies asked x levels x hidden units) the second-order term
# gathers at once: 16 MB of float32; a larger PredictRatings batch goes a few rows at a time.
GATHER_LIMIT = 1 << 22


class Scorer(nn.Module):
    """The one scoring API: ``score`` ranks every movie, ``predict_at`` gives ratings.

    ``forward`` (hidden pre-activation (B, width), item rows (B,)) -> (score (B, M),
    predicted (B, M)) is the same pass over every movie, for the ONNX export.

    ``item_rows`` are the users' rows in the item-based RBM (their training index), -1 for
    users it does not know; they matter only when the scorer has an item-based RBM.
    """

    weights_t: Tensor
    visible_bias: Tensor
    levels: Tensor
    log_rated: Tensor
    implicit_weights: Tensor
    implicit_visible_bias: Tensor
    item_weights: Tensor
    item_bias: Tensor
    movie_hidden_t: Tensor
    movie_log_count: Tensor
    user_log_count: Tensor

    def __init__(
        self,
        params: RBMParams,
        levels: Tensor,
        ranking: Ranking = "expected_rating",
        popularity: Tensor | None = None,
        implicit: RBMParams | None = None,
        item: ItemModel | None = None,
        blend_ranking: bool = False,
        liked_weight: float = 1.0,
        implicit_scale: float = 1.0,
        user_counts: Tensor | None = None,
        rating_inference: RatingInference = "mean_field",
    ) -> None:
        super().__init__()
        if ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {ranking!r}; choose one of {RANKINGS}")
        if rating_inference not in RATING_INFERENCES:
            raise ValueError(f"unknown rating inference {rating_inference!r}")
        self.second_order = rating_inference == "second_order"
        if not 0.0 <= liked_weight < float("inf") or not 0.0 < implicit_scale <= 1.0:
            raise ValueError("liked_weight must be finite and >= 0, implicit_scale in (0, 1]")
        self.liked_weight = float(liked_weight)
        self.implicit_scale = float(implicit_scale)
        n_levels = int(levels.numel())
        n_movies = params.visible_bias.numel() // n_levels
        like = params.weights
        # Wᵀ stored contiguous: addmm on (F, K*M) beat F.linear on W ~2x for small batches.
        self.register_buffer("weights_t", params.weights.t().contiguous())  # (F, K*M)
        self.register_buffer("visible_bias", params.visible_bias.clone())  # (K*M,)
        self.register_buffer("levels", levels.to(like).view(1, n_levels, 1))
        counts = torch.zeros(n_movies) if popularity is None else popularity.float()
        # +1 smoothing: a movie nobody rated in training is unlikely, not impossible.
        log_rated = torch.log((counts + 1) / (counts.sum() + n_movies))
        self.register_buffer("log_rated", log_rated.to(like))  # (M,)
        self.n_levels = n_levels
        self.n_movies = n_movies
        self.n_hidden = params.hidden_bias.numel()
        # Buffers, so that .to(device) and the ONNX export see them.
        self.has_implicit = implicit is not None
        if implicit is not None:
            self.register_buffer("implicit_weights", implicit.weights.to(like))
            self.register_buffer("implicit_visible_bias", implicit.visible_bias.to(like))
        self.blend = 0.0 if item is None else item.blend
        self.rating_blend = RatingBlend() if item is None else item.ratings
        # Whether known users' ratings involve the item RBM at all (not for a share of 0).
        self.item_rates = item is not None and (item.blend > 0 or item.rating_blend is not None)
        if item is not None:
            n_item = item.params.hidden_bias.numel()
            per_user = item.params.weights.view(n_levels, -1, n_item).permute(1, 0, 2)
            self.register_buffer("item_weights", per_user.contiguous().to(like))  # (U, K, F2)
            bias = item.params.visible_bias.view(n_levels, -1).t().contiguous()
            self.register_buffer("item_bias", bias.to(like))  # (U, K)
            self.register_buffer("movie_hidden_t", item.movie_hidden.t().contiguous().to(like))
            # The rating blend's features: log(1 + training ratings) of movies and users.
            self.register_buffer("movie_log_count", torch.log1p(counts).to(like))  # (M,)
            users = torch.zeros(per_user.shape[0]) if user_counts is None else user_counts
            self.register_buffer("user_log_count", torch.log1p(users.float()).to(like))  # (U,)
        self.ranking = ranking
        # Rank on the blended level distribution too (costs an item pass over every movie).
        self.blend_ranking = blend_ranking and self.blend > 0.0 and ranking != "rated"
        self.liked_from = int((levels < LIKED_AT).sum())  # first level counted as liked

    def forward(self, hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Scores and predicted ratings of every movie (B, M) each: the exported graph."""
        score, logits = self.score(hidden_pre, item_rows)
        return score, self.predict_at(logits, hidden_pre, item_rows, None)

    def score(self, hidden_pre: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Ranking scores (B, M) and the user-based rating-level logits (B, K, M).

        Serving ranks on the scores and then needs predicted ratings only at the movies it
        returns (``predict_at`` on these logits): a (B, K, n) softmax, not a (B, K, M) one.
        The logits are mean-field; ``predict_at`` adds the second-order term where asked.
        ``item_rows`` matter only when the ranking includes the item-based blend.
        """
        batch = hidden_pre.shape[0]
        hidden = torch.sigmoid(hidden_pre[:, : self.n_hidden])  # (B, F)
        logits = torch.addmm(self.visible_bias, hidden, self.weights_t).view(
            batch, self.n_levels, -1
        )  # (B, K, M)
        if self.ranking == "expected_rating":
            if self.blend_ranking:
                return self._predicted(logits, None, item_rows, None), logits
            return self._expected(logits), logits
        log_rated = self._log_rated(hidden_pre[:, self.n_hidden :])  # (B, M) or (M,)
        if self.ranking == "rated":
            return log_rated.expand(batch, -1), logits
        if self.liked_weight == 1.0:
            return self._log_liked(logits, item_rows) + log_rated, logits
        return self.liked_weight * self._log_liked(logits, item_rows) + log_rated, logits

    def _log_liked(self, logits: Tensor, item_rows: Tensor) -> Tensor:
        # log P(rating >= 4): two log-sum-exps over levels, stable where softmax-then-log
        # underflows, and one pass fewer over the (B, K, M) logits.
        user = torch.logsumexp(logits[:, self.liked_from :, :], dim=1) - torch.logsumexp(
            logits, dim=1
        )
        if not self.blend_ranking:
            return user
        # The blend mixes the two models' level distributions with weight `share`, so
        # P(liked) mixes the same way.
        item_logits = self._item_logits(item_rows, self.movie_hidden_t)  # (B, K, M)
        item = torch.logsumexp(item_logits[:, self.liked_from :, :], dim=1) - torch.logsumexp(
            item_logits, dim=1
        )
        share = self._share(item_rows)
        mixed = share * torch.exp(item) + (1 - share) * torch.exp(user)
        return torch.log(mixed.clamp(min=1e-30))

    def predict_at(
        self, logits: Tensor, hidden_pre: Tensor, item_rows: Tensor, movies: Tensor | None
    ) -> Tensor:
        """Predicted ratings at ``movies`` (B, n), or every movie for None: (B, n or M).

        The user-based RBM's expected rating, blended with the item-based RBM's for the
        users it knows (``item_rows`` >= 0) as the item model's ``RatingBlend`` says, within
        the rating scale, by the scorer's rating inference. ``logits`` come from ``score``
        on the same ``hidden_pre``.
        """
        second = hidden_pre if self.second_order else None
        return self._predicted(logits, second, item_rows, movies)

    def _predicted(
        self,
        logits: Tensor,
        second_order: Tensor | None,
        item_rows: Tensor,
        movies: Tensor | None,
    ) -> Tensor:
        """``predict_at``; mean-field when ``second_order`` (the hidden_pre) is None."""
        blended = self.item_rates
        if movies is None:
            picked = logits
            columns = self.movie_hidden_t if blended else None  # (F2, M)
        else:
            picked = torch.gather(logits, 2, movies.unsqueeze(1).expand(-1, self.n_levels, -1))
            columns = self.movie_hidden_t.t()[movies].transpose(1, 2) if blended else None
        if second_order is not None:
            picked = picked + self._user_second_order(second_order[:, : self.n_hidden], movies)
        expected = self._expected(picked)
        if columns is None:
            return expected
        item_logits = self._item_logits(item_rows, columns, second_order is not None)
        item = self._expected(item_logits)  # (B, n)
        movie_log = self.movie_log_count if movies is None else self.movie_log_count[movies]
        user_log = self.user_log_count[item_rows.clamp(min=0)].unsqueeze(1)  # (B, 1)
        mixed = self.rating_blend.apply(expected, item, movie_log, user_log)
        lowest, highest = self.levels[0, 0, 0], self.levels[0, -1, 0]
        known = (item_rows >= 0).unsqueeze(1)
        return torch.where(known, torch.clamp(mixed, lowest, highest), expected)

    def _expected(self, logits: Tensor) -> Tensor:
        return (torch.softmax(logits, dim=1) * self.levels).sum(dim=1)

    def _user_second_order(self, user_pre: Tensor, movies: Tensor | None) -> Tensor:
        """The user RBM's second-order term at ``movies`` (B, n), or every movie: (B, K, n|M)."""
        term = second_order_term(torch.sigmoid(user_pre))  # (B, F)
        if movies is None:  # every movie (the exported graph): one product
            # shape[0], not len(): the ONNX export keeps it a dynamic dimension.
            batch = term.shape[0]
            return torch.mm(term, self.weights_t.square()).view(batch, self.n_levels, -1)
        # The asked movies' weight columns cost n*K*F per row against M*K*F for the product;
        # rows go in chunks so that a large PredictRatings batch holds at most GATHER_LIMIT.
        per_row = max(1, movies.shape[1] * self.n_levels * self.n_hidden)
        step = max(1, GATHER_LIMIT // per_row)
        parts = [
            self._gathered_second_order(term[i : i + step], movies[i : i + step])
            for i in range(0, len(movies), step)
        ]
        return torch.cat(parts) if parts else term.new_zeros(0, self.n_levels, movies.shape[1])

    def _gathered_second_order(self, term: Tensor, movies: Tensor) -> Tensor:
        """``_user_second_order`` for a few rows: term (R, F), movies (R, n) -> (R, K, n)."""
        rows, width = movies.shape[0], self.n_levels * movies.shape[1]
        levels = torch.arange(self.n_levels, device=movies.device).view(1, -1, 1)
        units = visible_units(movies.unsqueeze(1), levels, self.n_movies)  # (R, K, n)
        # index_select of whole columns, then one batched product: 5x faster on CPU than
        # advanced indexing plus einsum (ml-100k shapes, batch 64, n = 10).
        weights = self.weights_t.index_select(1, units.reshape(-1))  # (F, R*K*n)
        squared = weights.view(self.n_hidden, rows, width).square_().transpose(0, 1)
        return torch.bmm(term.unsqueeze(1), squared).view(rows, self.n_levels, -1)

    def _item_logits(
        self, item_rows: Tensor, movie_hidden_t: Tensor, second_order: bool = False
    ) -> Tensor:
        # Row u's K weight rows against the movies' hidden probabilities, (F2, M) for every
        # movie or (B, F2, n) for some: one matrix product either way. -> (B, K, n)
        rows = item_rows.clamp(min=0)
        weights = self.item_weights[rows]  # (B, K, F2)
        logits = torch.matmul(weights, movie_hidden_t) + self.item_bias[rows].unsqueeze(2)
        if second_order:
            logits = logits + torch.matmul(weights.square(), second_order_term(movie_hidden_t))
        return logits

    def _share(self, item_rows: Tensor) -> Tensor:
        """The item-based model's weight per user: ``blend`` if it knows them, else 0: (B, 1)."""
        return ((item_rows >= 0).to(self.levels.dtype) * self.blend).unsqueeze(1)

    def _log_rated(self, implicit_pre: Tensor) -> Tensor:
        if not self.has_implicit:
            return self.log_rated
        p_h = torch.sigmoid(implicit_pre)  # (B, F')
        if self.implicit_scale == 1.0:
            logits = torch.addmm(self.implicit_visible_bias, p_h, self.implicit_weights.t())
        else:  # the mean of several implicit RBMs' logits (see the module's docstring)
            logits = torch.addmm(
                self.implicit_visible_bias,
                p_h,
                self.implicit_weights.t(),
                alpha=self.implicit_scale,
            )
        return log_sigmoid(logits)  # (B, M)
