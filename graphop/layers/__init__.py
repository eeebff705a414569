"""Neural-operator layers on meshes and point clouds (each layer: ``layer(x, data)``)."""
from .differential import DifferentialConv
from .disco import DISCOConv
from .latent import GridDecoder, GridEncoder, LatentGrid
from .spectral import SpectralConv

__all__ = [
    "DISCOConv",
    "DifferentialConv",
    "GridEncoder",
    "GridDecoder",
    "LatentGrid",
    "SpectralConv",
]
