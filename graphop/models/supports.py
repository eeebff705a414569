"""Supports chosen from the training meshes: the DISCO radius, the grid-encoder radius and the
differential branch's smoothing radius (``"auto"``, the default of :class:`LocalGNO`).

A support the mesh does not resolve is a different operator at every resolution (DESIGN.md,
"What the measurements taught"). A fixed radius that holds one point of a 16 x 16 grid is a
pointwise map there and a real integral on a 32 x 32 grid, so the trained model is a different
function on each. ``auto`` values are therefore fixed once, from the *coarsest* training mesh,
in the coordinates the model sees (after the training set's coordinate normalisation), and
stored in the checkpoint's model config; a value the user gives always wins.

Let h be the mesh spacing of a mesh, the median over its points of the distance to the nearest
other point (:func:`mesh_spacing`; the grid width on a regular grid). The coarsest training
mesh is the one with the largest h. On it:

* ``disco_radius`` is the smallest radius r such that the median interior point holds at least
  ``MIN_POINTS_PER_BALL`` = 30 points (itself included) in its ball |y - x| <= r
  (:func:`resolving_radius`). With r_i the distance from point i to its 30th point, the
  median count over interior points is >= 30 exactly when r >= median_i r_i, so r is that median,
  rounded up to three significant digits. "Interior" means the ball of radius r_i does not reach
  the boundary (distance to the nearest ``data.boundary`` point, or to the bounding box when the
  mesh has no boundary mask; every point of a torus), because a boundary point's ball is cut by
  the domain and holds about half as many points whatever the radius. On a regular 2D grid this
  gives r = sqrt(10) h (37 points: the lattice has 29 points within 3 h and 37 within sqrt(10) h).
* ``encoder_radius`` = max(1.5 latent spacings, 2 h): the old default of 1.5 latent spacings,
  unless the mesh is coarser than the latent grid, where latent nodes would otherwise fall
  between mesh points and see nothing (measured on 16 x 16 grids: global-only 0.098 / 0.160 on
  16 x 16 / 32 x 32 test grids with 1.5 latent spacings, 0.096 / 0.133 with 2 h).
* ``diff_kwargs["smoothing_radius"]`` = ``disco_radius``. The mollifier that makes the differential branch bounded
  on inputs with jumps is itself a local average, a local integral like DISCO, so its discrete
  version is the same operator on every mesh only when its ball holds tens of points on the
  coarsest mesh; the DISCO criterion is that condition (in 2D it is about 3 mesh spacings). A
  smaller radius would smooth a coarse mesh and a fine mesh differently, which is the failure
  the mollifier is there to remove.

:func:`support_warnings` checks a mesh at evaluation time against a stored config: fewer than
``WARN_POINTS_PER_BALL`` = 3 points in the median interior DISCO (or smoothing) ball, or an
encoder radius below ``WARN_ENCODER_SPACINGS`` = 1.5 mesh spacings. Why 3: with DISCO's
per-point quadrature normalisation (:mod:`graphop.layers.disco`) and the normalised mollifier,
a model trained on 2000-point Darcy meshes kept its error within 10-20% on 500-point meshes
whose balls held 3-8 points (``experiments/support_size``, ``experiments/disco_normalization``);
fewer points than that has not been measured, and one point per ball is a pointwise map.

All counts use :class:`scipy.spatial.cKDTree` queries (k-nearest and ball counts), never a
dense distance matrix; everything here is numpy/scipy on CPU.

Shapes:
    pos [N, d] (numpy or torch), boundary [N] bool (optional), periodic [d] box lengths (optional)
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from scipy.spatial import cKDTree

from graphop.errors import ConfigError, DataError

__all__ = ["AUTO", "MIN_POINTS_PER_BALL", "WARN_POINTS_PER_BALL", "ENCODER_SPACINGS",
           "WARN_ENCODER_SPACINGS", "LATENT_SPACINGS", "mesh_spacing", "points_per_ball",
           "resolving_radius", "PROBE_POINTS", "latent_spacing", "unresolved_supports", "resolve_supports",
           "support_warnings", "dataset_support_warnings"]

AUTO = "auto"
MIN_POINTS_PER_BALL = 30
WARN_POINTS_PER_BALL = 3
ENCODER_SPACINGS = 2.0
WARN_ENCODER_SPACINGS = 1.5
LATENT_SPACINGS = 1.5


# ---------------------------------------------------------------------------- geometry
def _np(v, dtype=np.float64):
    if v is None:
        return None
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=dtype)


def _box(periodic, d: int):
    if periodic is None:
        return None
    b = _np(periodic).reshape(-1)
    return np.broadcast_to(b[:d] if b.size >= d else b, (d,)).astype(np.float64).copy()


def _tree(pos: np.ndarray, box) -> cKDTree:
    return cKDTree(np.mod(pos, box) if box is not None else pos, boxsize=box)


#: meshes above this many points are measured at every k-th point (k = ceil(N / PROBE_POINTS)),
#: against all points: a median over 10^5 points is within a fraction of a percent of the
#: median over all of them, and the measurement stays a few seconds at 10^6 points
PROBE_POINTS = 100_000


def _probe(n: int) -> np.ndarray:
    """The query points of a measurement: all of them, or every k-th one on a large mesh."""
    return np.arange(0, n, max(1, -(-n // PROBE_POINTS)))


def mesh_spacing(pos, periodic=None) -> float:
    """h = median over points of the distance to the nearest other point (grid width on a grid).

    Args:
        pos: [N, d] points (N >= 2).
        periodic: torus box lengths [d] (minimum-image distances), default None.
    """
    pos = _np(pos)
    if pos.ndim != 2 or len(pos) < 2:
        raise DataError(f"a mesh spacing needs at least 2 points [N, d], got shape {pos.shape}")
    box = _box(periodic, pos.shape[1])
    q = pos[_probe(len(pos))]
    dist, _ = _tree(pos, box).query(np.mod(q, box) if box is not None else q, k=2)
    return float(np.median(dist[:, 1]))


def _boundary_distance(pos: np.ndarray, boundary, box, query=None) -> np.ndarray:
    """Distance from every point (or the points ``query``) to the boundary: to the nearest
    ``boundary`` point when that mask marks any, else to the faces of the bounding box; +inf
    on a torus."""
    q = pos if query is None else pos[query]
    if box is not None:
        return np.full(len(q), np.inf)
    b = _np(boundary, bool) if boundary is not None else None
    if b is not None and b.shape == (len(pos),) and b.any():
        dist, _ = cKDTree(pos[b]).query(q, k=1)
        return dist
    lo, hi = pos.min(0), pos.max(0)
    return np.minimum(q - lo, hi - q).min(1)


def _ball_counts(tree: cKDTree, q: np.ndarray, radius: float, box) -> np.ndarray:
    p = np.mod(q, box) if box is not None else q
    return np.asarray(tree.query_ball_point(p, radius, return_length=True))


def _median_count(tree, pos, query, bdist, radius, box) -> float:
    counts = _ball_counts(tree, pos[query], float(radius), box)
    inner = bdist >= radius
    return float(np.median(counts[inner] if inner.any() else counts))


def points_per_ball(pos, radius: float, boundary=None, periodic=None) -> float:
    """Median over interior points (ball inside the domain, see the module docstring) of the
    number of points with |y_j - x_i| <= radius, x_i itself included; over all points when no
    point is interior. Meshes above :data:`PROBE_POINTS` points: at every k-th point."""
    pos = _np(pos)
    box = _box(periodic, pos.shape[1])
    query = _probe(len(pos))
    return _median_count(_tree(pos, box), pos, query,
                         _boundary_distance(pos, boundary, box, query), radius, box)


def _round_up(x: float, digits: int = 3) -> float:
    """``x`` rounded up to ``digits`` significant digits (so a tie at the radius stays inside)."""
    if not (x > 0 and math.isfinite(x)):
        return x
    q = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(round(math.ceil(x / q * (1 - 1e-12)) * q, 12))


def resolving_radius(pos, n_points: int = MIN_POINTS_PER_BALL, boundary=None, periodic=None
                     ) -> tuple[float, float]:
    """(r, measured points per ball): the smallest r (to three significant digits, rounded up)
    whose ball holds at least ``n_points`` points at the median interior point.

    Args:
        pos: [N, d] points of the coarsest mesh (above :data:`PROBE_POINTS` points the medians
            are taken over every k-th point).
        n_points: target count per ball, the centre included (default 30).
        boundary: [N] bool boundary mask (default: the bounding box is the boundary).
        periodic: torus box lengths [d]; r is capped below half the box.
    """
    pos = _np(pos)
    n = len(pos)
    if n < 2:
        raise DataError(f"cannot choose a radius from a mesh of {n} point(s)")
    box = _box(periodic, pos.shape[1])
    k = min(int(n_points), n)
    query = _probe(n)
    tree = _tree(pos, box)
    p = np.mod(pos[query], box) if box is not None else pos[query]
    dist, _ = tree.query(p, k=k)
    rk = dist.reshape(len(query), -1)[:, -1]
    bdist = _boundary_distance(pos, boundary, box, query)
    inner = bdist >= rk
    r = _round_up(float(np.median(rk[inner] if inner.any() else rk)))
    cap = float(0.49 * box.min()) if box is not None else float(np.ptp(pos, 0).max())
    count = _median_count(tree, pos, query, bdist, min(r, cap), box)
    for _ in range(50):  # the interior set shrinks as r grows: step up until the count holds
        if count >= k or r >= cap:
            break
        r = _round_up(r * 1.02)
        count = _median_count(tree, pos, query, bdist, min(r, cap), box)
    r = min(r, cap)
    return r, count


def latent_spacing(model_config: dict, periodic=None) -> float:
    """The largest spacing of the latent grid of a LocalGNO config (on the torus of
    ``periodic`` when given)."""
    from graphop.layers.latent import LatentGrid

    shape = model_config.get("latent_shape")
    d = len(shape) if shape else int(model_config.get("dim") or 2)
    shape = shape or ((32, 32) if d == 2 else (16, 16, 16))   # LocalGNO's defaults
    grid = LatentGrid.make(shape, model_config.get("latent_box"),
                           float(model_config.get("box_padding", 0.05)),
                           None if periodic is None else _box(periodic, d))
    return float(grid.spacing.max())


# ---------------------------------------------------------------------------- configs
_DEFAULT_BRANCHES = {"local_gno": ("global", "disco", "diff"), "gino": ("global",),
                     "disco_only": ("disco",)}


def _branches(cfg: dict) -> tuple:
    """The branches of a LocalGNO-family config (the gino / disco_only factories store none)."""
    return tuple(cfg.get("branches") or _DEFAULT_BRANCHES.get(cfg.get("name"), ()))


def unresolved_supports(model_config: dict) -> list[str]:
    """The config keys still set to ``"auto"`` (``disco_radius``, ``encoder_radius``,
    ``diff_kwargs.smoothing_radius``) among the branches the model uses."""
    out = []
    br = _branches(model_config)
    if "disco" in br and model_config.get("disco_radius") == AUTO:
        out.append("disco_radius")
    if "global" in br and model_config.get("encoder_radius") == AUTO:
        out.append("encoder_radius")
    if "diff" in br and (model_config.get("diff_kwargs") or {}).get("smoothing_radius") == AUTO:
        out.append("diff_kwargs.smoothing_radius")
    return out


def _sample_meshes(samples):
    """(pos, boundary, periodic, n) of every distinct mesh among ``samples`` (Data objects)."""
    seen = set()
    for i in range(len(samples)):
        data = samples[i]
        pos = _np(data.pos)
        key = hashlib.blake2b(np.ascontiguousarray(pos).tobytes(), digest_size=16).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        yield pos, _np(getattr(data, "boundary", None), bool), \
            _np(getattr(data, "periodic", None)), i


def resolve_supports(model_config: dict, samples, log=None) -> dict:
    """``model_config`` with every ``"auto"`` support replaced by a number chosen from the
    coarsest of ``samples`` (see the module docstring); other values are kept as given.

    Args:
        model_config: a model config dict (``build_model`` form, ``branches`` filled in or not).
        samples: indexable training samples (``Data`` with ``pos`` [N, d], optional ``boundary``
            [N] and ``periodic`` [1, d]) in the coordinates the model sees (normalised).
        log: callable receiving one line that names the chosen values (default: silent).

    Returns:
        A new dict; ``model_config`` itself is not modified.

    Raises:
        DataError: no samples.
    """
    cfg = dict(model_config)
    if cfg.get("name") in _DEFAULT_BRANCHES:
        br = _branches(cfg)
        auto_disco = "disco" in br and cfg.get("disco_radius", AUTO) == AUTO
        auto_enc = "global" in br and cfg.get("encoder_radius", AUTO) == AUTO
        diff_kw = dict(cfg.get("diff_kwargs") or {})
        smooth = diff_kw.get("smoothing_radius", AUTO)
        auto_smooth = "diff" in br and smooth == AUTO
    else:
        return cfg
    if not (auto_disco or auto_enc or auto_smooth):
        return cfg
    if len(samples) == 0:
        raise DataError("cannot choose the 'auto' supports: no training samples")
    if cfg.get("manifold") == "sphere":
        return _resolve_on_sphere(cfg, samples, auto_disco, auto_enc, auto_smooth, diff_kw, log)
    coarsest = None
    for pos, boundary, periodic, i in _sample_meshes(samples):
        h = mesh_spacing(pos, periodic)
        if coarsest is None or h > coarsest[0]:
            coarsest = (h, pos, boundary, periodic, i)
    h, pos, boundary, periodic, index = coarsest
    parts = []
    r_disco = None
    if auto_disco or auto_smooth:
        r_disco, count = resolving_radius(pos, MIN_POINTS_PER_BALL, boundary, periodic)
    if auto_disco:
        cfg["disco_radius"] = r_disco
        parts.append(f"disco_radius {r_disco:.3g} ({count:.0f} points/ball)")
    if auto_enc:
        lat = latent_spacing(cfg, periodic)
        r_enc = _round_up(max(LATENT_SPACINGS * lat, ENCODER_SPACINGS * h))
        cfg["encoder_radius"] = r_enc
        which = "2 mesh spacings" if ENCODER_SPACINGS * h > LATENT_SPACINGS * lat else \
            "1.5 latent spacings"
        parts.append(f"encoder_radius {r_enc:.3g} ({which})")
    if auto_smooth:
        given = cfg.get("disco_radius")
        r_smooth = float(given) if isinstance(given, (int, float)) and given > 0 else r_disco
        diff_kw["smoothing_radius"] = r_smooth
        cfg["diff_kwargs"] = diff_kw
        parts.append(f"smoothing_radius {r_smooth:.3g} (the DISCO radius)")
    if log is not None:
        log(f"supports (auto from the coarsest training mesh, sample {index}: {len(pos)} points, "
            f"spacing {h:.3g}): " + ", ".join(parts))
    return cfg


def _chord_to_angle(c):
    return 2.0 * np.arcsin(np.minimum(1.0, np.asarray(c) / 2.0))


def _resolve_on_sphere(cfg, samples, auto_disco, auto_enc, auto_smooth, diff_kw, log) -> dict:
    """The ``auto`` supports of a sphere model, as geodesic angles (radians): the same rules as
    in the plane (module docstring) with distances measured on the unit sphere. A closed sphere
    has no boundary, so every point counts; the latent spacing is pi / nlat."""
    coarsest = None
    for pos, _, _, i in _sample_meshes(samples):
        u = pos / np.linalg.norm(pos, axis=1, keepdims=True)
        tree = cKDTree(u)
        h = float(np.median(_chord_to_angle(tree.query(u, k=2)[0][:, 1])))
        if coarsest is None or h > coarsest[0]:
            coarsest = (h, u, tree, i)
    h, u, tree, index = coarsest
    parts, r_disco = [], None
    if auto_disco or auto_smooth:
        k = min(MIN_POINTS_PER_BALL, len(u))
        r_disco = _round_up(float(np.median(_chord_to_angle(tree.query(u, k=k)[0][:, -1]))))
        r_disco = min(r_disco, math.pi)
    if auto_disco:
        cfg["disco_radius"] = r_disco
        parts.append(f"disco_radius {r_disco:.3g} rad ({MIN_POINTS_PER_BALL} points/ball)")
    if auto_enc:
        nlat = int((cfg.get("latent_shape") or (32, 64))[0])
        r_enc = _round_up(max(2.0 * math.pi / nlat, ENCODER_SPACINGS * h))
        cfg["encoder_radius"] = r_enc
        parts.append(f"encoder_radius {r_enc:.3g} rad")
    if auto_smooth:
        given = cfg.get("disco_radius")
        diff_kw["smoothing_radius"] = float(given) if isinstance(given, (int, float)) else r_disco
        cfg["diff_kwargs"] = diff_kw
        parts.append(f"smoothing_radius {diff_kw['smoothing_radius']:.3g} rad (the DISCO radius)")
    if log is not None:
        log(f"supports (auto, on the sphere, from the coarsest training mesh, sample {index}: "
            f"{len(u)} points, spacing {h:.3g} rad): " + ", ".join(parts))
    return cfg


# ---------------------------------------------------------------------------- warnings
def support_warnings(model_config: dict, pos, boundary=None, periodic=None) -> list[str]:
    """What this mesh under-resolves among the stored supports of ``model_config``, each with
    the numbers (empty when it resolves all of them). ``pos`` in the model's coordinates."""
    br = _branches(model_config)
    if not br or len(_np(pos)) < 2:
        return []
    pos = _np(pos)
    if model_config.get("manifold") == "sphere":
        return _sphere_warnings(model_config, br, pos)
    out = []
    h = mesh_spacing(pos, periodic)
    r = model_config.get("disco_radius")
    if "disco" in br and isinstance(r, (int, float)):
        c = points_per_ball(pos, r, boundary, periodic)
        if c < WARN_POINTS_PER_BALL:
            out.append(f"median {c:.0f} points per DISCO ball (disco_radius {r:.3g}, mesh spacing "
                       f"{h:.3g}; fewer than {WARN_POINTS_PER_BALL})")
    s = (model_config.get("diff_kwargs") or {}).get("smoothing_radius")
    if "diff" in br and isinstance(s, (int, float)) and s > 0:
        c = points_per_ball(pos, s, boundary, periodic)
        if c < WARN_POINTS_PER_BALL:
            out.append(f"median {c:.0f} points per smoothing ball (smoothing_radius {s:.3g}; "
                       f"fewer than {WARN_POINTS_PER_BALL})")
    if "global" in br:
        e = model_config.get("encoder_radius")
        if e is None:
            e = LATENT_SPACINGS * latent_spacing(model_config, periodic)
        if isinstance(e, (int, float)) and e < WARN_ENCODER_SPACINGS * h:
            out.append(f"encoder_radius {e:.3g} is {e / h:.2g} mesh spacings (spacing {h:.3g}; "
                       f"fewer than {WARN_ENCODER_SPACINGS:g}: latent nodes fall between points)")
    return out


def _sphere_warnings(model_config: dict, br, pos) -> list[str]:
    """:func:`support_warnings` on the sphere: geodesic radii, every point interior."""
    u = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    tree = cKDTree(u)
    h = float(np.median(_chord_to_angle(tree.query(u, k=2)[0][:, 1])))
    out = []
    checks = [("DISCO", "disco_radius", model_config.get("disco_radius"), "disco"),
              ("smoothing", "smoothing_radius",
               (model_config.get("diff_kwargs") or {}).get("smoothing_radius"), "diff")]
    for what, key, r, branch in checks:
        if branch in br and isinstance(r, (int, float)) and r > 0:
            c = float(np.median(tree.query_ball_point(u, 2 * math.sin(min(r, math.pi) / 2),
                                                      return_length=True)))
            if c < WARN_POINTS_PER_BALL:
                out.append(f"median {c:.0f} points per {what} ball ({key} {r:.3g} rad, mesh "
                           f"spacing {h:.3g} rad; fewer than {WARN_POINTS_PER_BALL})")
    e = model_config.get("encoder_radius")
    if "global" in br and isinstance(e, (int, float)) and e < WARN_ENCODER_SPACINGS * h:
        out.append(f"encoder_radius {e:.3g} rad is {e / h:.2g} mesh spacings (spacing {h:.3g} "
                   f"rad; fewer than {WARN_ENCODER_SPACINGS:g}: latent nodes fall between points)")
    return out


def dataset_support_warnings(model_config: dict, samples, max_lines: int = 10) -> list[str]:
    """One line per distinct mesh of ``samples`` (normalised, as the model sees them) that
    under-resolves a stored support; at most ``max_lines`` lines, then one line with the count
    of the others."""
    lines, more = [], 0
    for pos, boundary, periodic, i in _sample_meshes(samples):
        issues = support_warnings(model_config, pos, boundary, periodic)
        if not issues:
            continue
        if len(lines) < max_lines:
            src = getattr(samples[i], "source", None)
            name = src if isinstance(src, str) and src else f"sample {i}"
            lines.append(f"{name} ({len(pos)} points) under-resolves the model's supports: "
                         + "; ".join(issues))
        else:
            more += 1
    if more:
        lines.append(f"... and {more} more mesh(es) that under-resolve the model's supports")
    return lines
