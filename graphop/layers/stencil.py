"""Moment-corrected difference stencils, well-posed at every point (the differential operator).

For every point x_i with local scale ``h_i`` (below), neighbours y_j are seen through the
scaled offsets ``z_ij = (y_j - x_i) / h_i``. Stencil function l belongs to the grid offset
``s_l`` in ``{-m, .., m}^d \\ {0}`` (``m = (kernel_size - 1) / 2``; the centre is left out because
``f(x_i) - f(x_i) = 0`` gives it nothing to act on), so ``L = kernel_size^d - 1``. The support is
the box ``|z_ij|_inf < R``, ``R = m + 1``.

**Local scale.** ``h_i = scale * g_i * s_i`` with the robust spacing

    s_i = (mean distance from x_i to its K = 3^d - 1 nearest neighbours) / c_d,
    c_d = mean of |s| over the 3^d - 1 unit offsets s in {-1, 0, 1}^d \\ {0}

(c_1 = 1, c_2 = (1 + sqrt 2) / 2, c_3 = (3 + 6 sqrt 2 + 4 sqrt 3) / 13), which is exactly the
grid width at interior points of a regular grid and, being a mean over K neighbours, is not
pulled to 0 by one near-duplicate or by the short gaps of a Monte Carlo cloud (the d-th
neighbour distance used before is: measured max coefficient 140x the typical 1/h on 1024 random
points). ``neighbours=k`` replaces s_i by the k-th neighbour distance (the former option).
``g_i >= 1`` is the growth factor of the next step; s_i, hence h_i, is O(local spacing) and
tends to 0 under refinement.

**Growth until well-posed.** With ``omega_j = prod_k max(0, 1 - |z_ijk| / R)`` and the
normalised weights ``w^_j = omega_j / sum_k omega_k``, the normalised moment matrix is
``M_i = sum_j w^_j z_ij z_ij^T`` (scale free; on an interior grid point M_i = (2/3) I, at a grid
corner its eigenvalues are 0.8 and 0.4). While ``lambda_min(M_i) < MU`` (= 0.1) the
neighbourhood is grown, ``g_i <- GROWTH * g_i`` (GROWTH = sqrt 2), up to ``MAX_GROWTH`` (= 8).
This spans all d directions with ``cond(M_i) <= d R^2 / MU`` (trace bound). Collinear or
clustered neighbourhoods (boundary points of two interleaved refinements, anisotropic cells,
corners, near-duplicates) grow; points of a regular grid never do. A point still degenerate at
the cap (points on a lower-dimensional set, e.g. a surface in 3D) keeps only the directions with
eigenvalue >= MU (truncated inverse below): its stencil is exact along those directions and
still obeys the bound; :func:`stencil_matrix` reports how many such points there are.

**Coefficients.**

1. Interpolation: ``a0_l(i, j) = hat_l(z_ij) / max(1, sum_k hat_l(z_ik))`` with the d-linear
   hat ``hat_l(z) = prod_k max(0, 1 - |z_k - s_lk|)``; on a grid this is 1 at the neighbour at
   offset s_l and 0 elsewhere. The normalisation only acts where several points crowd around
   s_l, and keeps ``sum_j a0_l <= 1``.
2. First-moment correction (per-node weighted least squares, as in least-squares gradient
   reconstruction): the minimal ``w^``-weighted change making ``sum_j a_l(i, j) z_ij = s_l``,

       a_l(i, j) = a0_l(i, j) + w^_j z_ij . lambda_il,   lambda_il = M_i^{-1} (s_l - sum_j a0_l z_ij),

   with M_i^{-1} the inverse over eigenvalues >= MU. On a grid the moment already holds, so the
   correction vanishes and the stencil equals the paper's finite-difference convolution.

**Bound** (every point, every l): ``sum_j |a_l(i, j)| <= C = 1 + d m (m + 1) / MU`` (= 41 for
d = 2, kernel_size 3; 61 in 3D), since ``sum_j a0 <= 1``, ``|z_ij| <= R sqrt d`` on the support,
``|s_l - m0| <= m sqrt d`` and ``|lambda| <= |s_l - m0| / MU``. :func:`coefficient_bound` returns
C. Hence ``|D f(x_i)| <= 2 C |theta| ||f||_inf / h_i`` for any f. Measured maxima on the hard
point sets of :mod:`graphop.testing` are 2-4 (see tests/test_stencil.py).

Then ``(1/h_i) sum_j a_l(i, j) (f(y_j) - f(x_i)) = s_l . grad f(x_i) + O(h_i)`` on any mesh,
linear f are exact (at every point that reached MU), and constants map to 0 by construction.

The operator matrix has rows ``i * L + l``: ``A[iL+l, j] = a_l(i, j) / h_i`` and
``A[iL+l, i] = -sum_j a_l(i, j) / h_i``.

:func:`mollifier_matrix` builds the quadrature-weighted local average that the differential
layer applies first when it is given a ``smoothing_radius``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

import graphop.jit as jit
from graphop.errors import InputError, MeshError
from graphop.geometry.neighbors import PointTree, knn_distances, radius_neighbors, spatial_order
from graphop.layers.sparse import build_rows, csr_from_coo, ordered_build, row_chunk

__all__ = ["stencil_offsets", "local_scale", "stencil_matrix", "stencil_info", "grow_until_well_posed",
           "coefficient_bound", "mollifier_matrix", "mollifier_gradient_matrix", "StencilInfo", "MU",
           "GROWTH", "MAX_GROWTH"]

#: smallest eigenvalue of the normalised moment matrix a neighbourhood must reach
MU = 0.1
#: factor by which a degenerate neighbourhood's scale grows per step
GROWTH = 2.0 ** 0.5
#: largest total growth factor g_i
MAX_GROWTH = 8.0
#: scale-free coefficients |a_l(i, j)| at or below this are dropped (rounding-level zeros)
PRUNE = 1e-12


def stencil_offsets(kernel_size: int, dim: int) -> np.ndarray:
    """Grid offsets s_l [L, d] in C order (last axis fastest), the centre removed."""
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise InputError(f"kernel_size must be an odd integer >= 3, got {kernel_size}")
    m = (kernel_size - 1) // 2
    offs = np.array(list(itertools.product(range(-m, m + 1), repeat=dim)), dtype=np.float64)
    return offs[np.any(offs != 0, axis=1)]


def coefficient_bound(kernel_size: int, dim: int) -> float:
    """The bound C on ``sum_j |a_l(i, j)|`` (module docstring): ``1 + d m (m + 1) / MU``."""
    m = (kernel_size - 1) // 2
    return 1.0 + dim * m * (m + 1) / MU


def local_scale(pos: np.ndarray, scale: float = 1.0, periodic=None,
                neighbours: int | None = None) -> np.ndarray:
    """The spacing ``scale * s_i`` [N] before growth (module docstring): the mean distance to
    the 3^d - 1 nearest neighbours over its grid value c_d (default), or the distance to the
    ``neighbours``-th nearest neighbour."""
    n, d = pos.shape
    if neighbours is None:
        k = min(3 ** d - 1, n - 1)
        if k < d:
            raise InputError(f"the differential stencil needs at least {d + 1} points in {d}D, "
                             f"got {n}")
        c = np.linalg.norm(stencil_offsets(3, d), axis=1).mean()
        s = knn_distances(pos, k, periodic=periodic).mean(axis=1) / c
    else:
        k = int(neighbours)
        if k < 1:
            raise InputError(f"neighbours must be >= 1, got {k}")
        if n <= k:
            raise InputError(f"the differential stencil needs more than {k} points, got {n}")
        s = knn_distances(pos, k, periodic=periodic)[:, -1]
    return checked_scale(scale * s, pos, k)


def checked_scale(h: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """``h``, or MeshError naming the first point whose k nearest neighbours all coincide
    with it (a zero local spacing)."""
    if not (h > 0).all():
        i = int(np.flatnonzero(~(h > 0))[0])
        raise MeshError(f"point {i} coincides with all of its {k} nearest neighbours "
                        f"(zero local spacing at {pos[i].tolist()})")
    return h


def _box_neighbors(tree, x, box, h, reach, todo):
    """All (i in todo, j != i) with ``||y_j - x_i||_inf < reach * h_i``: k-NN queries in the
    max-norm (the k-th distance tells whether the box is exhausted), k doubled for the rest.
    Returns rows (point ids), cols and the scaled offsets z."""
    n, d = x.shape
    k = min(n, 2 * (2 * reach) ** d)
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


def _moments(rows, z, reach, n):
    """Normalised weights w^ [E] and the eigen-decomposition of M_i ([n, d], [n, d, d])."""
    d = z.shape[1]
    omega = np.prod(np.maximum(0.0, 1.0 - np.abs(z) / reach), axis=1)
    total = np.bincount(rows, omega, minlength=n)
    what = omega / np.where(total > 0, total, 1.0)[rows]
    M = np.zeros((n, d, d))
    for a in range(d):
        for b in range(a, d):
            M[:, a, b] = M[:, b, a] = np.bincount(rows, what * z[:, a] * z[:, b], minlength=n)
    lam, vec = np.linalg.eigh(M)
    return what, lam, vec


@dataclass(frozen=True)
class StencilInfo:
    """What the builder did: the final scale h [N], growth factors g [N], smallest normalised
    moment eigenvalue [N], and the points left degenerate at the growth cap."""

    h: np.ndarray
    growth: np.ndarray
    lambda_min: np.ndarray
    degenerate: np.ndarray


def _build(pos, kernel_size, scale, periodic, neighbours):
    pos = np.asarray(pos, dtype=np.float64)
    n, d = pos.shape
    offs = stencil_offsets(kernel_size, d)
    reach = (kernel_size - 1) // 2 + 1
    h = local_scale(pos, scale, periodic, neighbours)
    box = None if periodic is None else np.broadcast_to(np.asarray(periodic, float), (d,))
    x = pos if box is None else np.mod(pos, box)
    tree = cKDTree(x, boxsize=None if box is None else np.array(box))
    if box is not None:   # the grown box must stay below half the period (one image only)
        h_cap = 0.5 * float(np.min(box)) / reach * (1 - 1e-9)
    if box is None:
        h_cap = np.inf
    return offs, *grow_until_well_posed(
        h, reach, h_cap, lambda todo: _box_neighbors(tree, x, box, h, reach, todo))


def grow_until_well_posed(h: np.ndarray, reach: int, h_cap: float, neighbours):
    """The growth loop of the module docstring, shared by the plane and the sphere.

    ``neighbours(todo) -> (rows, cols, z)`` gives the scaled offsets of the points ``todo`` at
    their current scales ``h`` (grown in place). A point stops growing when its moment matrix
    reaches ``MU``, at ``MAX_GROWTH``, or when one more step would pass ``h_cap``.

    Returns ``(parts, StencilInfo)``: per round the kept ``(rows, cols, z, w^, M^-1)``."""
    n = len(h)
    growth = np.ones(n)
    parts, todo = [], np.arange(n)
    lam_min = np.empty(n)
    slot = np.full(n, -1, dtype=np.int64)
    while len(todo):
        rows, cols, z = neighbours(todo)
        # moments on the points still growing only (indexed 0..len(todo)-1), so a late round
        # with a few hundred points costs a few hundred eigen-decompositions, not n
        slot[todo] = np.arange(len(todo))
        loc = slot[rows]
        what, lam, vec = _moments(loc, z, reach, len(todo))
        lam_min[todo] = lam[:, 0]
        capped = (growth[todo] * GROWTH > MAX_GROWTH * (1 + 1e-9)) | (h[todo] * GROWTH > h_cap)
        done = (lam[:, 0] >= MU) | capped
        keep = done[loc]
        inv = np.where(lam[done] >= MU, 1.0 / np.maximum(lam[done], MU), 0.0)
        Minv = np.zeros((n,) + vec.shape[1:])
        Minv[todo[done]] = np.einsum("nak,nk,nbk->nab", vec[done], inv, vec[done])
        parts.append((rows[keep], cols[keep], z[keep], what[keep], Minv))
        slot[todo] = -1
        todo = todo[~done]
        growth[todo] *= GROWTH
        h[todo] *= GROWTH
    return parts, StencilInfo(h, growth, lam_min, np.flatnonzero(lam_min < MU))


def stencil_matrix(pos, kernel_size: int = 3, scale: float = 1.0, periodic=None,
                   neighbours: int | None = None):
    """The well-posed stencil operator (module docstring) as COO triples; ``scale`` and
    ``neighbours`` set the spacing before growth (:func:`local_scale`).

    Returns ``(rows, cols, vals, L)`` with rows ``i * L + l`` (no duplicates); see
    :func:`stencil_info` for the scales, growth factors and degenerate points.
    """
    return _assemble(*_build(pos, kernel_size, scale, periodic, neighbours))[:4]


def stencil_info(pos, kernel_size: int = 3, scale: float = 1.0, periodic=None,
                 neighbours: int | None = None):
    """``(csr [N L, N], StencilInfo, coef [N, L])``: the operator as scipy CSR, what the builder
    did, and ``coef[i, l] = sum_j |a_l(i, j)|`` (the quantity the bound C holds for)."""
    r, c, v, L, info, coef = _assemble(*_build(pos, kernel_size, scale, periodic, neighbours))
    n = len(info.h)
    m = csr_from_coo(r, c, v, (n * L, n))       # no duplicates: one entry per (i, l, j)
    m.sort_indices()
    return m, info, coef


def _assemble(offs, parts, info):
    """COO triples of the stencil from the growth loop's rounds (formula: module docstring).

    Per round, everything per point runs on that round's points only (compact indices), the
    tensor-product hats are products of 1D hats tabulated once per round, and the pruning
    gathers each kept entry once."""
    h = info.h
    n, L = len(h), len(offs)
    d = offs.shape[1]
    out_r, out_c, out_v = [], [], []
    coef = np.zeros((n, L))
    inv_h = 1.0 / h
    shifts = np.unique(offs)
    for rows, cols, z, what, Minv in parts:
        if len(rows) == 0:
            continue
        pts, loc = np.unique(rows, return_inverse=True)
        npt = len(pts)
        Mp = Minv[pts]
        hat1 = {(k, t): np.maximum(0.0, 1.0 - np.abs(z[:, k] - t)) for k in range(d) for t in shifts}
        for l, s in enumerate(offs):
            hat = hat1[0, s[0]].copy()
            for k in range(1, d):
                hat *= hat1[k, s[k]]
            mass = np.bincount(loc, hat, minlength=npt)
            a0 = hat / np.maximum(1.0, mass)[loc]
            m0 = np.stack([np.bincount(loc, a0 * z[:, k], minlength=npt) for k in range(d)],
                          axis=1)
            lam = np.einsum("nab,nb->na", Mp, s - m0)
            a = a0 + what * np.einsum("ea,ea->e", z, lam[loc])
            coef[pts, l] += np.bincount(loc, np.abs(a), minlength=npt)
            # coefficients at rounding level are zeros of the exact stencil (on a grid every
            # neighbour but the one at s_l: 70% of the entries of a 16 x 16 grid); dropping
            # them keeps constants exact (the centre is minus the kept sum)
            kept = np.flatnonzero(np.abs(a) > PRUNE)
            r_k = rows[kept]
            a_k = a[kept] * inv_h[r_k]
            out_r += [r_k * L + l, pts * L + l]
            out_c += [cols[kept], pts]
            out_v += [a_k, -np.bincount(loc[kept], a_k, minlength=npt)]
    return (np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v), L, info, coef)


#: the fraction of the mollifier kernel's mass below which :func:`mollifier_gradient_matrix`
#: stops dividing by the discrete normaliser (under-resolved balls)
GRADIENT_FLOOR = 0.1


def mollifier_gradient_matrix(pos, weight, radius: float, periodic=None, pos_out=None,
                              interp=None, chunk_pairs: int = 2_000_000) -> sp.csr_matrix:
    """The exact gradient of the discrete mollified field of :func:`mollifier_matrix`, CSR
    [M d, N] with rows ``i d + k`` (the k-th partial derivative at output point i):

        grad (M_rho f)(x) = sum_j grad_x phi_j(x) w_j (f(y_j) - (M_rho f)(x)) / sum_j phi_j(x) w_j,
        grad_x phi_j(x) = -6 (1 - |x - y_j|^2 / rho^2)^2 (x - y_j) / rho^2

    (the quotient rule on the normalised average; phi_j(x) = (1 - |x - y_j|^2 / rho^2)^3). As
    a matrix: ``G_k[i, j] = c_ijk - (sum_j' c_ij'k) M[i, j]`` with ``c_ijk = grad_k phi_j(x_i)
    w_j / max(Z_i, floor m)``, ``Z_i = sum_j phi_j(x_i) w_j``, m the kernel's mass
    (``integral phi``), on the sparsity of M. Constants map to 0 exactly. Where at least
    ``floor`` (0.1) of the kernel's mass lies in the domain's quadrature (every interior and
    boundary point of a mesh that resolves rho: a straight edge holds 1/2, a right-angled
    corner 1/4, a cube's corner 1/8) this is the exact gradient; where the ball is not resolved
    (a point or two near its rim carrying all of Z) the exact gradient is unbounded,
    ``|grad phi_j| / phi_j ~ 1 / (rho (1 - s^2))``, and the floor bounds it:
    ``|G f| <= 2 ||f||_inf sum_j |grad phi_j| w_j / (floor m) <= C ||f||_inf / (floor rho)``.
    It is a quadrature of a Lipschitz kernel against f and converges like the mollifier itself
    under refinement.

    ``interp`` (scipy [N, M]): the result is ``G @ interp`` [M_out d, M] (``pos`` are then the
    quadrature points of a mesh's cells and interp their interpolation from its nodes). Output
    rows are built in chunks of about ``chunk_pairs`` neighbour pairs (about 100 bytes of
    scratch each), each multiplied by ``interp`` before it is stacked, on the threads of
    :func:`graphop.layers.sparse.build_threads` (a share of ``chunk_pairs`` each): the same
    matrix. Each chunk's rows come from the compiled :func:`_gradient_rows_kernel`
    (:mod:`graphop.jit`; with ``interp`` the product fused in, and from :data:`graphop.layers.sparse.ORDERED_MIN_ROWS` output points on, the points in
    :func:`graphop.geometry.neighbors.spatial_order`, put back in order once), or from the
    numpy :func:`_gradient_rows_reference` with ``GRAPHOP_JIT=0``: the same matrix to rounding.

    Raises:
        MeshError: an output point whose ball holds no positive weight.
    """
    pos = np.asarray(pos, dtype=np.float64)
    out = pos if pos_out is None else np.asarray(pos_out, dtype=np.float64)
    n_pairs = len(out) * min(len(pos), 1 + len(pos) * (2 * radius) ** pos.shape[1])
    step = row_chunk(len(out), n_pairs, chunk_pairs)
    # over cells, a large compiled build runs its output points in spatial order (as DISCO's)
    order = spatial_order(out) if interp is not None and ordered_build(len(out)) else None
    if step < len(out) or order is not None:
        tree = PointTree(pos, periodic)             # one tree for every block of rows
        ids = np.arange(len(out)) if order is None else order

        def rows(a):
            return _gradient_rows(pos, weight, radius, periodic, out[ids[a:a + step]], interp,
                                  tree, ids[a:a + step])

        m = build_rows(len(out), step, rows, order=order, width=pos.shape[1])
        m.sort_indices()
        return m
    return _gradient_rows(pos, weight, radius, periodic, out if pos_out is not None else None,
                          interp, None)


def _gradient_rows(pos, weight, radius, periodic, pos_out, interp, tree,
                   ids=None) -> sp.csr_matrix:
    """The rows of :func:`mollifier_gradient_matrix` at ``pos_out`` (None: at ``pos``, the
    symmetric search), searching ``tree`` (a :class:`PointTree` of ``pos``) when given;
    ``ids``: the output points' numbers in the whole build (for the error message)."""
    out = pos if pos_out is None else pos_out
    w = np.asarray(weight, dtype=np.float64)
    d = pos.shape[1]
    source = None if pos_out is None else (pos if tree is None else tree)
    nb = radius_neighbors(out, source, float(radius), periodic=periodic,
                          sort=interp is None)
    mass = 2 * math.pi ** (d / 2) / math.gamma(d / 2) * radius ** d * (
        math.gamma(d / 2) * math.gamma(4) / math.gamma(d / 2 + 4) / 2)   # integral of phi
    if jit.enabled():            # with interp, the product is fused into the kernel
        n_cols = len(pos) if interp is None else interp.shape[1]
        b = _NO_INTERP if interp is None else (interp.indptr, interp.indices, interp.data)
        big = max(n_cols, nb.nnz * d * (1 if interp is None else 4)) >= 2**31 - 1
        indptr, indices, vals, total = _gradient_rows_kernel(
            nb.indptr, nb.indices, nb.offsets, nb.distances, jit.readonly(w), float(radius),
            GRADIENT_FLOOR * mass, *b, n_cols, np.empty(0, dtype=np.int64 if big else np.int32))
        _check_total(total, out, radius, ids)
        return sp.csr_matrix((vals, indices, indptr), shape=(len(out) * d, n_cols))
    g = _gradient_rows_reference(nb, w, radius, out, len(pos), mass, ids)
    if interp is not None:
        g = (g @ interp).tocsr()
        g.sort_indices()
    return g


def _check_total(total, out, radius, ids=None) -> None:
    bad = np.flatnonzero(~(total > 0))
    if len(bad):
        i = int(bad[0] if ids is None else np.min(ids[bad]))
        at = bad[0] if ids is None else bad[np.argmin(ids[bad])]
        raise MeshError(f"smoothing radius {radius:g}: point {i} at "
                        f"{out[at].tolist()} has no positive quadrature weight within it")


#: the CSR arrays (indptr, indices, data) of "no interpolation" for :func:`_gradient_rows_kernel`
_NO_INTERP = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32), np.empty(0))


@jit.kernel
def _gradient_rows_kernel(indptr, indices, offsets, dist, w, radius, floor_mass, b_ptr, b_idx,
                          b_val, n_nodes, itype):
    """Compiled :func:`_gradient_rows_reference`, one output point at a time: CSR arrays of
    the rows ``i d + k`` and the normalisers Z_i. Without B (``b_ptr`` empty): every pair of
    the ball, in its order. With the cells' interpolation B (CSR [Q, n_nodes]) the product is
    fused in: each query's entries go through B into a dense block of its nodes (as in
    :func:`graphop.layers.disco._disco_rows_kernel`), written with the nodes ascending and
    exact zeros dropped (as scipy's product drops them). Integer type of the CSR arrays: that
    of ``itype``."""
    nq, d = len(indptr) - 1, offsets.shape[1]
    cells = len(b_ptr) > 0
    out_ptr = np.zeros(nq * d + 1, dtype=itype.dtype)
    cap = max(16, (4 if cells else 1) * d * indptr[nq])   # np.empty: spare room is untouched
    out_idx = np.empty(cap, dtype=itype.dtype)
    out_val = np.empty(cap)
    total = np.zeros(nq)
    csum = np.zeros(d)
    g = np.zeros(d)
    slot = np.full(n_nodes if cells else 0, -1, dtype=np.int64)
    touched = np.zeros(64, dtype=np.int64)
    acc = np.zeros((64, d))
    pos = 0
    for i in range(nq):
        a, b = indptr[i], indptr[i + 1]
        t = 0.0
        for e in range(a, b):
            q = max(0.0, 1.0 - (dist[e] / radius) ** 2)
            t += q ** 3 * w[indices[e]]
        total[i] = t
        z = max(t, floor_mass)
        csum[:] = 0.0
        for e in range(a, b):
            q = max(0.0, 1.0 - (dist[e] / radius) ** 2)
            for k in range(d):
                csum[k] += (6.0 / radius ** 2) * (q ** 2 * w[indices[e]] / z) * offsets[e, k]
        if not cells:
            for k in range(d):
                for e in range(a, b):
                    q = max(0.0, 1.0 - (dist[e] / radius) ** 2)
                    wj = w[indices[e]]
                    m = q ** 3 * wj / t if t > 0 else 0.0
                    out_idx[pos] = indices[e]
                    out_val[pos] = ((6.0 / radius ** 2) * (q ** 2 * wj / z) * offsets[e, k]
                                    - csum[k] * m)
                    pos += 1
                out_ptr[i * d + k + 1] = pos
            continue
        # this query's nodes, ascending (the gather of _disco_rows_kernel: numba's disk cache
        # keys a kernel on its own file, so a shared compiled helper in another file would
        # leave cached kernels with a stale copy of it)
        n_t = 0
        for e in range(a, b):
            for f in range(b_ptr[indices[e]], b_ptr[indices[e] + 1]):
                if slot[b_idx[f]] < 0:
                    if n_t == len(touched):
                        grown = np.empty(2 * n_t, dtype=np.int64)
                        grown[:n_t] = touched[:n_t]
                        touched = grown
                    slot[b_idx[f]] = 0
                    touched[n_t] = b_idx[f]
                    n_t += 1
        # ascending: a Shell sort written out here, not np.sort (numba's sorts are jitted
        # helpers whose symbols can collide between cached kernels loaded in one process,
        # numba issue 10486: a kernel then ran another kernel's argsort)
        gap = 1
        while gap < n_t // 3:
            gap = 3 * gap + 1
        while gap > 0:
            for u in range(gap, n_t):
                key = touched[u]
                at = u
                while at >= gap and touched[at - gap] > key:
                    touched[at] = touched[at - gap]
                    at -= gap
                touched[at] = key
            gap //= 3
        nodes = touched[:n_t]
        for s_ in range(n_t):
            slot[nodes[s_]] = s_
        if acc.shape[0] < n_t:
            acc = np.zeros((2 * n_t, d))
        acc[:n_t] = 0.0
        for e in range(a, b):
            q = max(0.0, 1.0 - (dist[e] / radius) ** 2)
            wj = w[indices[e]]
            m = q ** 3 * wj / t if t > 0 else 0.0
            for k in range(d):
                g[k] = (6.0 / radius ** 2) * (q ** 2 * wj / z) * offsets[e, k] - csum[k] * m
            for f in range(b_ptr[indices[e]], b_ptr[indices[e] + 1]):
                s_, bv = slot[b_idx[f]], b_val[f]
                for k in range(d):
                    acc[s_, k] += g[k] * bv
        if pos + d * n_t > cap:                  # grow the output (amortised doubling)
            cap = max(2 * cap, pos + d * n_t)
            grown_idx = np.empty(cap, dtype=itype.dtype)
            grown_val = np.empty(cap)
            grown_idx[:pos] = out_idx[:pos]
            grown_val[:pos] = out_val[:pos]
            out_idx, out_val = grown_idx, grown_val
        for k in range(d):
            for s_ in range(n_t):
                if acc[s_, k] != 0.0:
                    out_idx[pos] = nodes[s_]
                    out_val[pos] = acc[s_, k]
                    pos += 1
            out_ptr[i * d + k + 1] = pos
        for s_ in range(n_t):
            slot[nodes[s_]] = -1
    return out_ptr, out_idx[:pos], out_val[:pos], total


def _gradient_rows_reference(nb, w, radius, out, n_in, mass, ids=None) -> sp.csr_matrix:
    """The numpy reference of :func:`_gradient_rows`' matrix (before ``interp``)."""
    d = nb.offsets.shape[1]
    rows = nb.rows()
    q = np.maximum(0.0, 1.0 - (nb.distances / radius) ** 2)
    wj = w[nb.indices]
    total = np.bincount(rows, q ** 3 * wj, minlength=len(out))
    _check_total(total, out, radius, ids)
    m = q ** 3 * wj / total[rows]                                    # M[i, j]
    z = np.maximum(total, GRADIENT_FLOOR * mass)
    # x_i - y_j = -offsets; c_ijk = -6 q^2 (x_i - y_j)_k / rho^2 w_j / max(Z_i, floor m)
    c = (6.0 / radius ** 2) * (q ** 2 * wj / z[rows])[:, None] * nb.offsets    # [nnz, d]
    csum = np.stack([np.bincount(rows, c[:, k], minlength=len(out)) for k in range(d)], 1)
    vals = c - csum[rows] * m[:, None]                                              # [nnz, d]
    n_each = nb.counts()
    # rows i d + k hold the neighbours of i in order: repeat each point's block d times
    starts = np.repeat(nb.indptr[:-1], d)
    lens = np.repeat(n_each, d)
    order = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
    k_of = np.repeat(np.tile(np.arange(d), len(out)), lens)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    return sp.csr_matrix((vals[order, k_of], nb.indices[order], indptr),
                         shape=(len(out) * d, n_in))


def mollifier_matrix(pos, weight, radius: float, periodic=None, pos_out=None) -> sp.csr_matrix:
    """The quadrature-weighted local average over a fixed physical radius rho, CSR [N, N]
    (or [M, N] at the M points ``pos_out``; default the points ``pos`` themselves):

        (M_rho f)(x_i) = sum_{|y_j - x_i| < rho} phi_ij w_j f(y_j) / sum_{|y_k - x_i| < rho} phi_ik w_k,
        phi_ij = (1 - |y_j - x_i|^2 / rho^2)^3

    (minimum image on a torus). Rows sum to one, so constants are kept; phi is C^2 with
    ``|grad phi| <= 2 / rho``, so ``M_rho f`` is Lipschitz with constant O(||f||_inf / rho)
    for any bounded f (see :mod:`graphop.layers.differential`). The point itself is included.

    Raises:
        MeshError: a point whose ball holds no positive weight.
    """
    pos = np.asarray(pos, dtype=np.float64)
    out = pos if pos_out is None else np.asarray(pos_out, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    nb = radius_neighbors(out, None if pos_out is None else pos, float(radius), periodic=periodic)
    rows = nb.rows()
    q = np.maximum(0.0, 1.0 - (nb.distances / radius) ** 2)
    vals = q ** 3 * w[nb.indices]
    total = np.bincount(rows, vals, minlength=len(out))
    _check_total(total, out, radius)
    m = sp.csr_matrix((vals / total[rows], nb.indices, nb.indptr), shape=(len(out), len(pos)))
    return m
