"""The moment-corrected difference stencil on the sphere: the planar 2D stencil of
:mod:`graphop.layers.stencil` in each point's tangent plane (the differential operator of
``DifferentialConv(manifold="sphere")``).

Points p_i [N, 3] on the sphere S_R about the origin (R = median |p_i|, every point within
1e-6 R of it). For each point x_i the neighbours y_j are seen through their tangent
coordinates

    z_ij = R * log_x_i(y_j) / h_i     in R^2   (east, north components; lengths in mesh units)

with :func:`graphop.geometry.sphere.log_map` (length = central angle, so R * |log| is the arc
length) in the (east, north) frame of x_i (:func:`graphop.geometry.sphere.tangent_frame`;
within 1e-9 rad of a pole its limit along the prime meridian). Everything else is the planar
construction with d = 2, reusing its code (:func:`graphop.layers.stencil._moments`,
:func:`graphop.layers.stencil._assemble`):

* stencil functions l <-> grid offsets s_l in {-m..m}^2 without the centre, L = k^2 - 1;
* support: the tangent box |z_ij|_inf < m + 1 (found with a KD-tree on the unit vectors, ball
  of chord 2 sin(a / 2), a = sqrt(2) (m + 1) h_i / R, then filtered in tangent coordinates);
* scale ``h_i = scale * g_i * s_i``, s_i = mean ARC length to the 8 nearest neighbours over
  c_2 = (1 + sqrt 2) / 2 (or the arc length to the ``neighbours``-th), grown by sqrt 2 while the
  normalised moment matrix has lambda_min < MU, up to 8x (and while the box stays within a
  quarter great circle, ``sqrt(2) (m + 1) h_i <= pi R / 2``);
* coefficients: interpolation hats corrected by per-node weighted least squares so that
  ``sum_j a_l(i, j) z_ij = s_l`` exactly; bound ``sum_j |a_l(i, j)| <= 1 + 2 m (m + 1) / MU``
  (41 for k = 3) at every point, poles included;
* rows ``A[iL + l, j] = a_l(i, j) / h_i``, ``A[iL + l, i] = -sum_j a_l(i, j) / h_i``, so
  constants map to 0 exactly.

**Limit.** For smooth f on the sphere, ``f(exp_x(v)) = f(x) + grad_S f(x) . v + O(|v|^2)``
with v the tangent vector whose (east, north) components are R log_x(y). Since the first moments
match exactly in those coordinates,

    (1/h_i) sum_j a_l(i, j) (f(y_j) - f(x_i)) = s_l . (grad_S f . east, grad_S f . north)(x_i) + O(h_i),

the surface gradient ``grad_S f = grad f - (grad f . n) n`` in the local east/north components:
for fixed theta the layer converges to a learned combination of the two surface derivative
components, at first order (measured second order on icospheres, see tests/test_sphere_local.py).
The east/north frame is the same one the sphere DISCO uses; at the poles the components are
those of the limit frame. A function linear in the tangent coordinates of x_i is differentiated
exactly at x_i.

:func:`sphere_mollifier_matrix` is the mollifier of the differential layer on the sphere, with
geodesic balls.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from graphop.errors import InputError, MeshError
from graphop.geometry.neighbors import knn_distances
from graphop.layers.disco_sphere import sphere_neighbors, sphere_radius_of, tangent_log
from graphop.layers.stencil import (_assemble, checked_scale, grow_until_well_posed,
                                    stencil_offsets)

__all__ = ["sphere_local_scale", "sphere_stencil_matrix", "sphere_stencil_info",
           "sphere_mollifier_matrix"]


def _unit(pos: np.ndarray) -> np.ndarray:
    return pos / np.linalg.norm(pos, axis=1, keepdims=True)


def sphere_local_scale(pos, scale: float = 1.0, neighbours: int | None = None,
                       sphere_radius: float | None = None) -> np.ndarray:
    """The spacing ``scale * s_i`` [N] (mesh units) before growth: the mean arc length to the 8
    nearest neighbours over c_2 = (1 + sqrt 2) / 2 (default), or the arc length to the
    ``neighbours``-th nearest. Arc lengths from the KD-tree chords c on the unit sphere:
    ``2 R asin(c / 2)``.

    Raises:
        InputError: too few points, points off the sphere. MeshError: a point that coincides
            with all of its neighbours.
    """
    pos = np.asarray(pos, dtype=np.float64)
    R = sphere_radius_of(pos, sphere_radius)
    u = _unit(pos)
    n = len(u)
    k = 8 if neighbours is None else int(neighbours)
    if k < 1:
        raise InputError(f"neighbours must be >= 1, got {k}")
    k = min(k, n - 1) if neighbours is None else k
    if k < 2 or k >= n:
        raise InputError(f"the sphere stencil needs more than {max(k, 2)} points, got {n}")
    arc = 2.0 * R * np.arcsin(np.minimum(1.0, knn_distances(u, k) / 2.0))
    if neighbours is None:
        s = arc.mean(axis=1) / np.linalg.norm(stencil_offsets(3, 2), axis=1).mean()
    else:
        s = arc[:, -1]
    return checked_scale(scale * s, pos, k)


def _tangent_box(tree, u, R, h, reach, todo):
    """All (i in todo, j != i) with ``|z_ij|_inf < reach``, z_ij = R log_x_i(y_j) / h_i.
    Returns rows, cols and z [E, 2]."""
    ang = np.minimum(math.pi, math.sqrt(2.0) * reach * h[todo] / R)
    chord = np.minimum(2.0, 2.0 * np.sin(ang / 2.0)) * (1 + 1e-12)
    lists = tree.query_ball_point(u[todo], chord, return_sorted=False)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(todo))
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if counts.sum() \
        else np.zeros(0, dtype=np.int64)
    rows = np.repeat(todo, counts)
    z = R * tangent_log(u, u, rows, cols) / h[rows, None]
    keep = (cols != rows) & (np.abs(z).max(axis=1) < reach)
    return rows[keep], cols[keep], z[keep]


def _build(pos, kernel_size, scale, neighbours, sphere_radius):
    pos = np.asarray(pos, dtype=np.float64)
    R = sphere_radius_of(pos, sphere_radius)
    u = _unit(pos)
    offs = stencil_offsets(kernel_size, 2)
    reach = (kernel_size - 1) // 2 + 1
    h = sphere_local_scale(pos, scale, neighbours, R)
    h_cap = 0.5 * math.pi * R / (math.sqrt(2.0) * reach)
    tree = cKDTree(u)
    return offs, *grow_until_well_posed(
        h, reach, h_cap, lambda todo: _tangent_box(tree, u, R, h, reach, todo))


def sphere_stencil_matrix(pos, kernel_size: int = 3, scale: float = 1.0,
                          neighbours: int | None = None, sphere_radius: float | None = None):
    """The sphere stencil (module docstring) as COO triples ``(rows, cols, vals, L)``, rows
    ``i * L + l``, L = kernel_size^2 - 1.

    Args:
        pos: [N, 3] points on a sphere about the origin.
        kernel_size: odd k >= 3.
        scale: factor on the spacing before growth.
        neighbours: None (mean arc length to 8 neighbours) or k (arc length to the k-th).
        sphere_radius: R (default: the median norm of ``pos``).
    """
    return _assemble(*_build(pos, kernel_size, scale, neighbours, sphere_radius))[:4]


def sphere_stencil_info(pos, kernel_size: int = 3, scale: float = 1.0,
                        neighbours: int | None = None, sphere_radius: float | None = None):
    """``(csr [N L, N], StencilInfo, coef [N, L])`` as :func:`graphop.layers.stencil.stencil_info`:
    the operator, the scales h [N] (mesh units), growth factors, smallest normalised moment
    eigenvalues, degenerate points, and ``coef[i, l] = sum_j |a_l(i, j)|``."""
    r, c, v, L, info, coef = _assemble(*_build(pos, kernel_size, scale, neighbours,
                                               sphere_radius))
    n = len(info.h)
    return sp.coo_matrix((v, (r, c)), shape=(n * L, n)).tocsr(), info, coef


def sphere_mollifier_matrix(pos, weight, radius: float,
                            sphere_radius: float | None = None) -> sp.csr_matrix:
    """The quadrature-weighted local average over a geodesic ball of angle rho (radians),
    CSR [N, N]:

        (M_rho f)(x_i) = sum_j phi_ij w_j f(y_j) / sum_k phi_ik w_k,
        phi_ij = (1 - (angle(x_i, y_j) / rho)^2)^3   on angle < rho

    (the planar :func:`graphop.layers.stencil.mollifier_matrix` with the geodesic distance;
    neighbours by a KD-tree on unit vectors with chord 2 sin(rho / 2)). Rows sum to one;
    phi is C^2 in the geodesic distance, so the bounds of :mod:`graphop.layers.differential`
    carry over with rho the arc length R rho.

    Raises:
        InputError: radius outside (0, pi], points off the sphere. MeshError: a point whose
            ball holds no positive weight.
    """
    rho = float(radius)
    if not (math.isfinite(rho) and 0 < rho <= math.pi):
        raise InputError(f"sphere smoothing radius is a geodesic angle in (0, pi], got {radius}")
    pos = np.asarray(pos, dtype=np.float64)
    sphere_radius_of(pos, sphere_radius)
    w = np.asarray(weight, dtype=np.float64)
    nb = sphere_neighbors(_unit(pos), None, rho)
    q = np.maximum(0.0, 1.0 - (nb.distances / rho) ** 2)
    vals = q ** 3 * w[nb.indices]
    total = np.bincount(nb.rows(), vals, minlength=len(pos))
    bad = np.flatnonzero(~(total > 0))
    if len(bad):
        raise MeshError(f"smoothing radius {rho:g} rad: point {int(bad[0])} at "
                        f"{pos[bad[0]].tolist()} has no positive quadrature weight within it")
    return sp.csr_matrix((vals / total[nb.rows()], nb.indices, nb.indptr),
                         shape=(len(pos), len(pos)))
