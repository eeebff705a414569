"""Model hyper-parameters chosen from the training meshes when the config leaves them out.

**DISCO radius.** A DISCO ball must hold tens of points on the coarsest mesh the model sees
(DESIGN.md, "What the measurements taught"). With the default normalisation of the basis
(each psi_l divided by r^d ||psi_l||_1) an under-resolved ball does worse than lose accuracy:
when it holds about one point, the layer multiplies its input by about w_j / (r^d ||psi||_1),
the ratio of the point's cell to the ball, and blocks compound it. Measured on 1000-node 3D
Poisson meshes with the fixed default r = 0.06 (spacing ~0.1 in the unit box): the untrained
LocalGNO's normalised outputs were ~450 for targets of ~0.4, a training relative L2 of ~10^3
after one epoch. The metric was right; the operator was not an operator of that mesh.

In normalised coordinates a mesh with N points and measure |D| (sum of its quadrature weights)
holds about n(r) = V_d r^d N / |D| points in a ball of radius r (V_d the unit-ball volume, d the
measure's dimension: 2 for a surface in 3D). The default is the radius holding
:data:`TARGET_POINTS` points on the sparsest training mesh, and never less than the model's own
default::

    r = max(r_model, (TARGET_POINTS |D| / (V_d N))^(1/d))      minimum of N / |D| over the set

A radius given in the config is kept as is; when it holds fewer than :data:`MIN_POINTS` points
there, a :class:`graphop.errors.GraphopWarning` says so with the numbers. The chosen radius is
part of the model config, so it is stored in the checkpoint.
"""
from __future__ import annotations

import inspect
import math
import warnings

from graphop.errors import GraphopWarning

__all__ = ["TARGET_POINTS", "MIN_POINTS", "ball_points", "choose_model_defaults"]

#: points per DISCO ball the default radius aims for on the sparsest training mesh
TARGET_POINTS = 30
#: fewer points than this per ball in a user's radius draws a warning
MIN_POINTS = 10


def _unit_ball(d: int) -> float:
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1)


def _sparsest(samples, normalizer) -> tuple[float, int, int]:
    """(N / |D|, N, d) of the sample with the fewest points per unit measure, in the
    normaliser's coordinates."""
    from graphop.data.normalize import measure_exponent

    scale = float(normalizer.coords.scale) if getattr(normalizer, "coords", None) else 1.0
    best = None
    for i in range(len(samples)):
        data = samples[i]
        d = measure_exponent(data)
        n = int(data.pos.shape[0])
        measure = float(data.weight.double().sum()) / scale**d
        if measure <= 0:
            continue
        density = n / measure
        if best is None or density < best[0]:
            best = (density, n, d)
    return best if best is not None else (math.inf, 0, 2)


def ball_points(radius: float, density: float, d: int) -> float:
    """Expected points in a ball of ``radius`` at ``density`` points per unit measure."""
    return _unit_ball(d) * radius**d * density


def choose_model_defaults(model_config: dict, samples, normalizer) -> dict:
    """``model_config`` with a ``disco_radius`` chosen from ``samples`` (see the module
    docstring) when the model has a DISCO branch and the config does not set it.

    Args:
        model_config: ``{"name": ..., **kwargs}`` as given to ``build_model``.
        samples: the training samples (``Data`` with ``pos`` and ``weight``).
        normalizer: the fitted :class:`graphop.data.normalize.Normalizer` (its coordinate map
            gives the units of the radius).

    Returns:
        a new dict (the input is not modified).
    """
    from graphop.models import MODELS

    mc = dict(model_config)
    fn = MODELS.get(mc.get("name"))
    if fn is None:
        return mc
    params = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters
    if "disco_radius" not in params:
        return mc
    if "branches" in mc and "disco" not in list(mc["branches"] or ()):
        return mc
    density, n, d = _sparsest(samples, normalizer)
    if not math.isfinite(density):
        return mc
    if "disco_radius" in mc:
        r = float(mc["disco_radius"])
        held = ball_points(r, density, d)
        if held < MIN_POINTS:
            need = (TARGET_POINTS / (_unit_ball(d) * density)) ** (1 / d)
            warnings.warn(f"model.disco_radius {r:g} holds about {held:.1f} point(s) per DISCO "
                          f"ball on the sparsest training mesh ({n} points): the branch is "
                          f"under-resolved; about {need:.3g} holds {TARGET_POINTS}",
                          GraphopWarning, stacklevel=2)
        return mc
    default = params["disco_radius"].default
    r_model = float(default) if isinstance(default, (int, float)) else 0.0
    need = (TARGET_POINTS / (_unit_ball(d) * density)) ** (1 / d)
    mc["disco_radius"] = float(f"{max(r_model, need):.3g}")
    return mc
