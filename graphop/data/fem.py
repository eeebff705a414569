"""Linear (P1) finite elements on simplices (triangles in 2D, tetrahedra in 3D), vectorised.

Everything is assembled from per-cell arrays with one COO -> CSR conversion: no Python loop over
cells or nodes. For a simplex T with vertices p_0..p_d, Jacobian J = [p_1 - p_0, ..., p_d - p_0]
(columns) and B = J^{-1}, the barycentric gradients are grad(lambda_a) = B[a-1, :] for a >= 1
and grad(lambda_0) = -sum_a grad(lambda_a); |T| = |det J| / d!.

    stiffness   K_ij = sum_T c_T |T| grad(lambda_i) . grad(lambda_j)
    mass        M_ij = sum_T |T| (1 + delta_ij) / ((d + 1)(d + 2))
    load        b    = M f_h   (f interpolated at the nodes; second-order accurate)

The Dirichlet problem K u = b, u = g on the boundary, is solved by eliminating the boundary
unknowns and factorising the interior block with SuperLU (``scipy.sparse.linalg.splu``).

Shapes:
    points [N, d], cells [M, d + 1] -> matrices [N, N], vectors [N]
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from graphop.geometry.cells import boundary_facets
from graphop.errors import InputError

__all__ = ["p1_gradients", "stiffness_matrix", "mass_matrix", "load_vector",
           "solve_dirichlet", "boundary_nodes", "l2_error", "cell_average"]


def _check(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.int64)
    d = points.shape[1] if points.ndim == 2 else -1
    if d not in (2, 3) or cells.ndim != 2 or cells.shape[1] != d + 1:
        raise InputError(f"P1 elements need points [N, d] (d = 2 or 3) and simplices [M, d + 1]; "
                         f"got points {points.shape} and cells {cells.shape}")
    return points, cells


def p1_gradients(points, cells) -> tuple[np.ndarray, np.ndarray]:
    """Cell measures [M] and barycentric gradients [M, d + 1, d] (constant on each cell)."""
    points, cells = _check(points, cells)
    d = points.shape[1]
    p0 = points[cells[:, 0]]
    jac = np.stack([points[cells[:, a]] - p0 for a in range(1, d + 1)], axis=2)  # [M, d, d]
    # closed-form inverse (adjugate / det): much faster than batched LU for 2x2 and 3x3
    if d == 2:
        det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
        adj = np.stack([np.stack([jac[:, 1, 1], -jac[:, 0, 1]], -1),
                        np.stack([-jac[:, 1, 0], jac[:, 0, 0]], -1)], 1)
    else:
        c0, c1, c2 = jac[:, :, 0], jac[:, :, 1], jac[:, :, 2]
        adj = np.stack([np.cross(c1, c2), np.cross(c2, c0), np.cross(c0, c1)], 1)
        det = np.einsum("md,md->m", c0, adj[:, 0])
    if np.any(np.abs(det) <= 1e-300):
        raise InputError(f"{int((np.abs(det) <= 1e-300).sum())} degenerate cell(s) (zero measure)")
    binv = adj / det[:, None, None]  # rows are grad(lambda_1..d)
    grads = np.concatenate([-binv.sum(axis=1, keepdims=True), binv], axis=1)
    return np.abs(det) / math.factorial(d), grads


def _coo(cells: np.ndarray, local: np.ndarray, n: int) -> sp.csr_matrix:
    k = cells.shape[1]
    rows = np.repeat(cells, k, axis=1).ravel()
    cols = np.tile(cells, (1, k)).ravel()
    return sp.coo_matrix((local.ravel(), (rows, cols)), shape=(n, n)).tocsr()


def stiffness_matrix(points, cells, coeff=None) -> sp.csr_matrix:
    """K_ij = sum_T c_T |T| grad(lambda_i).grad(lambda_j); ``coeff`` is None (1), a scalar or
    one value per cell [M]."""
    points, cells = _check(points, cells)
    vol, g = p1_gradients(points, cells)
    w = vol if coeff is None else vol * np.broadcast_to(np.asarray(coeff, dtype=np.float64),
                                                         vol.shape)
    local = np.einsum("mid,mjd->mij", g, g) * w[:, None, None]
    return _coo(cells, local, len(points))


def mass_matrix(points, cells) -> sp.csr_matrix:
    """Consistent P1 mass matrix."""
    points, cells = _check(points, cells)
    vol, _ = p1_gradients(points, cells)
    k = cells.shape[1]
    ref = (np.ones((k, k)) + np.eye(k)) / (k * (k + 1))
    return _coo(cells, vol[:, None, None] * ref[None], len(points))


def load_vector(points, cells, f=1.0) -> np.ndarray:
    """b = M f_h for nodal values f [N] (or a constant: b_i = f * sum_T |T| / (d + 1))."""
    points, cells = _check(points, cells)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 0:
        vol, _ = p1_gradients(points, cells)
        b = np.zeros(len(points))
        np.add.at(b, cells.ravel(), np.repeat(vol / cells.shape[1], cells.shape[1]))
        return float(f) * b
    if f.shape != (len(points),):
        raise InputError(f"f must be a scalar or have shape [{len(points)}], got {f.shape}")
    return mass_matrix(points, cells) @ f


def boundary_nodes(cells, n_points: int) -> np.ndarray:
    """[N] bool mask of nodes on facets used by a single cell."""
    cells = np.asarray(cells, dtype=np.int64)
    k = cells.shape[1]
    mask = np.zeros(n_points, dtype=bool)
    if k in (3, 4) and float(n_points) ** (k - 1) < 2.0**62:
        # facets as sorted vertex tuples packed into one int64 key: a 1D unique is much faster
        # than a row-wise unique
        facets = np.sort(np.concatenate([np.delete(cells, a, axis=1) for a in range(k)]), axis=1)
        key = facets[:, 0]
        for c in range(1, k - 1):
            key = key * n_points + facets[:, c]
        _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        mask[facets[counts[inv] == 1].ravel()] = True
        return mask
    ctype = {3: "triangle", 4: "tetra"}[k]
    for f in boundary_facets({ctype: cells}):
        mask[f.ravel()] = True
    return mask


def solve_dirichlet(k: sp.spmatrix, b: np.ndarray, boundary: np.ndarray, g=0.0) -> np.ndarray:
    """Solve K u = b on the interior nodes with u = g on ``boundary`` (mask [N])."""
    n = k.shape[0]
    boundary = np.asarray(boundary, dtype=bool)
    if boundary.shape != (n,):
        raise InputError(f"boundary mask must have shape [{n}], got {boundary.shape}")
    if not boundary.any():
        raise InputError("the Dirichlet problem needs at least one boundary node")
    u = np.zeros(n)
    u[boundary] = np.broadcast_to(np.asarray(g, dtype=np.float64), (n,))[boundary]
    inner = np.flatnonzero(~boundary)
    if len(inner) == 0:
        return u
    k = k.tocsr()
    rhs = b[inner] - k[inner][:, boundary] @ u[boundary]
    kii = k[inner][:, inner].tocsc()
    # K is symmetric positive definite: a symmetric ordering with diagonal pivots is cheapest
    lu = splu(kii, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})
    u[inner] = lu.solve(rhs)
    return u


def cell_average(values, cells) -> np.ndarray:
    """Mean of nodal values over the vertices of each cell, [M]."""
    return np.asarray(values, dtype=np.float64)[np.asarray(cells)].mean(axis=1)


# degree-2 quadrature rules on the reference simplex (barycentric points, weights sum to 1)
_TRI_Q = (np.array([[2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3]]),
          np.full(3, 1 / 3))
_A, _B = 0.5854101966249685, 0.1381966011250105
_TET_Q = (np.array([[_A, _B, _B, _B], [_B, _A, _B, _B], [_B, _B, _A, _B], [_B, _B, _B, _A]]),
          np.full(4, 1 / 4))


def l2_error(points, cells, u_h, exact) -> float:
    """||u_h - u||_{L2} with the P1 function u_h [N] and a callable exact(points [Q, d]) -> [Q],
    by a degree-2 quadrature rule on every cell."""
    points, cells = _check(points, cells)
    vol, _ = p1_gradients(points, cells)
    bary, wq = _TRI_Q if points.shape[1] == 2 else _TET_Q
    xq = np.einsum("qk,mkd->mqd", bary, points[cells])  # [M, Q, d]
    uhq = np.einsum("qk,mk->mq", bary, np.asarray(u_h)[cells])
    ue = np.asarray(exact(xq.reshape(-1, points.shape[1]))).reshape(uhq.shape)
    return float(np.sqrt(np.sum(vol[:, None] * wq[None] * (uhq - ue) ** 2)))
