"""DISCO convolution: a local integral operator with a learned kernel on any mesh or point cloud.

    (K f)_o(x_i) = sum_l sum_c theta[l, c, o] * sum_{j : |y_j - x_i| <= r} psi_l((y_j - x_i) / r) f_c(y_j) w_j
                   (+ bias_o)

with quadrature weights w_j (``data.weight``), a fixed physical radius r that does not shrink
under refinement, and the kernel basis psi_l of :mod:`graphop.layers.basis` (L = 1 + (n_r - 1) n_a
functions for ``kernel_shape = (n_r, n_a)``).

Normalisation (``normalize``), so that outputs stay O(|f|) for any radius:

* ``"mean"``: each basis function at each output point is divided by its own discrete mass,
  ``m_il = sum_j |psi_l((y_j - x_i) / r)| w_j``, floored at
  ``c_l = MIN_MASS_FRACTION r^d ||psi_l||_1`` (half its mass on the whole ball):

      psi_l(.) w_j / max(m_il, c_l)   +   max(0, 1 - m_il / c_l) * b_ij,
      b_ij = sum_l |psi_l| w_j / sum_k sum_l |psi_l| w_k      (the ball mean; the second term
                                                                only for nonnegative psi_l)

  A well-resolved nonnegative psi_l gives its weighted mean of f; one with little or no mass at
  x_i (a mesh coarser than the kernel's rings, or a corner) blends towards the mean of f over
  the ball, continuously in the geometry; constants give 1 everywhere. A sign-changing psi_l
  (the 1D and 3D direction functions ``u``, ``u_x``, ...) is divided by ``max(m_il, c_l)`` and
  blends towards 0. A hat psi_l covers a few points only (30 points per ball and L = 9 give
  ~3 per basis function), and the error of its quadrature, the same factor for every input,
  cancels in the ratio.
* ``"quadrature"`` (default): the ``"mean"`` rows times the fraction of the ball inside the
  domain, ``phi_i = min(1, sum_j beta(|y_j - x_i| / r) w_j / (r^d int beta))`` with the wide
  weight ``beta(t) = 1 - t^2`` (:func:`ball_fraction`): 1 in the interior, 1/2 on a straight
  boundary, 1/4 at a right-angled corner. It keeps what the plain integral knows about the
  boundary (``"mean"`` loses it: on Darcy, whose solution vanishes on the boundary, ``"mean"``
  trained to a 15% larger error, ``experiments/disco_normalization``) while its quadrature
  error is that of one wide function, not of each narrow hat. In the interior of a fine mesh
  both tend to the ``"l1"`` operator. Measured with r = sqrt(30 / (pi 2000)) on Delaunay
  meshes of the unit square, against 32k points (smooth f): operator error 113% at 500 points
  and 9% at 2k with ``"l1"``, 4.2% and 0.9% with ``"quadrature"``, 1.7% and 0.34% with
  ``"mean"``; with a radius holding 8 points per ball at 2k (about 2 at 500), 15% and 3.9%
  with ``"quadrature"`` (121% and 8% with the uncapped fraction of a narrower weight).
* ``"l1"`` (``True``): each psi_l is divided by ``r^d ||psi_l||_1``, the same factor at every
  point (the default of graphop 0.1, kept for its checkpoints: format version 1).
* ``"none"`` (``False``): the plain quadrature of the formula above.

The paper: Liu-Schiaffini et al., "Neural Operators with Localized Integral and Differential
Kernels", ICML 2024 (arXiv 2402.16845), section on DISCO convolutions.

Computation: one cached sparse CSR product ``Y = Psi @ X`` (Psi [N_out L, N_in], values
psi_l * w_j) and one dense GEMM ``Y.view(N_out, L C) @ theta.view(L C, O)`` (see
:mod:`graphop.layers.sparse`); never per-edge message tensors. A batch sharing one mesh is one
product with the batch in the columns of X; a batch of different meshes uses a block-diagonal
Psi. The backward pass is ``grad_X = Psi^T grad_Y`` with a precomputed transposed CSR.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from graphop.geometry.neighbors import (PointTree, check_radius_operator, count_pairs,
                                        radius_neighbors, spatial_order)
from graphop.layers.basis import KernelBasis, make_basis
from graphop.layers.sparse import (apply_operator, build_rows, cached_operator, check_features,
                                   csr_from_coo, graph_set, may_split, n_points,
                                   ordered_build, quadrature_mode, row_chunk, uses_cells)
import graphop.jit as jit
from graphop.errors import InputError

__all__ = ["DISCOConv", "disco_matrix", "ball_fraction", "NORMALIZE", "normalize_mode"]

#: most neighbour pairs one chunk of a DISCO build holds. The build's scratch arrays take about
#: 100 bytes a pair, so this bounds them near 0.5 GB however large the mesh; the finished CSR
#: keeps about 12 bytes a non-zero.
BUILD_CHUNK_PAIRS = 5_000_000


#: the values of DISCOConv's ``normalize`` (module docstring); True and False are "l1", "none"
NORMALIZE = ("quadrature", "mean", "l1", "none")
#: the values of DISCOConv's ``manifold``
MANIFOLDS = ("plane", "sphere")
#: ``"quadrature"``: a basis function is under-resolved at a point when its discrete mass there is
#: below this fraction of its mass ``r^d ||psi_l||_1`` on the whole ball
MIN_MASS_FRACTION = 0.5


def normalize_mode(normalize) -> str:
    """``normalize`` as one of :data:`NORMALIZE` (True -> "l1", False -> "none")."""
    if normalize is True or normalize is False:
        return "l1" if normalize else "none"
    if isinstance(normalize, str) and normalize in NORMALIZE:
        return normalize
    raise InputError(f"DISCO normalize must be one of {NORMALIZE} (or True / False), "
                     f"got {normalize!r}")


def basis_entries(nb, w, radius: float, basis: KernelBasis):
    """The unnormalised entries psi_l(z_ij / r) w_j of every neighbour pair: ``(e, l, rows,
    cols, vals)`` (pair index, basis function, output row, input column, value)."""
    e, l, v = basis.evaluate(nb.offsets / radius)
    rows = np.repeat(np.arange(nb.n_query, dtype=np.int64), nb.counts())[e]
    cols = nb.indices[e]
    return e, l, rows, cols, v * w[cols]


def _disco_rows(nb, w, radius: float, basis: KernelBasis, mode: str,
                B=None) -> sp.csr_matrix:
    """The rows of Psi for the pairs ``nb`` (times ``B`` when given): the compiled kernel, or
    the numpy reference with ``GRAPHOP_JIT=0``."""
    if jit.enabled():
        norms = radius ** basis.dim * basis.l1_norms()
        # B's own CSR arrays (scipy's int32 indices; no B: empty arrays of those types, so both
        # cases share one compilation), never converted: a chunked build calls this per block
        if B is None:
            b = _NO_INTERP + (0,)
        else:
            b = (B.indptr, B.indices, B.data, B.shape[1])
        n_cols = len(w) if B is None else B.shape[1]
        big = max(n_cols, nb.nnz * basis.n_basis) >= 2**31 - 1
        indptr, indices, vals = _disco_rows_kernel(
            nb.indptr, nb.indices, nb.offsets, nb.distances, jit.readonly(w), float(radius),
            basis.n_r, basis.n_a, _MODE_CODE[mode], norms, MIN_MASS_FRACTION * norms,
            basis.nonnegative(), _BETA_INTEGRAL[basis.dim] * radius ** basis.dim, *b,
            np.empty(0, dtype=np.int64 if big else np.int32))
        return sp.csr_matrix((vals, indices, indptr), shape=(nb.n_query * basis.n_basis, n_cols))
    m = _disco_rows_reference(nb, w, radius, basis, mode)
    return m if B is None else (m @ B).tocsr()


def _disco_rows_reference(nb, w, radius: float, basis: KernelBasis, mode: str) -> sp.csr_matrix:
    e, l, rows, cols, vals = basis_entries(nb, w, radius, basis)
    nq, L = nb.n_query, basis.n_basis
    if mode == "l1":
        vals = vals / (radius ** basis.dim * basis.l1_norms())[l]
    if mode not in ("quadrature", "mean"):
        return csr_from_coo(rows * L + l, cols, vals, (nq * L, len(w)))
    frac = ball_fraction(nb, w, radius, basis.dim) if mode == "quadrature" else None
    return _weighted_means(nb, e, l, rows, cols, vals, len(w), radius, basis, frac)


def ball_fraction(nb, w, radius: float, d: int) -> np.ndarray:
    """phi_i = min(1, sum_j beta(|y_j - x_i| / r) w_j / (r^d int beta)), beta(t) = 1 - t^2 on
    the unit ball: the (smoothly weighted) fraction of the ball around x_i inside the domain,
    [N_out]. -> 1 in the interior, 1/2 on a straight boundary, 1/4 at a right-angled corner.
    The continuum fraction never exceeds 1; the cap removes the upward half of the quadrature
    noise where a coarse mesh puts only a few points in the ball."""
    beta = np.maximum(0.0, 1.0 - (nb.distances / radius) ** 2)
    mass = np.bincount(nb.rows(), weights=beta * w[nb.indices], minlength=nb.n_query)
    return np.minimum(1.0, mass / (_BETA_INTEGRAL[d] * radius ** d))


#: int_{|z| <= 1} (1 - |z|^2) dz in d = 1, 2, 3
_BETA_INTEGRAL = {1: 4 / 3, 2: math.pi / 2, 3: 8 * math.pi / 15}


def _weighted_means(nb, e, l, rows, cols, vals, n_in, radius, basis, frac=None
                    ) -> sp.csr_matrix:
    """``normalize="mean"``: rows ``psi_l w_j / max(m_il, c_l)`` plus the blend towards the
    ball mean (module docstring); ``e, l, rows, cols, vals`` are the entries ``psi_l w_j``.
    ``frac`` [N_out] (``"quadrature"``): every row of point i times ``frac[i]``.

    One pass over the entries: the per-(point, basis) scale is formed on the N L rows and
    gathered once; the few under-resolved rows get their blend as a second, small CSR."""
    nq, L = nb.n_query, basis.n_basis
    if not vals.all():                                 # zero-weight points carry nothing
        keep = vals != 0
        e, l, rows, cols, vals = e[keep], l[keep], rows[keep], cols[keep], vals[keep]
    key = rows * L + l
    raw_abs = np.abs(vals)
    mass = np.bincount(key, weights=raw_abs, minlength=nq * L)
    floor = np.tile(MIN_MASS_FRACTION * radius ** basis.dim * basis.l1_norms(), nq)
    scale = 1.0 / np.maximum(mass, floor)
    row_frac = None if frac is None else np.repeat(frac, L)
    if row_frac is not None:
        scale *= row_frac
    m = csr_from_coo(key, cols, vals * scale[key], (nq * L, n_in))
    blend = np.maximum(0.0, 1.0 - mass / floor) * np.tile(basis.nonnegative(), nq)
    under = np.flatnonzero(blend > 0)
    if len(under) == 0:
        return m
    # an under-resolved nonnegative psi_l takes (1 - m/floor) of the ball mean, with pair
    # weights sum_l |psi_l| w_j (the ball never lacks the query point itself when out is in)
    pair_w = np.bincount(e, weights=raw_abs, minlength=nb.nnz)
    ball = np.bincount(nb.rows(), weights=pair_w, minlength=nq)
    under = under[ball[under // L] > 0]
    if row_frac is not None:
        blend = blend * row_frac
    start = nb.indptr
    q = under // L
    n_each = start[q + 1] - start[q]
    pairs = np.repeat(start[q] - np.cumsum(n_each) + n_each, n_each) + np.arange(n_each.sum())
    extra = csr_from_coo(np.repeat(under, n_each), nb.indices[pairs],
                         np.repeat(blend[under] / ball[q], n_each) * pair_w[pairs],
                         (nq * L, n_in))
    m = (m + extra).tocsr()                            # sums the entries both hold
    m.eliminate_zeros()
    m.sort_indices()
    return m


_MODE_CODE = {"none": 0, "l1": 1, "mean": 2, "quadrature": 3}
#: the CSR arrays (indptr, indices, data) of "no interpolation" for :func:`_disco_rows_kernel`
_NO_INTERP = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32), np.empty(0))


@jit.kernel
def _disco_rows_kernel(indptr, indices, offsets, dist, w, radius, n_r, n_a, mode, norms,
                       floors, nonneg, beta_norm, b_ptr, b_idx, b_val, n_nodes, itype):
    """Compiled :func:`_disco_rows`: the rows of Psi for the pairs of a Neighborhood, one
    query point at a time (its basis values in a small dense [pairs, L] block), the same
    arithmetic as :func:`basis_entries`, :func:`ball_fraction` and :func:`_weighted_means`.
    ``mode``: :data:`_MODE_CODE`; ``norms`` [L]: r^d ||psi_l||_1 (``"l1"``); ``floors`` [L]:
    the mass floors c_l; ``nonneg`` [L]: psi_l >= 0; ``beta_norm``: r^d int beta.
    ``b_ptr, b_idx, b_val`` (CSR of B [N_in, n_nodes]; ``b_ptr`` empty: none): the rows of
    ``Psi @ B``, each query's nodes gathered in a dense block (SpGEMM row by row, the
    product never stored in between; exact zeros dropped as scipy's product does).
    Returns the CSR arrays (indptr [N_out L + 1], indices, data) with the integer type of
    ``itype`` (an empty array: int32 where it fits, as scipy would convert them), columns
    ascending (in pair order without B when the pairs' rows are not sorted)."""
    nq = len(indptr) - 1
    d = offsets.shape[1]
    L = 1 + (n_r - 1) * n_a
    max_pairs = 0
    for i in range(nq):
        max_pairs = max(max_pairs, indptr[i + 1] - indptr[i])
    block = np.zeros((max_pairs, L))
    pair_w = np.zeros(max_pairs)
    cells = len(b_ptr) > 0
    slot = np.full(n_nodes if cells else 0, -1, dtype=np.int64)   # node -> column of acc
    touched = np.zeros(0, dtype=np.int64)
    acc = np.zeros((0, L))
    scales = np.zeros(L)
    blends = np.zeros(L)
    mass = np.zeros(L)
    ring_l = np.zeros(2 * n_a, dtype=np.int64)
    ring_v = np.zeros(2 * n_a)
    dirs = np.zeros(n_a)
    out_ptr = np.zeros(nq * L + 1, dtype=itype.dtype)
    # room for every pair's nonzero basis functions (a blend can add more: then it grows);
    # np.empty maps pages only where they are written, so the spare room costs no memory
    per_pair = 2 if n_a == 1 else (4 if d == 2 else 2 * n_a)
    cap = max(16, (4 if cells else per_pair) * len(indices))
    out_idx = np.empty(cap, dtype=itype.dtype)
    out_val = np.empty(cap)
    pos = 0
    for i in range(nq):
        a, b = indptr[i], indptr[i + 1]
        n = b - a
        mass[:] = 0.0
        ball_mass = 0.0
        ball = 0.0
        for p in range(n):
            block[p, :] = 0.0
            pair_w[p] = 0.0
            wj = w[indices[a + p]]
            tt = 0.0
            for k in range(d):
                zk = offsets[a + p, k] / radius
                tt += zk * zk
            t = np.sqrt(tt)
            s = t * n_r
            k0 = np.int64(np.floor(s))
            f = s - k0
            w0 = 1.0 - f if k0 < n_r else 0.0
            w1 = f if k0 + 1 < n_r else 0.0
            # (basis index, value) of this pair's nonzero basis functions
            m = 0
            if n_a == 1:
                ring_l[0], ring_v[0] = k0, w0
                ring_l[1], ring_v[1] = k0 + 1, w1
                m = 2
            elif d == 2:
                phi = np.arctan2(offsets[a + p, 1] / radius,
                                 offsets[a + p, 0] / radius) * (n_a / (2 * np.pi))
                m0 = np.int64(np.floor(phi))
                g = phi - m0
                m0 = m0 % n_a
                m1 = 0 if m0 + 1 == n_a else m0 + 1
                if k0 == 0:
                    ring_l[0], ring_v[0] = 0, w0
                    m = 1
                else:
                    ring_l[0], ring_v[0] = 1 + (k0 - 1) * n_a + m0, w0 * (1.0 - g)
                    ring_l[1], ring_v[1] = 1 + (k0 - 1) * n_a + m1, w0 * g
                    m = 2
                ring_l[m], ring_v[m] = 1 + k0 * n_a + m0, w1 * (1.0 - g)
                ring_l[m + 1], ring_v[m + 1] = 1 + k0 * n_a + m1, w1 * g
                m += 2
            else:
                inv = 1.0 / t if t > 0 else 1.0
                ux = offsets[a + p, 0] / radius * inv
                dirs[0] = 1.0
                if d == 1:
                    dirs[1] = ux
                else:
                    uy = offsets[a + p, 1] / radius * inv
                    uz = offsets[a + p, 2] / radius * inv
                    dirs[1], dirs[2], dirs[3] = ux, uy, uz
                    if n_a == 9:
                        dirs[4], dirs[5], dirs[6] = ux * uy, uy * uz, uz * ux
                        dirs[7], dirs[8] = ux * ux - uy * uy, 3 * uz * uz - 1
                if k0 == 0:
                    ring_l[0], ring_v[0] = 0, w0
                    m = 1
                else:
                    for q in range(n_a):
                        ring_l[q], ring_v[q] = 1 + (k0 - 1) * n_a + q, w0 * dirs[q]
                    m = n_a
                for q in range(n_a):
                    ring_l[m + q], ring_v[m + q] = 1 + k0 * n_a + q, w1 * dirs[q]
                m += n_a
            for q in range(m):
                v = ring_v[q] * wj
                if v != 0.0:
                    block[p, ring_l[q]] += v
                    mass[ring_l[q]] += abs(v)
                    pair_w[p] += abs(v)
            ball += pair_w[p]
            if mode == 3:
                beta = 1.0 - (dist[a + p] / radius) ** 2
                if beta > 0:
                    ball_mass += beta * wj
        frac = min(1.0, ball_mass / beta_norm) if mode == 3 else 1.0
        for l in range(L):
            blends[l] = 0.0
            if mode == 0:
                scales[l] = 1.0
            elif mode == 1:
                scales[l] = 1.0 / norms[l]
            else:
                scales[l] = frac / max(mass[l], floors[l])
                if nonneg[l] and ball > 0:
                    blends[l] = max(0.0, 1.0 - mass[l] / floors[l]) * frac / ball
        for p in range(n):                          # the block becomes the finished rows
            for l in range(L):
                v = block[p, l] * scales[l]
                if blends[l] > 0:
                    v += blends[l] * pair_w[p]
                block[p, l] = v
        if cells:
            # the nodes of this query's quadrature points, ascending, and a dense block
            # acc [nodes, L] of sum_p v_pl B[q_p, node]
            n_t = 0
            for p in range(n):
                q = indices[a + p]
                for e in range(b_ptr[q], b_ptr[q + 1]):
                    if slot[b_idx[e]] < 0:
                        if n_t == len(touched):
                            grown = np.empty(max(64, 2 * n_t), dtype=np.int64)
                            grown[:n_t] = touched[:n_t]
                            touched = grown
                        slot[b_idx[e]] = 0
                        touched[n_t] = b_idx[e]
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
                acc = np.zeros((max(64, 2 * n_t), L))
            acc[:n_t] = 0.0
            for p in range(n):
                q = indices[a + p]
                for e in range(b_ptr[q], b_ptr[q + 1]):
                    s_, bv = slot[b_idx[e]], b_val[e]
                    for l in range(L):
                        acc[s_, l] += block[p, l] * bv
            need = L * n_t
        else:
            need = L * n
        if pos + need > cap:                        # grow the output (amortised doubling)
            cap = max(2 * cap, pos + need)
            grown_idx = np.empty(cap, dtype=itype.dtype)
            grown_val = np.empty(cap)
            grown_idx[:pos] = out_idx[:pos]
            grown_val[:pos] = out_val[:pos]
            out_idx, out_val = grown_idx, grown_val
        for l in range(L):
            if cells:
                for s_ in range(n_t):
                    if acc[s_, l] != 0.0:
                        out_idx[pos] = nodes[s_]
                        out_val[pos] = acc[s_, l]
                        pos += 1
            else:
                for p in range(n):
                    if block[p, l] != 0.0:
                        out_idx[pos] = indices[a + p]
                        out_val[pos] = block[p, l]
                        pos += 1
            out_ptr[i * L + l + 1] = pos
        if cells:
            for s_ in range(n_t):
                slot[nodes[s_]] = -1
    return out_ptr, out_idx[:pos], out_val[:pos]       # views: no copy of the result


def disco_matrix(pos_out, pos_in, weight_in, radius: float, basis: KernelBasis, *,
                 periodic=None, normalize="quadrature", same: bool = False,
                 interp=None) -> sp.csr_matrix:
    """The DISCO operator Psi (see the module docstring) as scipy CSR [N_out * L, N_in].

    ``same=True`` means pos_out is pos_in (uses the faster symmetric pair search). Large
    operators are built in chunks of output rows holding about :data:`BUILD_CHUNK_PAIRS`
    neighbour pairs each, so the scratch memory stays bounded, on the threads of
    :func:`graphop.layers.sparse.build_threads` (the chunks then hold a share of that bound
    each); the result is identical.
    ``interp = (B, nodes)``: ``pos_in``/``weight_in`` are quadrature points of the cells of a
    mesh with points ``nodes`` [M, d] and ``B`` [N_in, M] interpolates nodal values to them
    (:meth:`graphop.layers.sparse.GraphSet.quadrature`); the result is ``Psi @ B``
    [N_out * L, M], each chunk multiplied before the next is built.
    The rows come from the compiled :func:`_disco_rows_kernel` (:mod:`graphop.jit`; with
    cells the product with B is fused into it, and from
    :data:`graphop.layers.sparse.ORDERED_MIN_ROWS` output points on they are built with the
    points in :func:`graphop.geometry.neighbors.spatial_order` and put back in order once),
    or from the numpy reference
    (:func:`basis_entries`, :func:`ball_fraction`, :func:`_weighted_means`, then ``@ B``)
    with ``GRAPHOP_JIT=0``: the same matrix to rounding.
    """
    normalize = normalize_mode(normalize)
    pos_in = np.asarray(pos_in, dtype=np.float64)
    pos_out = pos_in if same else np.asarray(pos_out, dtype=np.float64)
    # refuse an operator that cannot fit before building it; warn on a nearly dense one.
    # Measured: 12 B/nonzero in scipy CSR (x2 while chunks are stacked) + 24 B for the torch
    # A and A^T; about 250 B per neighbour pair of scratch, for one chunk at a time. Over
    # cells (sized on the nodes): 2.4x the nodal nonzeros and 7x the pairs (2D, measured on a
    # 32k-point mesh: 6.2M against 2.6M nonzeros; 3 quadrature points a triangle, 2 triangles
    # and one node weight per node)
    B, nodes = interp if interp is not None else (None, pos_in)
    cells = B is not None
    check_radius_operator(pos_out, nodes, radius, periodic=periodic,
                          entries_per_pair=basis.entries_per_offset() * (2.4 if cells else 1),
                          bytes_per_entry=48, scratch_per_pair=250 * (7 if cells else 1),
                          max_scratch_pairs=BUILD_CHUNK_PAIRS / (7 if cells else 1),
                          what="DISCO")
    w = np.asarray(weight_in, dtype=np.float64)
    n_out = len(pos_out)
    chunk, tree = n_out, None
    if may_split(n_out * len(pos_in), BUILD_CHUNK_PAIRS):   # then count the pairs
        tree = PointTree(pos_in, periodic)         # one tree (or cell list) for every block
        pairs = count_pairs(pos_out, tree, radius, periodic=periodic, sample=256)
        chunk = row_chunk(n_out, pairs, BUILD_CHUNK_PAIRS)

    def rows(nb):
        return _disco_rows(nb, w, radius, basis, normalize, B)

    # over cells, the compiled rows of a large operator are built for the output points in
    # spatial order (neighbouring queries read the same quadrature points, as the quadrature
    # itself is listed in that order) and put back in order once (build_rows)
    order = spatial_order(pos_out) if cells and ordered_build(n_out) else None
    if chunk >= n_out and order is None:
        m = rows(radius_neighbors(pos_out, None if same else pos_in, radius, periodic=periodic,
                                  sort=not cells))
    else:
        source = pos_in if tree is None else tree
        m = build_rows(n_out, chunk, lambda a: rows(radius_neighbors(
            pos_out[a:a + chunk] if order is None else pos_out[order[a:a + chunk]], source,
            radius, periodic=periodic, sort=not cells)), order=order, width=basis.n_basis)
    if cells:
        m.sort_indices()
    return m


class DISCOConv(nn.Module):
    """Discrete-continuous convolution on meshes (formula in the module docstring).

    Args:
        in_channels: C, channels of ``x``.
        out_channels: O.
        radius: kernel support r in physical units (> 0).
        kernel_shape: ``(n_r, n_a)`` radial rings x direction functions (default (3, 4), L = 9).
        basis: "piecewise_linear" (default) or "isotropic", or a :class:`KernelBasis`.
        bias: add a learned bias per output channel (default True).
        normalize: ``"quadrature"`` (default: each basis function's weighted mean at each
            output point, times the fraction of the ball inside the domain), ``"mean"`` (the
            weighted means alone), ``"l1"`` / True (divided by ``r^d ||psi_l||_1``) or
            ``"none"`` / False; see the module docstring.
        manifold: ``"plane"`` (default: Euclidean balls in the points' own dimension) or
            ``"sphere"``: 3D points on a sphere about the origin (radius = their median norm,
            within 1e-6 relative), ``radius`` a geodesic angle in radians, the 2D basis in each
            point's east/north tangent frame (:mod:`graphop.layers.disco_sphere`).
        quadrature: ``"cells"`` (default: on a mesh with cells, integrate the piecewise-linear
            function of the nodal values at interior points of every cell, a planar point
            cloud over its filtered Delaunay triangles, on a torus too; 3D clouds use the
            nodes), ``"points"`` (the nodes with ``data.weight``, graphop's DISCO before
            checkpoint version 3) or ``"cells-except-torus"`` (nodes on a torus, before
            version 4); see :mod:`graphop.layers.sparse`. The sphere always uses the nodes.

    Call: ``conv(x, data, out=None)``; ``data`` is a ``Data``/``Batch`` with ``pos`` [N, d] and
    ``weight`` [N] (and ``periodic`` [1, d] for tori); ``out`` (optional) another Data/Batch
    with the output points ``pos`` [M, d] (same number of graphs).

    Shapes:
        x: [N, C] -> [N, O], or [M, O] with ``out``. theta: [L, C, O].
    """

    def __init__(self, in_channels: int, out_channels: int, radius: float,
                 kernel_shape=(3, 4), basis="piecewise_linear", bias: bool = True,
                 normalize="quadrature", manifold: str = "plane", quadrature: str = "cells"):
        super().__init__()
        if manifold not in MANIFOLDS:
            raise InputError(f"DISCOConv: manifold must be one of {MANIFOLDS}, got {manifold!r}")
        try:
            r = float(radius)
        except (TypeError, ValueError):
            r = math.nan
        if not (math.isfinite(r) and r > 0):
            raise InputError(f"DISCOConv: radius must be a positive number, got {radius}")
        if manifold == "sphere" and r > math.pi:
            raise InputError(f"DISCOConv: on the sphere radius is a geodesic angle in radians "
                             f"(0, pi], got {radius}")
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"DISCOConv: channel counts must be >= 1, got "
                             f"{in_channels} -> {out_channels}")
        if isinstance(basis, KernelBasis):
            kernel_shape, basis_name = basis.kernel_shape, basis.name
        else:
            basis_name = basis
        probe = KernelBasis(kernel_shape, 2, basis_name)     # validates the shape and name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.radius, self.normalize = r, normalize_mode(normalize)
        self.kernel_shape, self.basis_name = probe.kernel_shape, basis_name
        self.n_basis, self.manifold = probe.n_basis, manifold
        self.quadrature = quadrature_mode(quadrature)
        self.weight = nn.Parameter(torch.empty(self.n_basis, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """theta, bias ~ U(-1/sqrt(L C), 1/sqrt(L C)) (the fan-in of the contraction)."""
        bound = 1.0 / math.sqrt(self.n_basis * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def basis(self, dim: int) -> KernelBasis:
        return make_basis(self.basis_name, self.kernel_shape, dim)

    def operator(self, data, out=None):
        """``(SparseOperator, fold)`` for this geometry, from the process-wide cache."""
        cells = uses_cells(self.quadrature) and self.manifold == "plane"
        g_in = graph_set(data, need_weight=True, what="data", cells=cells)
        g_out = None if out is None else graph_set(out, need_weight=False, what="out")
        d = g_in.pos.shape[1]
        if g_out is not None and g_out.pos.shape[1] != d:
            raise InputError(f"DISCOConv: out.pos is {g_out.pos.shape[1]}D but data.pos is {d}D "
                             "(dimension mismatch)")
        if self.manifold == "sphere":
            return self._sphere_operator(g_in, g_out, d)
        basis = self.basis(d)
        r, norm = self.radius, self.normalize

        def build(p_out, p_in, w_in, periodic, same, interp=None):
            return disco_matrix(p_out, p_in, w_in, r, basis, periodic=periodic,
                                normalize=norm, same=same, interp=interp), basis.n_basis

        return cached_operator("disco", (r, basis.key, norm, "plane"), g_in, g_out, build,
                               quadrature=self.quadrature)

    def _sphere_operator(self, g_in, g_out, d):
        from graphop.layers.disco_sphere import sphere_disco_matrix   # imports this module
        if d != 3:
            raise InputError(f"DISCOConv(manifold='sphere'): data.pos must be 3D points on a "
                             f"sphere, got {d}D")
        basis = self.basis(2)
        r, norm = self.radius, self.normalize

        def build(p_out, p_in, w_in, periodic, same):
            if periodic is not None:
                raise InputError("DISCOConv(manifold='sphere'): data.periodic makes no sense "
                                 "on a sphere")
            return sphere_disco_matrix(p_out, p_in, w_in, r, basis, normalize=norm,
                                       same=same), basis.n_basis

        return cached_operator("disco", (r, basis.key, norm, "sphere"), g_in, g_out, build)

    def forward(self, x: torch.Tensor, data, out=None) -> torch.Tensor:
        check_features(x, n_points(data), self.in_channels, "DISCOConv")
        if x.dtype != self.weight.dtype:
            raise InputError(f"DISCOConv: x is {x.dtype} but the layer is {self.weight.dtype}; "
                             "convert one of them (e.g. layer.double())")
        op, fold = self.operator(data, out)
        y = apply_operator(op, fold, x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, radius={self.radius:g}, "
                f"kernel_shape={self.kernel_shape}, basis={self.basis_name!r}, "
                f"n_basis={self.n_basis}, normalize={self.normalize!r}, "
                f"manifold={self.manifold!r}, quadrature={self.quadrature!r}, "
                f"bias={self.bias is not None}")
