"""graphop: localized neural operators (DISCO, differential, FNO) on unstructured meshes.

The public API is listed in ``__all__``. Geometry and I/O (numpy/scipy only) import eagerly;
everything that needs torch is imported on first use, so ``graphop info`` and the dataset
generator's worker processes start fast.
"""
from importlib import import_module

from graphop.errors import ConfigError, DataError, GraphopError, MeshError, MeshReadError
from graphop.io import MeshWriteError, formats, read_mesh, write_mesh
from graphop.geometry.mesh import AffineMap, Mesh
from graphop.geometry.neighbors import Neighborhood, knn_distances, radius_neighbors

__version__ = "0.1.0"

# name -> module that defines it (imported lazily: these need torch)
_LAZY = {
    "DISCOConv": "graphop.layers",
    "DifferentialConv": "graphop.layers",
    "SpectralConv": "graphop.layers",
    "GridEncoder": "graphop.layers",
    "GridDecoder": "graphop.layers",
    "LocalGNO": "graphop.models",
    "MeshGraphNet": "graphop.models",
    "build_model": "graphop.models",
    "MeshFolderDataset": "graphop.data",
    "generate": "graphop.data",
    "Trainer": "graphop.training",
    "TrainConfig": "graphop.training",
    "load_config": "graphop.training",
    "relative_l2": "graphop.training",
    "Normalizer": "graphop.data.normalize",
    "save_checkpoint": "graphop.training",
    "load_checkpoint": "graphop.training",
    "load_trained_model": "graphop.training",
    "evaluate_checkpoint": "graphop.inference",
    "predict_file": "graphop.inference",
    "testing": "graphop.testing",
}

__all__ = [
    "Mesh", "MeshError", "AffineMap",
    "read_mesh", "write_mesh", "formats",
    "Neighborhood", "radius_neighbors", "knn_distances",
    "GraphopError", "MeshReadError", "MeshWriteError", "ConfigError", "DataError",
    *_LAZY,
    "__version__",
]


def __getattr__(name):
    if name in _LAZY:
        mod = import_module(_LAZY[name])
        value = mod if name == "testing" else getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'graphop' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
