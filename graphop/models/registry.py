"""The model registry: every model is built from a plain dict, so a checkpoint can rebuild it.

    build_model({"name": "local_gno", "in_channels": 1, "out_channels": 1, "width": 32})

``config`` is ``{"name": ..., **keyword arguments}``; the built model keeps the full resolved
configuration (defaults filled in, tuples as lists) in ``model.config``, and
``build_model(model.config)`` rebuilds the same architecture. Supports left at ``"auto"`` (the
LocalGNO default) are chosen from the training meshes by
:func:`graphop.models.supports.resolve_supports` before building (the trainer does this).
Registered names:

=============  ==============================================================================
local_gno      :class:`LocalGNO`, every branch switchable (``branches=[...]``)
gino           global-only LocalGNO (``branches=("global",)``), the GINO pattern
disco_only     DISCO-only LocalGNO (``branches=("disco",)``)
gnn            :class:`MeshGraphNet` encode-process-decode baseline
fno            :class:`FNO` on the data's own tensor grid (structured-grid baseline)
=============  ==============================================================================

Add a model with ``@register_model("name")`` on a class or a factory function.
"""
from __future__ import annotations

import inspect

from torch import nn

from graphop.errors import ConfigError, InputError
from graphop.models.fno import FNO
from graphop.models.gnn import MeshGraphNet
from graphop.models.local_gno import LocalGNO

__all__ = ["MODELS", "build_model", "register_model", "model_arguments"]

MODELS: dict = {}


def register_model(name: str):
    """Decorator: register a class or factory ``f(**kwargs) -> nn.Module`` under ``name``."""
    def deco(fn):
        if name in MODELS:
            raise InputError(f"model name {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return deco


def model_arguments(name: str) -> list[str]:
    """The keyword arguments the model ``name`` accepts."""
    fn = MODELS[name]
    sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    return [p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_model(config: dict) -> nn.Module:
    """Build a registered model from ``{"name": ..., **kwargs}`` (see the module docstring).

    Raises :class:`graphop.errors.ConfigError` for a missing/unknown name, unknown or missing
    arguments, and invalid values (the model's own ValueError message)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(f"a model config is a dict with a 'name' (one of {sorted(MODELS)}), got {config!r}")
    kwargs = dict(config)
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    valid = model_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)} for model {name!r}; "
                          f"valid: {', '.join(valid)}")
    fn = MODELS[name]
    sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    missing = [p.name for p in sig.parameters.values() if p.name != "self"
               and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in kwargs]
    if missing:
        raise ConfigError(f"model {name!r} needs argument(s) {', '.join(missing)}")
    try:
        model = fn(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from exc
    cfg = dict(getattr(model, "config", kwargs))
    model.config = {"name": name, **{k: v for k, v in cfg.items() if k in valid}}
    return model


register_model("local_gno")(LocalGNO)
register_model("gnn")(MeshGraphNet)
register_model("fno")(FNO)


@register_model("gino")
def _gino(in_channels: int, out_channels: int, width: int = 32, n_layers: int = 4,
          dim: int | None = None, latent_shape=None, modes=None, latent_box=None,
          box_padding: float = 0.05, fft_padding: float = 0.25, encoder_radius="auto",
          encoder_floor: float = 0.5, quadrature: str = "cells", lifting_channels=None,
          projection_channels=None, activation: str = "gelu",
          periodic: bool = False) -> LocalGNO:
    """Global-only LocalGNO: lift -> act(W h + Dec(FNO(Enc(h)))) blocks -> project (GINO)."""
    return LocalGNO(in_channels, out_channels, width, n_layers, ("global",), dim, latent_shape,
                    modes, latent_box, box_padding, fft_padding, encoder_radius,
                    encoder_floor=encoder_floor, quadrature=quadrature,
                    lifting_channels=lifting_channels,
                    projection_channels=projection_channels, activation=activation,
                    periodic=periodic)


@register_model("disco_only")
def _disco_only(in_channels: int, out_channels: int, width: int = 32, n_layers: int = 4,
                dim: int | None = None, disco_radius="auto", kernel_shape=(3, 4),
                disco_kwargs: dict | None = None, quadrature: str = "cells", lifting_channels=None,
                projection_channels=None, activation: str = "gelu",
                periodic: bool = False) -> LocalGNO:
    """DISCO-only LocalGNO: lift -> act(W h + DISCO(h)) blocks -> project."""
    return LocalGNO(in_channels, out_channels, width, n_layers, ("disco",), dim,
                    disco_radius=disco_radius, kernel_shape=kernel_shape, disco_kwargs=disco_kwargs,
                    quadrature=quadrature,
                    lifting_channels=lifting_channels, projection_channels=projection_channels,
                    activation=activation, periodic=periodic)
