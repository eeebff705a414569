"""Datasets for graphop: PDE solvers that generate benchmark data on irregular domains, the
generation driver, and :class:`MeshFolderDataset` for folders of the user's own mesh files.

Solvers (pure functions of arrays): :func:`solve_darcy` / :func:`darcy_sample` (P1 FEM, 2D),
:func:`solve_navier_stokes` / :func:`ns_sample` (pseudo-spectral, periodic torus),
:func:`solve_poisson` / :func:`poisson3d_sample` (P1 FEM on tetrahedra), Gaussian random fields
in physical space (:class:`GaussianRandomField`), domain families (:func:`mesh_domain`,
:func:`shape_mesh`). Torch-dependent classes are imported lazily so worker processes of the
generator stay light.
"""
from graphop.data.darcy import DARCY_GRF, darcy_sample, solve_darcy
from graphop.data.domains_random import DOMAINS_2D, mesh_domain
from graphop.data.fem import l2_error, load_vector, mass_matrix, solve_dirichlet, stiffness_matrix
from graphop.data.generate import PROBLEMS, generate
from graphop.data.grf import GaussianRandomField, fourier_eval, threshold
from graphop.data.navier_stokes import ns_sample, sample_at_points, solve_navier_stokes
from graphop.data.poisson3d import SHAPES_3D, poisson3d_sample, shape_mesh, solve_poisson

__all__ = [
    "MeshFolderDataset",
    "generate", "PROBLEMS",
    "solve_darcy", "darcy_sample", "DARCY_GRF",
    "solve_navier_stokes", "ns_sample", "sample_at_points",
    "solve_poisson", "poisson3d_sample", "shape_mesh", "SHAPES_3D",
    "mesh_domain", "DOMAINS_2D",
    "GaussianRandomField", "fourier_eval", "threshold",
    "stiffness_matrix", "mass_matrix", "load_vector", "solve_dirichlet", "l2_error",
]


def __getattr__(name):
    if name == "MeshFolderDataset":
        from graphop.data.dataset import MeshFolderDataset

        return MeshFolderDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
