"""Moment-corrected difference stencils on irregular point sets (the differential layer's operator).

For every point x_i with local scale ``h_i`` (``scale`` times the distance to its d-th nearest
neighbour: exactly the grid width on a regular grid), neighbours y_j are seen through the
scaled offsets ``z_ij = (y_j - x_i) / h_i``. Stencil function l belongs to the grid offset
``s_l`` in ``{-m, .., m}^d \\ {0}`` (``m = (kernel_size - 1) / 2``; the centre is left out because
``f(x_i) - f(x_i) = 0`` gives it nothing to act on), so ``L = kernel_size^d - 1``.

1. Interpolation weights: ``a0_l(i, j) = prod_k max(0, 1 - |z_ijk - s_lk|)``, the d-linear hat
   at s_l. On a regular grid this is 1 at the neighbour at offset s_l and 0 elsewhere.
2. First-moment correction (per-node weighted least squares, as in least-squares gradient
   reconstruction): ``a_l = a0_l + omega_j z_ij . lambda_il`` with the minimal omega-weighted
   change that makes ``sum_j a_l(i, j) z_ij = s_l`` exactly, i.e.
   ``lambda_il = M_i^+ (s_l - sum_j a0_l(i, j) z_ij)``, ``M_i = sum_j omega_j z_ij z_ij^T``,
   ``omega_j = prod_k max(0, 1 - |z_ijk| / R)``, ``R = m + 1`` (the stencil's support box).
   On a grid the moment already holds, so the correction vanishes.

Then ``(1/h_i) sum_j a_l(i, j) (f(y_j) - f(x_i)) = s_l . grad f(x_i) + O(h_i)`` on any mesh with
bounded coefficients, and the layer's limit is the learned first-order operator
``sum_l theta[l] s_l . grad f``. Constants map to 0 (to rounding) by construction.

The operator matrix has rows ``i * L + l``: ``A[iL+l, j] = a_l(i, j) / h_i`` and
``A[iL+l, i] = -sum_j a_l(i, j) / h_i``.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial import cKDTree

from graphop.geometry.neighbors import knn_distances

__all__ = ["stencil_offsets", "local_scale", "stencil_matrix"]


def stencil_offsets(kernel_size: int, dim: int) -> np.ndarray:
    """Grid offsets s_l [L, d] in C order (last axis fastest), the centre removed."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}")
    m = (kernel_size - 1) // 2
    offs = np.array(list(itertools.product(range(-m, m + 1), repeat=dim)), dtype=np.float64)
    return offs[np.any(offs != 0, axis=1)]


def local_scale(pos: np.ndarray, scale: float = 1.0, periodic=None,
                neighbours: int | None = None) -> np.ndarray:
    """``h_i = scale * (distance to the k-th nearest neighbour)``, [N], with k = ``neighbours``
    (default d: the grid width on a regular grid). On scattered points the d-th neighbour can
    be very close, so h_i and the stencil's 1/h_i vary wildly; a larger k averages that out
    (k = 3^d - 1 with scale 0.5 is the robust choice measured in experiments/README.md)."""
    d = pos.shape[1]
    k = d if neighbours is None else int(neighbours)
    if k < 1:
        raise ValueError(f"neighbours must be >= 1, got {k}")
    if len(pos) <= k:
        raise ValueError(f"the differential stencil needs more than {k} points, got {len(pos)}")
    h = scale * knn_distances(pos, k, periodic=periodic)[:, -1]
    if not (h > 0).all():
        i = int(np.flatnonzero(~(h > 0))[0])
        raise ValueError(f"point {i} has {k} or more duplicates (zero local spacing)")
    return h


def _box_neighbors(pos, h, reach, periodic):
    """All (i, j != i) with ``||y_j - x_i||_inf < reach * h_i``: k-NN queries in the max-norm
    (so the k-th distance tells whether the box is exhausted), k doubled for the rest."""
    n, d = pos.shape
    box = None if periodic is None else np.broadcast_to(np.asarray(periodic, float), (d,))
    x = pos if box is None else np.mod(pos, box)
    tree = cKDTree(x, boxsize=box)
    k = min(n, 2 * (2 * reach) ** d)
    todo = np.arange(n)
    rows, cols = [], []
    while len(todo):
        dist, idx = tree.query(x[todo], k=k, p=np.inf)
        dist, idx = dist.reshape(len(todo), -1), idx.reshape(len(todo), -1)
        done = (dist[:, -1] >= reach * h[todo]) | (k >= n)
        r = np.repeat(todo[done], idx.shape[1])
        c = idx[done].ravel()
        keep = (c != r) & (c < n) & (dist[done].ravel() < reach * h[r])
        rows.append(r[keep]), cols.append(c[keep])
        todo, k = todo[~done], min(n, 2 * k)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    off = x[cols] - x[rows]
    if box is not None:
        off = off - box * np.round(off / box)
    return rows, cols, off / h[rows, None]


def stencil_matrix(pos, kernel_size: int = 3, scale: float = 1.0, periodic=None,
                   neighbours: int | None = None):
    """The corrected stencil operator (module docstring) as COO triples; ``scale`` and
    ``neighbours`` set the local spacing h_i (:func:`local_scale`).

    Returns ``(rows, cols, vals, L)`` with rows ``i * L + l`` (no duplicates).
    """
    pos = np.asarray(pos, dtype=np.float64)
    n, d = pos.shape
    offs = stencil_offsets(kernel_size, d)
    reach = (kernel_size - 1) // 2 + 1
    h = local_scale(pos, scale, periodic, neighbours)
    rows, cols, z = _box_neighbors(pos, h, reach, periodic)
    omega = np.prod(np.maximum(0.0, 1.0 - np.abs(z) / reach), axis=1)
    M = np.empty((n, d, d))
    for a in range(d):
        for b in range(a, d):
            M[:, a, b] = M[:, b, a] = np.bincount(rows, omega * z[:, a] * z[:, b], minlength=n)
    Minv = np.linalg.pinv(M, rcond=1e-10, hermitian=True)
    out_r, out_c, out_v = [], [], []
    L = len(offs)
    diag_rows = np.arange(n, dtype=np.int64)
    for l, s in enumerate(offs):
        a0 = np.prod(np.maximum(0.0, 1.0 - np.abs(z - s)), axis=1)
        m0 = np.stack([np.bincount(rows, a0 * z[:, k], minlength=n) for k in range(d)], axis=1)
        lam = np.einsum("nab,nb->na", Minv, s - m0)
        a = a0 + omega * np.einsum("ea,ea->e", z, lam[rows])
        a = a / h[rows]
        out_r += [rows * L + l, diag_rows * L + l]
        out_c += [cols, diag_rows]
        out_v += [a, -np.bincount(rows, a, minlength=n)]
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v), L
