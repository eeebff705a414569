"""Poisson's equation on random 3D shapes with P1 tetrahedra: -div(k grad u) = f, u = g on the
boundary.

Meshes (:func:`shape_mesh`): an n x n x n grid of the cube [-1, 1]^3, every cube split into the
6 Kuhn tetrahedra, interior nodes jittered (irregular placement), then mapped

* ``cube``: left as is;
* ``ball``: radially onto the unit ball, x -> x |x|_inf / |x|_2;
* ``blob``: onto a random smooth star-shaped body, x -> ball(x) * rho(x / |x|), where
  rho = exp(eps * g) and g is a smooth Gaussian random field restricted to the directions.

Every map is checked to keep all tetrahedra positively oriented (a blob is redrawn with half the
amplitude otherwise), so the mesh is always valid. The solver is :mod:`graphop.data.fem`; its
L2 error is O(h^2) for smooth data (tested with a manufactured solution).

Dataset task (:func:`poisson3d_sample`): source f (a smooth Gaussian random field) -> u with
u = 0 on the boundary, on a shape that may change from sample to sample.

Shapes:
    points [N, 3], tetra [M, 4], f [N] -> u [N]
"""
from __future__ import annotations

import itertools

import numpy as np

from graphop.data.fem import boundary_nodes, load_vector, solve_dirichlet, stiffness_matrix
from graphop.data.grf import GaussianRandomField
from graphop.errors import InputError

__all__ = ["SHAPES_3D", "kuhn_cube_mesh", "shape_mesh", "solve_poisson", "poisson3d_sample",
           "POISSON3D_GRF"]

SHAPES_3D = ("cube", "ball", "blob")

#: smooth source law on the periodic box [-2, 2)^3 that holds every shape
POISSON3D_GRF = GaussianRandomField(dim=3, alpha=2.5, tau=3.0, lo=-2.0, length=4.0, n_modes=6)


def kuhn_cube_mesh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Structured tetrahedral mesh of [-1, 1]^3: (n + 1)^3 nodes, 6 n^3 positively oriented
    tetrahedra (the Kuhn split of each cube along its main diagonal)."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    x = np.linspace(-1.0, 1.0, n + 1)
    pts = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    base = idx[:-1, :-1, :-1].ravel()
    stride = np.array([(n + 1) ** 2, n + 1, 1])
    tets = []
    for perm in itertools.permutations(range(3)):
        off = np.cumsum(stride[list(perm)])
        tets.append(np.stack([base, base + off[0], base + off[1], base + off[2]], 1))
    tets = np.concatenate(tets)
    vol = _signed_volumes(pts, tets)
    tets[vol < 0] = tets[vol < 0][:, [0, 2, 1, 3]]
    return pts, tets


def _signed_volumes(p, t):
    a = p[t[:, 0]]
    return np.einsum("md,md->m", np.cross(p[t[:, 1]] - a, p[t[:, 2]] - a), p[t[:, 3]] - a) / 6


def _to_ball(p):
    r2 = np.linalg.norm(p, axis=1)
    rinf = np.abs(p).max(axis=1)
    scale = np.divide(rinf, r2, out=np.ones_like(r2), where=r2 > 0)
    return p * scale[:, None]


def shape_mesh(shape: str, n_points: int, rng: np.random.Generator | None = None,
               jitter: float = 0.2, amplitude: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A tetrahedral mesh of a 3D shape with about ``n_points`` nodes.

    Args:
        shape: one of :data:`SHAPES_3D`.
        n_points: target number of nodes (the grid has round(n_points^(1/3)) nodes per axis).
        rng: random generator for the jitter and the blob (default: seeded with 0).
        jitter: interior nodes move by up to ``jitter`` grid spacings per axis (default 0.2).
        amplitude: blob radius varies as exp(amplitude * g), g of unit scale (default 0.3).

    Returns:
        points [N, 3], tetra [M, 4] (positively oriented).
    """
    if shape not in SHAPES_3D:
        raise InputError(f"unknown 3D shape {shape!r}; choose from {', '.join(SHAPES_3D)}")
    rng = np.random.default_rng(0) if rng is None else rng
    n = max(2, int(round(n_points ** (1 / 3))) - 1)
    pts, tets = kuhn_cube_mesh(n)
    interior = np.abs(pts).max(axis=1) < 1 - 1e-12
    shift = rng.uniform(-jitter, jitter, (int(interior.sum()), 3)) * (2.0 / n)
    if shape == "blob":
        g = GaussianRandomField(dim=3, alpha=2.0, tau=2.0, lo=-2.0, length=4.0,
                                n_modes=3).sample(rng)

    def mapped(p, eps):
        if shape == "cube":
            return p
        ball = _to_ball(p)
        if shape == "ball" or eps == 0:
            return ball
        r = np.linalg.norm(ball, axis=1)
        dirs = np.divide(ball, r[:, None], out=np.zeros_like(ball), where=r[:, None] > 0)
        gd = g(dirs)
        return ball * np.exp(eps * gd / max(np.abs(gd).max(), 1e-12))[:, None]

    eps = amplitude
    for _ in range(12):
        moved = pts.copy()
        moved[interior] += shift
        out = mapped(moved, eps)
        bad = _signed_volumes(out, tets) <= 0
        if not bad.any():
            return out, tets
        # a node moved too far inverts a thin tetrahedron: halve the jitter of its nodes, and
        # soften the blob when even the unjittered map folds a cell
        if not (_signed_volumes(mapped(pts, eps), tets) > 0).all():
            eps /= 2
        hit = np.zeros(len(pts), dtype=bool)
        hit[tets[bad].ravel()] = True
        shift[hit[interior]] *= 0.5
    return mapped(pts, 0.0), tets


def solve_poisson(points, tetra, f=1.0, g=0.0, coeff=None, boundary=None) -> np.ndarray:
    """P1 solution of -div(k grad u) = f on a tetrahedral mesh with u = g on the boundary.

    Args:
        points: [N, 3]; tetra: [M, 4].
        f: source, scalar or nodal [N] (default 1.0).
        g: Dirichlet values, scalar or nodal [N] (default 0.0).
        coeff: k per tetrahedron [M] or scalar (default 1).
        boundary: [N] bool mask of Dirichlet nodes (default: nodes on boundary faces).

    Returns:
        u: [N].
    """
    points = np.asarray(points, dtype=np.float64)
    tetra = np.asarray(tetra, dtype=np.int64)
    if points.ndim != 2 or points.shape[1] != 3 or tetra.ndim != 2 or tetra.shape[1] != 4:
        raise InputError(f"3D Poisson needs points [N, 3] and tetra [M, 4], got {points.shape} "
                         f"and {tetra.shape}")
    if boundary is None:
        boundary = boundary_nodes(tetra, len(points))
    k = stiffness_matrix(points, tetra, coeff)
    return solve_dirichlet(k, load_vector(points, tetra, f), boundary, g)


def poisson3d_sample(points, tetra, rng: np.random.Generator,
                     grf: GaussianRandomField = POISSON3D_GRF) -> dict[str, np.ndarray]:
    """One sample on a given mesh: f ~ ``grf``, -Laplace(u) = f, u = 0 on the boundary.

    Returns ``{"f": [N], "u": [N]}``.
    """
    f = grf.sample(rng)(points)
    return {"f": f, "u": solve_poisson(points, tetra, f=f)}
