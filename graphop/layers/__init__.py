"""Neural-operator layers on meshes and point clouds (each layer: ``layer(x, data)``)."""
from graphop.layers.differential import DifferentialConv
from graphop.layers.disco import DISCOConv
from graphop.layers.latent import GridDecoder, GridEncoder, LatentGrid
from graphop.layers.sht import InverseRealSHT, RealSHT
from graphop.layers.spectral import SpectralConv
from graphop.layers.spherical import (SphereDecoder, SphereEncoder, SphereGrid,
                                      SphericalGlobalBranch, SphericalSpectralConv)

__all__ = [
    "DISCOConv",
    "DifferentialConv",
    "GridEncoder",
    "GridDecoder",
    "LatentGrid",
    "SpectralConv",
    "RealSHT",
    "InverseRealSHT",
    "SphereGrid",
    "SphereEncoder",
    "SphereDecoder",
    "SphericalSpectralConv",
    "SphericalGlobalBranch",
]
