"""Darcy flow on 2D triangle meshes: -div(a grad u) = f in D, u = g on the boundary.

The benchmark of Li et al. (FNO, ICLR 2021) on irregular domains: f = 1, g = 0 and a piecewise
constant permeability a = 12 where a Gaussian random field psi >= 0 and a = 3 elsewhere, with
psi ~ N(0, (-Laplace + 9)^-2). Here psi is a :class:`~graphop.data.grf.GaussianRandomField`
defined in physical space, so one sample is the same function on every mesh of a domain.

Discretisation: P1 finite elements (:mod:`graphop.data.fem`), with a constant on each triangle,
evaluated at the centroid (the midpoint rule, second order for smooth a), a consistent-mass load
vector, and a sparse direct solve. For smooth data the L2 error is O(h^2) (tested with a
manufactured solution on irregular meshes).

Shapes:
    points [N, 2], triangles [M, 3], a per cell [M] -> u [N]
"""
from __future__ import annotations

import numpy as np

from graphop.data.fem import boundary_nodes, load_vector, solve_dirichlet, stiffness_matrix
from graphop.data.grf import GaussianRandomField, threshold
from graphop.errors import InputError

__all__ = ["solve_darcy", "darcy_sample", "DARCY_GRF"]

#: the FNO Darcy coefficient law on a periodic box [-0.5, 2.5)^2 that holds every domain family
DARCY_GRF = GaussianRandomField(dim=2, alpha=2.0, tau=3.0, lo=-0.5, length=3.0, n_modes=24)


def solve_darcy(points, triangles, a, f=1.0, g=0.0, boundary=None) -> np.ndarray:
    """P1 solution of -div(a grad u) = f, u = g on the boundary.

    Args:
        points: [N, 2] node coordinates.
        triangles: [M, 3] node indices.
        a: permeability per triangle [M] (or a scalar), positive.
        f: source, a scalar or nodal values [N] (default 1.0).
        g: Dirichlet values, a scalar or nodal values [N] (only boundary entries are used).
        boundary: [N] bool mask of Dirichlet nodes (default: nodes on boundary edges).

    Returns:
        u: [N] nodal values.
    """
    points = np.asarray(points, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"Darcy needs 2D points [N, 2], got {points.shape}")
    a = np.asarray(a, dtype=np.float64)
    if a.ndim and a.shape != (len(triangles),):
        raise InputError(f"a must be a scalar or one value per triangle [{len(triangles)}], "
                         f"got shape {a.shape}")
    if np.any(a <= 0):
        raise InputError("the permeability a must be positive")
    if boundary is None:
        boundary = boundary_nodes(triangles, len(points))
    k = stiffness_matrix(points, triangles, a)
    b = load_vector(points, triangles, f)
    return solve_dirichlet(k, b, boundary, g)


def darcy_sample(points, triangles, rng: np.random.Generator, grf: GaussianRandomField = DARCY_GRF,
                 high: float = 12.0, low: float = 3.0, f: float = 1.0,
                 boundary=None) -> dict[str, np.ndarray]:
    """One Darcy sample on a given mesh: draws psi from ``grf`` with ``rng``.

    Returns ``{"a": [N] permeability at the nodes, "u": [N] solution}``. The solver uses a at
    the triangle centroids (the same function), so ``a`` seen at the nodes is exact data, not an
    average.
    """
    points = np.asarray(points, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    psi = grf.sample(rng)
    centroids = points[triangles].mean(axis=1)
    a_cells = threshold(psi(centroids), high, low)
    u = solve_darcy(points, triangles, a_cells, f=f, boundary=boundary)
    return {"a": threshold(psi(points), high, low), "u": u}
