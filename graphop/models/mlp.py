"""The pointwise building blocks every model shares: activations, the MLP, plain config values."""
from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "mlp", "plain_config"]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(sizes, activation: str = "gelu", layer_norm: bool = False) -> nn.Sequential:
    """Linear -> act -> ... -> Linear over ``sizes`` (optionally LayerNorm at the end)."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    if layer_norm:
        layers.append(nn.LayerNorm(sizes[-1]))
    return nn.Sequential(*layers)


def plain_config(v):
    """Config values as plain JSON/YAML types (tuples -> lists)."""
    if isinstance(v, (tuple, list)):
        return [plain_config(e) for e in v]
    if isinstance(v, dict):
        return {k: plain_config(e) for k, e in v.items()}
    return v
