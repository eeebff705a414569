"""Triangles for a bare planar point cloud, so that it integrates the way a mesh does.

graphop's integral operators integrate the piecewise-linear function of the nodal values over
a mesh's cells (:func:`graphop.geometry.cells.interpolating_quadrature`). A point cloud has no
cells; summing over its points with k-NN density weights instead is a different, noisier
quadrature, and a model trained on meshes lost a factor of 3 on the nodes of its own test
meshes given as clouds (0.094 against 0.028, generalization_resolution). This module gives a
2D cloud the cells it lacks:

    T = { Delaunay triangles t of the points :  R(t) <= alpha * h(t) },
    h(t) = mean over the vertices j of t of r_k(j),

with R(t) the circumradius and r_k(j) the distance from j to its k-th nearest other point (the
local spacing). The Delaunay triangulation covers the convex hull; the filter (an alpha shape
scaled by the local spacing, so that it holds on graded clouds) removes the triangles that span
a gap much wider than the spacing around them: a re-entrant corner, a hole, the space between
two bodies, and the flat slivers along the hull of a random cloud. Gaps narrower than about
``alpha`` spacings are bridged: the cloud does not say whether they are part of the domain.

A cloud on a flat torus [0, L1) x [0, L2) (``triangulate_periodic``) has no hull: its
triangles are those of the Delaunay triangulation of the torus, found as the Delaunay triangles
of the points and their periodic images within a margin of the box, each kept once (the copy
in which its lowest-numbered vertex is the original point), with the same filter. The images
are taken as far as the filter can reach (the circumdisk of a kept triangle lies within
2 alpha h_max of each of its vertices; at most one box length), so every kept triangle is a
Delaunay triangle of the torus. Points in a degenerate position (a regular grid: four points
on a circle) are moved by a tiny amount that is the same for all images of a point before the
triangulation (the coordinates of the triangles are not), so that every copy of a square is
cut along the same diagonal and the triangles tile the torus once.

Only planar clouds are triangulated: in 3D, Delaunay tetrahedra of a random cloud include flat
slivers everywhere in the interior, which the filter cannot tell from a gap, and on surfaces
(the sphere) graphop's layers work in tangent frames; both keep nodal sums.

Shapes:
    points [N, 2] -> triangles [M, 3] (indices into points), or None; on a torus the
    triangles' vertices are points of the box, and an edge joins the nearest images of its
    ends (:func:`graphop.geometry.cells.interpolating_quadrature` with ``box``).
"""
from __future__ import annotations

import numpy as np

import graphop.jit as jit
from graphop.geometry.neighbors import box_size, knn_distances, spatial_order

__all__ = ["CLOUD_ALPHA", "CLOUD_K", "STRIP_POINTS", "triangulate_cloud", "triangulate_periodic"]

#: largest circumradius of a kept triangle, in local spacings (see the module docstring)
CLOUD_ALPHA = 3.0
#: the local spacing is the distance to the k-th nearest other point
CLOUD_K = 6


def _circumradius_filter(p: np.ndarray, tri: np.ndarray, h: np.ndarray, alpha: float):
    """(keep mask, signed doubled area, circumradius) of the triangles ``tri`` of the
    coordinates ``p``: kept when the circumradius is at most ``alpha`` times the mean spacing
    ``h`` of its vertices (``h`` indexed like ``tri``)."""
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    la = np.linalg.norm(b - c, axis=1)
    lb = np.linalg.norm(a - c, axis=1)
    lc = np.linalg.norm(a - b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = la * lb * lc / (2.0 * np.abs(cross))
    return np.isfinite(radius) & (radius <= alpha * h.mean(axis=1)), cross, radius


#: a planar cloud of at least 2 x this many points is triangulated in vertical strips of about
#: this many points each (:func:`triangulate_cloud`), on ``threads`` threads
STRIP_POINTS = 250_000


def triangulate_cloud(points, alpha: float = CLOUD_ALPHA, k: int = CLOUD_K, threads: int = 1):
    """Filtered Delaunay triangles of a planar point cloud (module docstring).

    A large cloud (2 x :data:`STRIP_POINTS` points or more) is triangulated in vertical strips,
    each with its neighbours' points within a margin of 1.01 alpha h_max, keeping the triangles
    whose circumcentre lies in the strip: a triangle that passes the filter has a circumdisk
    of radius at most alpha h_max, within the strip and its margin, so it is a Delaunay
    triangle of all the points exactly when it is one of the strip's. The points are first
    moved by :data:`PERIODIC_JITTER` local spacings (the same move in every strip; the kept
    triangles' coordinates are not moved), so that the triangulation is unique and the strips
    agree where points are cocircular (a grid). The strips are the same for any number of
    ``threads``, so is the result. Measured at 1M random points: 10.0 s for qhull in one piece.

    Args:
        points: [N, 2] coordinates.
        alpha: largest circumradius of a kept triangle in local spacings (default 3).
        k: the local spacing at a point is the distance to its k-th nearest other point
            (default 6).
        threads: threads that triangulate the strips of a large cloud (default 1).

    Returns:
        [M, 3] int64 counter-clockwise triangles, or None when the points span no triangle
        (fewer than 3 distinct points, all collinear) or the filter keeps none. Points in no
        kept triangle (duplicates, isolated outliers) are vertices of none.
    """
    from scipy.spatial import QhullError

    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        return None
    h = knn_distances(p, min(k, len(p) - 1), workers=threads)[:, -1]
    try:
        tri = _delaunay(p, h, alpha, max(1, int(threads)))
    except (QhullError, ValueError):
        return None
    if tri is None or len(tri) == 0:
        return None
    keep, cross, _ = _circumradius_filter(p, tri, h[tri], alpha)
    tri = tri[keep]
    flip = cross[keep] < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return tri if len(tri) else None


def _delaunay(p: np.ndarray, h: np.ndarray, alpha: float, threads: int):
    """The Delaunay triangles of ``p`` [N, 2] that can pass the filter (all of them for a
    cloud of fewer than 2 x :data:`STRIP_POINTS` points), [M, 3] int64 (see
    :func:`triangulate_cloud`)."""
    from scipy.spatial import Delaunay

    n = len(p)
    strips = n // STRIP_POINTS
    margin = 1.01 * alpha * float(h.max())
    if strips < 2 or not np.isfinite(margin) or margin * strips >= np.ptp(p[:, 0]) / 2:
        order = spatial_order(p)      # qhull inserts nearby points in turn: measured 1.3x faster
        return order[Delaunay(p[order]).simplices]
    q = p + np.random.default_rng(0).uniform(-1.0, 1.0, (n, 2)) * (PERIODIC_JITTER * h)[:, None]
    x = q[:, 0]
    cuts = np.concatenate([[-np.inf], np.quantile(x, np.arange(1, strips) / strips), [np.inf]])

    def strip(s):
        lo, hi = cuts[s], cuts[s + 1]
        sel = np.flatnonzero((x >= lo - margin) & (x < hi + margin))
        sel = sel[spatial_order(q[sel])]
        tri = np.sort(sel[Delaunay(q[sel]).simplices], axis=1)    # the same in every strip
        a, b, c = q[tri[:, 0]], q[tri[:, 1]], q[tri[:, 2]]
        ab, ac = b - a, c - a
        with np.errstate(divide="ignore", invalid="ignore"):
            cx = a[:, 0] + ((ac[:, 1] * (ab ** 2).sum(1) - ab[:, 1] * (ac ** 2).sum(1))
                            / (2.0 * (ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])))
        return tri[(cx >= lo) & (cx < hi)]

    return np.concatenate(jit.thread_map(strip, range(strips), threads))  # qhull drops the GIL


#: a torus cloud whose kept triangles cover less than this fraction of the box is not
#: triangulated (None: it keeps nodal sums); a Monte Carlo cloud of a few dozen points or more
#: covers all of it
PERIODIC_MIN_COVER = 0.98

#: the move of a point in a degenerate position before the periodic triangulation, in units of
#: its local spacing (module docstring); the triangles' coordinates are not moved
PERIODIC_JITTER = 1e-7


def triangulate_periodic(points, box, alpha: float = CLOUD_ALPHA, k: int = CLOUD_K):
    """Filtered Delaunay triangles of a point cloud on the flat torus [0, L1) x [0, L2)
    (module docstring).

    Args:
        points: [N, 2] coordinates (wrapped into the box first).
        box: the torus lengths (a scalar or [2]).
        alpha, k: the filter, as in :func:`triangulate_cloud`.

    Returns:
        [M, 3] int64 triangles (indices into points, each triangle of the torus once,
        counter-clockwise once its vertices are unwrapped to the nearest images of the first),
        or None when the kept triangles cover less than :data:`PERIODIC_MIN_COVER` of the
        torus (a cloud of a handful of points, all collinear, or so coarse that triangles
        whose circumradius reaches L / 4, which could wrap around the torus, are left out).
    """
    from scipy.spatial import Delaunay, QhullError

    from graphop.geometry.cells import wrap_into_box

    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        return None
    L = box_size(box, 2)
    p = wrap_into_box(p, L)
    n = len(p)
    h = knn_distances(p, min(k, n - 1), periodic=L)[:, -1]
    margin = min(2.0 * alpha * float(h.max()) * 1.01, float(L.min()))
    # the points and their images within the margin; images [i] < n are the points themselves
    idx, shifts = [np.arange(n)], [np.zeros((n, 2))]
    for ox in (-1, 0, 1):
        for oy in (-1, 0, 1):
            if ox == oy == 0:
                continue
            q = p + L * np.array([ox, oy])
            inside = ((q > -margin) & (q < L + margin)).all(axis=1)
            idx.append(np.flatnonzero(inside))
            shifts.append(np.broadcast_to(L * np.array([ox, oy]), (int(inside.sum()), 2)))
    orig = np.concatenate(idx)
    real = p[orig] + np.concatenate(shifts)
    jitter = np.random.default_rng(0).uniform(-1.0, 1.0, (n, 2)) * (PERIODIC_JITTER * h)[:, None]
    try:
        tri = Delaunay(real + jitter[orig]).simplices.astype(np.int64)
    except (QhullError, ValueError):
        return None
    if len(tri) == 0:
        return None
    o = orig[tri]
    distinct = (o[:, 0] != o[:, 1]) & (o[:, 1] != o[:, 2]) & (o[:, 0] != o[:, 2])
    lowest = np.argmin(o, axis=1)
    canonical = tri[np.arange(len(tri)), lowest] < n        # the copy whose lowest is original
    keep, cross, radius = _circumradius_filter(real, tri, h[o], alpha)
    # a Delaunay triangle of the torus when its circumdisk lies within the images (2 R <=
    # margin), and unwrapped by nearest images when every edge is below L / 2 (R < L / 4)
    keep &= distinct & canonical & (2.0 * radius <= margin) & (radius < 0.25 * L.min())
    out = o[keep]
    flip = cross[keep] < 0
    out[flip] = out[flip][:, [0, 2, 1]]
    # a torus has no outside: a cloud whose triangles miss part of it is too coarse to tile
    if 0.5 * np.abs(cross[keep]).sum() < PERIODIC_MIN_COVER * float(np.prod(L)):
        return None
    return out
