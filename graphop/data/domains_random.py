"""2D domain families of the generated Darcy datasets, laid out in the box [0, 2] x [0, 1]:

* ``square``  the unit square;
* ``disk``    the disk of radius 1/2 centred at (1/2, 1/2);
* ``lshape``  the unit square minus its upper-right quarter;
* ``holes``   the unit square minus 1 to 3 random, disjoint circular holes;
* ``star``    a random smooth star-shaped domain r(t) = R (1 + sum_k a_k cos(k t + phi_k)),
  k = 2..6, |a_k| <= 1/(4k), centred at (1/2, 1/2);
* ``airfoil`` a NACA 00xx airfoil of chord 0.8 (random thickness 0.08-0.16, angle of attack
  -10..10 degrees) in the channel [0, 2] x [0, 1].

``square``, ``disk``, ``lshape`` and ``airfoil`` are meshed by
:func:`graphop.geometry.domains.mesh_domain` (the library's shared domains, scaled and shifted into this
layout; with ``rng`` given, ``perturb=0.25`` moves interior points irregularly and
re-triangulates). ``holes`` (unlike the fixed disk-with-holes of :mod:`graphop.geometry.domains`) and
``star`` are random families built here: boundary loops (outer counter-clockwise, holes
clockwise, irregular node spacing when ``rng`` is given) meshed by ``triangle`` as quality
Delaunay meshes (minimum angle 30 degrees). In every family the spacing is chosen so the node
count is within ~10% of ``n_points``; with ``rng=None`` a mesh is deterministic.

Shapes:
    mesh_domain(...) -> points [N, 2], triangles [M, 3]
"""
from __future__ import annotations

import math

import numpy as np
import triangle

from graphop.errors import InputError

__all__ = ["DOMAINS_2D", "FIXED_DOMAINS", "RANDOM_DOMAINS", "domain_loops", "mesh_loops",
           "mesh_domain"]

DOMAINS_2D = ("square", "disk", "lshape", "holes", "star", "airfoil")
FIXED_DOMAINS = ("square", "disk", "lshape")
RANDOM_DOMAINS = ("holes", "star")


def _circle(center, radius, n, phase=0.0, clockwise=False):
    t = phase + 2 * np.pi * np.arange(n) / n
    if clockwise:
        t = t[::-1]
    return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], 1)


def _resample_polygon(corners, h, rng=None):
    """Points every ~h along the closed polygon through ``corners`` (corners kept); with
    ``rng``, the points inside each edge move by up to 0.3 h along it (irregular spacing)."""
    out = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        m = max(1, int(math.ceil(np.linalg.norm(b - a) / h)))
        s = np.arange(m, dtype=np.float64)
        if rng is not None and m > 1:
            s[1:] += rng.uniform(-0.3, 0.3, m - 1)
        out.append(a[None] + (s / m)[:, None] * (b - a)[None])
    return np.concatenate(out)


def domain_loops(family: str, h: float, rng: np.random.Generator | None = None):
    """Boundary loops of a random domain (``holes`` or ``star``), sampled with spacing ~h.

    Returns (loops, holes): a list of [n_i, 2] closed polylines (first outer, the rest hole
    boundaries) and one point inside each hole, [n_holes, 2].
    """
    if family not in DOMAINS_2D:
        raise InputError(f"unknown 2D domain {family!r}; choose from {', '.join(DOMAINS_2D)}")
    rng = np.random.default_rng(0) if rng is None else rng
    phase = float(rng.random())
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    if family == "holes":
        k = int(rng.integers(1, 4))
        centers, radii = [], []
        while len(centers) < k:  # rejection sampling of disjoint holes away from the border
            r = rng.uniform(0.08, 0.18)
            c = rng.uniform(r + 0.06, 1 - r - 0.06, 2)
            if all(np.linalg.norm(c - c2) > r + r2 + 0.06 for c2, r2 in zip(centers, radii)):
                centers.append(c)
                radii.append(r)
        loops = [_resample_polygon(square, h, rng)]
        for c, r in zip(centers, radii):
            n = max(8, int(math.ceil(2 * np.pi * r / h)))
            loops.append(_circle(c, r, n, 2 * np.pi * rng.random() / n, clockwise=True))
        return loops, np.array(centers)
    if family == "star":
        ks = np.arange(2, 7)
        amp = rng.uniform(-1, 1, len(ks)) * 0.25 / ks
        ph = rng.uniform(0, 2 * np.pi, len(ks))
        n = max(16, int(math.ceil(2 * np.pi * 0.45 / h)))
        t = 2 * np.pi * (np.arange(n) + phase) / n
        rad = 0.36 * (1 + (amp[:, None] * np.cos(ks[:, None] * t[None] + ph[:, None])).sum(0))
        return [np.stack([0.5 + rad * np.cos(t), 0.5 + rad * np.sin(t)], 1)], np.zeros((0, 2))
    raise InputError(f"{family!r} is meshed by graphop.geometry.domains; domain_loops builds "
                     f"{', '.join(RANDOM_DOMAINS)}")


def mesh_loops(loops, holes, max_area: float, min_angle: float = 30.0):
    """Quality-mesh the region bounded by ``loops`` with ``triangle`` (no Python loop over
    elements). Returns points [N, 2], triangles [M, 3]."""
    verts, segs, off = [], [], 0
    for loop in loops:
        n = len(loop)
        verts.append(loop)
        idx = off + np.arange(n)
        segs.append(np.stack([idx, np.roll(idx, -1)], 1))
        off += n
    pslg = {"vertices": np.concatenate(verts), "segments": np.concatenate(segs)}
    if len(holes):
        pslg["holes"] = np.asarray(holes, dtype=np.float64)
    out = triangle.triangulate(pslg, f"pq{min_angle:g}a{max_area:.12f}Q")
    return np.asarray(out["vertices"], dtype=np.float64), np.asarray(out["triangles"], np.int64)


def _polygon_area(loop):
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * (x @ np.roll(y, -1) - y @ np.roll(x, -1))


# families meshed by graphop.geometry.domains (shared with the rest of the library), with the parameters
# and the affine placement (scale, shift) that put them in the layout of the module docstring
_SHARED = {"square": ({}, 1.0, (0.0, 0.0)),
           "disk": ({"radius": 0.5}, 1.0, (0.5, 0.5)),
           "lshape": ({"size": 1.0}, 1.0, (0.0, 0.0)),
           "airfoil": ({"box": (-0.875, 1.625, -0.625, 0.625)}, 0.8, (0.7, 0.5))}


def _shared_mesh(family, n_points, rng):
    from graphop.geometry.domains import mesh_domain as shared_mesh_domain

    params, scale, shift = _SHARED[family]
    params = dict(params)
    if family == "airfoil":
        g = np.random.default_rng(0) if rng is None else rng
        params.update(thickness=float(g.uniform(0.08, 0.16)), aoa=float(g.uniform(-10, 10)))
    seed = 0 if rng is None else int(rng.integers(2**31))
    m = shared_mesh_domain(family, n_points, seed=seed, perturb=0.0 if rng is None else 0.25,
                           **params)
    return m.points * scale + np.asarray(shift), m.cells["triangle"]


def mesh_domain(family: str, n_points: int, rng: np.random.Generator | None = None):
    """A triangle mesh of a domain of ``family`` with about ``n_points`` nodes (within ~10%).

    ``square``, ``disk``, ``lshape`` and ``airfoil`` are meshed by
    :func:`graphop.geometry.domains.mesh_domain` (with ``perturb=0.25`` irregular placement when ``rng``
    is given) and placed as in the module docstring; ``holes`` and ``star`` are built here. The
    spacing h solves N ~ 2 |D| / (sqrt(3) h^2) (equilateral triangles), then one correction
    step rescales the area bound by the ratio of the node counts.
    """
    if n_points < 10:
        raise InputError(f"n_points must be >= 10, got {n_points}")
    if family in _SHARED:
        return _shared_mesh(family, n_points, rng)
    state = None if rng is None else rng.bit_generator.state
    loops, holes = domain_loops(family, 0.1, rng)
    area = sum(_polygon_area(lp) for lp in loops)
    h = math.sqrt(2 * area / (math.sqrt(3) * n_points))
    if rng is not None:
        rng.bit_generator.state = state  # same geometry at the final spacing
    loops, holes = domain_loops(family, h, rng)
    max_area = math.sqrt(3) / 4 * h**2 * 1.25
    pts, tri = mesh_loops(loops, holes, max_area)
    ratio = len(pts) / n_points
    if abs(ratio - 1) > 0.05:
        if rng is not None:
            rng.bit_generator.state = state
        h *= math.sqrt(ratio)
        loops, holes = domain_loops(family, h, rng)
        pts, tri = mesh_loops(loops, holes, max_area * ratio)
    return pts, tri
