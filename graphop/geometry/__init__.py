"""Geometry (numpy and scipy only): the :class:`Mesh` data model, cell measures and lumped-mass
quadrature (``cells``), radius and k-NN search on a KD-tree (``neighbors``), triangles for planar
point clouds (``triangulate``), and the 2D/3D domain meshers (``domains``)."""
from graphop.geometry.cells import CELL_DIM, cell_measures, lumped_mass
from graphop.geometry.mesh import DERIVED_FIELDS, AffineMap, Mesh
from graphop.geometry.neighbors import Neighborhood, knn_distances, radius_neighbors
from graphop.geometry.triangulate import triangulate_cloud

__all__ = ["Mesh", "AffineMap", "DERIVED_FIELDS", "CELL_DIM", "cell_measures", "lumped_mass",
           "Neighborhood", "radius_neighbors", "knn_distances", "triangulate_cloud"]
