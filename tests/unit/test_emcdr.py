"""EMCDR: the mapping (identity start, recovers a known map) and cold-start users scored through it."""

from __future__ import annotations


import pytest
import torch

from tlexp.core.errors import ConfigError
from tlexp.strategies.emcdr import Mapping, fit_mapping


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_mapping_starts_as_the_identity(kind: str):
    x = torch.randn(10, 6)
    assert torch.allclose(Mapping(6, 6, kind, hidden=[16])(x), x)
    assert Mapping(6, 4, kind, hidden=[16])(x).shape == (10, 4)
    with pytest.raises(ConfigError, match="linear or mlp"):
        Mapping(6, 6, "cubic")


def test_fit_mapping_recovers_a_linear_map():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(3)
    x = torch.randn(400, 5)
    y = x @ a + b
    mapping = Mapping(5, 3, "linear")
    stats = fit_mapping(mapping, x, y, epochs=500, lr=0.05, batch_size=100)
    assert stats["map_val_mse"] < 1e-3 and stats["map_users"] == 400
    assert torch.allclose(mapping.net.weight.T, a, atol=0.05) and torch.allclose(mapping.net.bias, b, atol=0.05)
