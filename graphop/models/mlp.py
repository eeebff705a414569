"""The pointwise building blocks every model shares: activations, the MLP, the input features of
a point (fields and coordinates), plain config values."""
from __future__ import annotations

import math

import torch
from torch import nn

from graphop.errors import InputError
from graphop.layers.latent import periodic_box

__all__ = ["ACTIVATIONS", "mlp", "point_features", "plain_config"]

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


def point_features(data, dim: int, in_channels: int, periodic: bool, model: str) -> torch.Tensor:
    """``[x, coordinates]`` per point, [N, in_channels + d] (on a torus the coordinates enter as
    ``sin, cos`` of their angle, [N, in_channels + 2d]); one-line errors name ``model``."""
    pos = data.pos
    if pos is None or pos.dim() != 2 or pos.shape[1] != dim:
        raise InputError(f"{model}(dim={dim}) needs data.pos of shape [N, {dim}], "
                         f"got {None if pos is None else tuple(pos.shape)}")
    box = periodic_box(data, dim)
    if (box is not None) != periodic:
        raise InputError("data is periodic (data.periodic is set) but the model was built with "
                         "periodic=False" if box is not None else
                         "the model was built with periodic=True but data has no 'periodic' box")
    if box is not None:
        # the box's scales as Python numbers: a tensor made from them would be a copy to the
        # device (and a synchronisation) at every step
        scale = [2 * math.pi / float(v) for v in box]
        ang = (pos * scale[0] if all(v == scale[0] for v in scale)
               else torch.stack([pos[:, k] * scale[k] for k in range(dim)], dim=1))
        pfeat = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    else:
        pfeat = pos
    x = getattr(data, "x", None)
    if x is None:
        x = pos.new_zeros(pos.shape[0], 0)
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != in_channels or x.shape[0] != pos.shape[0]:
        raise InputError(f"{model} expects data.x of shape [{pos.shape[0]}, {in_channels}], "
                         f"got {tuple(x.shape)}")
    return torch.cat([x.to(pos.dtype), pfeat], dim=1)
