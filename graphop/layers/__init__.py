"""Neural-operator layers on meshes and point clouds (each layer: ``layer(x, data)``)."""
from .differential import DifferentialConv
from .disco import DISCOConv

__all__ = [
    "DISCOConv",
    "DifferentialConv",
]
