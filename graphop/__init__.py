"""graphop: localized neural operators (DISCO, differential, FNO) on unstructured meshes."""
from .mesh import AffineMap, Mesh, MeshError
from .neighbors import Neighborhood, knn_distances, radius_neighbors

__version__ = "0.1.0"

__all__ = [
    "Mesh",
    "MeshError",
    "AffineMap",
    "Neighborhood",
    "radius_neighbors",
    "knn_distances",
    "__version__",
]
