"""The projection attribution of tlexp explain: exact for dot-product and cosine scorers, refused otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlexp.core.errors import ConfigError
from tlexp.serving.explain import linear_form, projection_parts


class Dot:
    def score(self, users, items):
        return users @ items.T


class Cosine:  # text_two_tower / text_seq: cosine / temperature
    def score(self, users, items):
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T / 0.07


class Squared:
    def score(self, users, items):
        return (users @ items.T) ** 2


@pytest.mark.parametrize("scorer, form", [(Dot(), "dot"), (Cosine(), "cosine")])
def test_parts_add_up_to_the_score_for_dot_and_cosine(scorer, form):
    torch.manual_seed(0)
    items = torch.randn(30, 8)
    z = torch.randn(1, 8)
    got, w = linear_form(scorer, z, items)
    assert got == form
    zz = F.normalize(z[0], dim=-1) if form == "cosine" else z[0]
    history = items[[3, 7, 11]]
    parts, rest = projection_parts(zz, history, w)
    assert torch.allclose(parts.sum(0) + rest, scorer.score(z, items)[0], atol=1e-4)
    # a user vector inside the span of its history leaves (almost) nothing to the rest
    inside = (0.5 * history[0] + 2.0 * history[2])
    inside = F.normalize(inside, dim=-1) if form == "cosine" else inside
    parts, rest = projection_parts(inside, history, w)
    assert rest.abs().max() < 1e-4 and parts[1].abs().max() < 1e-4   # item 7 took no part


def test_a_score_that_is_not_linear_in_the_user_vector_is_refused():
    with pytest.raises(ConfigError, match="neither a dot product nor a cosine"):
        linear_form(Squared(), torch.randn(1, 4), torch.randn(5, 4))
