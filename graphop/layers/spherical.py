"""The spherical global branch (SFNO-style): mesh on a sphere -> Gauss-Legendre latent grid ->
spherical spectral convolution -> back to any points on the sphere.

The planar global branch (:mod:`graphop.layers.latent`, :mod:`graphop.layers.spectral`) on the
sphere S_R of radius R about the origin, with the latent grid of :mod:`graphop.layers.sht`
(``nlat`` Gauss-Legendre latitudes north first, ``nlon`` equispaced longitudes
lon_j = 2 pi j / nlon) and the spherical harmonic transform in place of the FFT.

**Encoder** (mesh points y_j with quadrature weights w_j -> latent nodes z_k), a
quadrature-weighted geodesic-ball average with the biweight bump kappa(t) = (1 - t^2)^2, t < 1:

    g_c(z_k) = sum_j kappa(theta_kj / rho) w_j f_c(y_j) / sum_j kappa(theta_kj / rho) w_j,
    theta_kj = angle(z_k, y_j)  (central angle, radians)

over the mesh points with theta_kj < rho. rho is a geodesic radius in radians (default 2
latent spacings, 2 pi / nlat), so for a fixed model the encoder converges to the continuous
local average as the mesh is refined. Neighbours come from a KD-tree on the unit vectors with
the chord 2 sin(rho / 2) (exact: the chord is monotone in the angle). The **occupancy** is the
fraction of the bump's mass the mesh covers,

    occ(z_k) = sum_j kappa(theta_kj / rho) w_j / (R^2 * 2 pi int_0^rho kappa(t / rho) sin t dt),

about 1 on a closed sphere, 0 at nodes no mesh point reaches. Nodes with no mesh point within
rho get g = 0 and occ = 0, and the build warns (a :class:`graphop.errors.GraphopWarning` with
the counts; once per geometry, when the operator is built).

**Decoder** (latent grid -> any points x on the sphere), bilinear in (longitude, colatitude) with
periodic longitude: between two latitude rings k, k+1 (colat_k <= theta < colat_{k+1}) the value
is (1 - s)[(1 - t) g(k, j) + t g(k, j+1)] + s[(1 - t) g(k+1, j) + t g(k+1, j+1)] with
s = (theta - colat_k) / (colat_{k+1} - colat_k), j = floor(lon / dlon), t = lon / dlon - j.
Above the first ring (theta < colat_0, the north cap) the point is interpolated along the great
circle through the pole, linearly in the signed colatitude between the first ring at its own
longitude (at +colat_0) and the first ring at lon + pi (at -colat_0, across the pole), each of
those two values linear in longitude: weights (theta + colat_0) / (2 colat_0) and
(colat_0 - theta) / (2 colat_0). The south cap mirrors it. So every row has 4 entries, linear
functions of (x, y, z) restricted to the cap's great circles are reproduced, and the error is
second order in the grid spacing everywhere (measured rate 2.0 in the tests). The pole itself
gets the mean of the two opposite ring points, which depends on the direction of approach by
O(colat_0^2) -- the same order as the interpolation error.

**Spectral convolution** (:class:`SphericalSpectralConv`): with c_lm = SHT(v)_lm,

    weights="degree" (default):        out_lm,o = sum_c W[l, c, o] c_lm,c      (W real)
    weights="degree_order":            out_lm,o = sum_c W[l, m, c, o] c_lm,c   (W complex)

for l <= lmax, m <= mmax, zero above; then the inverse SHT onto the same grid. The degree-only
form is the Driscoll-Healy convolution with a zonal kernel (by the Funk-Hecke theorem a
rotation-invariant kernel acts on degree l by one real scalar per channel pair), and it commutes
with every rotation of the sphere: rotating the input rotates the output (the tests check this
exactly, to rounding, for band-limited fields). A complex W[l] would commute with rotations
about the polar axis only (its imaginary part acts like a Hilbert transform in longitude), and
the per-(l, m) form ("degree_order", torch-harmonics' "diagonal") likewise only with rotations
about the polar axis.

Operators (encoder, decoder) are sparse matrices built with numpy/scipy, cached by content
(positions, weights, grid, radius) in the one operator cache of :mod:`graphop.layers.sparse`,
never in a ``state_dict``; a batch of different meshes applies each graph's block, a batch of
one shared mesh folds into one product (:func:`graphop.layers.sparse.batch_operator`).

Shapes:
    SphereEncoder:  x [N, C], data (pos [N, 3], weight [N]) -> (grid [B, C, nlat, nlon],
                    occupancy [B, 1, nlat, nlon])
    SphereDecoder:  grid [B, C, nlat, nlon], data (pos [N, 3]) -> [N, C]
    SphericalSpectralConv:  [B, C, nlat, nlon] -> [B, O, nlat, nlon]
    SphericalGlobalBranch:  x [N, C], data -> [N, O] (or [N_out, O] at the points of ``out``)
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from graphop.errors import GraphopWarning, InputError
from graphop.geometry.neighbors import radius_neighbors
from graphop.geometry.sphere import from_lonlat, to_lonlat
from graphop.layers.sht import InverseRealSHT, RealSHT, gauss_legendre_grid
from graphop.layers.sparse import (SparseOperator, batch_operator, check_features, fold_matmul,
                                   graph_set, n_points)

__all__ = ["SphereGrid", "SphereEncoder", "SphereDecoder", "SphericalSpectralConv",
           "SphericalGlobalBranch", "sphere_encoder_matrix", "sphere_decoder_matrix",
           "cap_kernel_mass", "SPHERE_RTOL"]

#: mesh points may deviate from the sphere of radius R (their median norm) by this * R
SPHERE_RTOL = 1e-6
WEIGHT_MODES = ("degree", "degree_order")


def _latent_shape(latent_shape) -> tuple[int, int]:
    try:
        nlat, nlon = (int(n) for n in latent_shape)
    except (TypeError, ValueError):
        raise InputError(f"latent_shape must be (nlat, nlon), got {latent_shape!r}") from None
    if nlat < 2 or nlon < 2:
        raise InputError(f"latent grid needs nlat >= 2 and nlon >= 2, got ({nlat}, {nlon})")
    return nlat, nlon


@dataclass(frozen=True)
class SphereGrid:
    """The latent Gauss-Legendre grid on the sphere of radius ``radius``.

    Node ``k * nlon + j`` is latitude ring k (north first, colatitude colat_k = arccos x_k for
    the Gauss-Legendre nodes x_k) and longitude lon_j = 2 pi j / nlon; the quadrature weight
    of a node is w_k (2 pi / nlon) R^2 (they sum to 4 pi R^2, exact for harmonics of degree
    <= min(2 nlat - 1, nlon - 1)). The layout of :class:`graphop.layers.sht.RealSHT`.
    """

    nlat: int
    nlon: int
    radius: float = 1.0

    def __post_init__(self):
        _latent_shape((self.nlat, self.nlon))
        if not self.radius > 0:
            raise InputError(f"sphere radius must be positive, got {self.radius}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nlat, self.nlon)

    @property
    def size(self) -> int:
        return self.nlat * self.nlon

    @property
    def spacing(self) -> float:
        """The nominal latitude spacing pi / nlat (radians)."""
        return math.pi / self.nlat

    def colatitudes(self) -> np.ndarray:
        """[nlat] colatitudes (radians), increasing (north first)."""
        return gauss_legendre_grid(self.nlat, self.nlon)[0]

    def longitudes(self) -> np.ndarray:
        """[nlon] longitudes 2 pi j / nlon."""
        return gauss_legendre_grid(self.nlat, self.nlon)[2]

    def nodes(self) -> np.ndarray:
        """[nlat * nlon, 3] node positions R (sin colat cos lon, sin colat sin lon, cos colat)."""
        colat, _, lon = gauss_legendre_grid(self.nlat, self.nlon)
        C, L = np.meshgrid(colat, lon, indexing="ij")
        return from_lonlat(L.ravel(), np.pi / 2 - C.ravel(), self.radius)

    def weights(self) -> np.ndarray:
        """[nlat * nlon] quadrature weights w_k 2 pi / nlon R^2."""
        w = gauss_legendre_grid(self.nlat, self.nlon)[1]
        return np.repeat(w * (2.0 * np.pi / self.nlon) * self.radius**2, self.nlon)


def cap_kernel_mass(rho: float) -> float:
    """2 pi int_0^rho (1 - (t / rho)^2)^2 sin t dt: the integral of the encoder's bump over the
    unit sphere (64-point Gauss-Legendre quadrature of a smooth integrand: exact to rounding).
    For small rho it tends to the planar pi rho^2 / 3."""
    x, w = np.polynomial.legendre.leggauss(64)
    t = 0.5 * rho * (x + 1.0)
    return float(2.0 * np.pi * 0.5 * rho * np.sum(w * (1.0 - (t / rho) ** 2) ** 2 * np.sin(t)))


def _unit_points(pos) -> tuple[np.ndarray, float]:
    """Unit vectors of ``pos`` [N, 3] and the sphere radius R (their median norm); InputError
    for points off the sphere about the origin."""
    p = np.asarray(pos, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"points on a sphere must have shape [N, 3], got {p.shape}")
    if not np.isfinite(p).all():
        raise InputError("positions contain NaN or inf")
    r = np.linalg.norm(p, axis=1)
    R = float(np.median(r)) if len(r) else 1.0
    if not R > 0:
        raise InputError("points lie at the origin, not on a sphere")
    dev = float(np.abs(r - R).max()) if len(r) else 0.0
    if dev > SPHERE_RTOL * R:
        raise InputError(f"points are not on a sphere about the origin: radius {R:g}, the "
                         f"farthest point is {dev:.3g} ({dev / R:.3g} R) off; centre the "
                         "sphere at the origin and project the points onto it")
    return p / r[:, None], R


def sphere_encoder_matrix(pos, weight, grid: SphereGrid, rho: float):
    """The encoder as scipy CSR [G, N], the occupancy [G] and the number of empty nodes
    (module docstring). ``pos`` [N, 3] on a sphere about the origin, ``weight`` [N]."""
    u, R = _unit_points(pos)
    weight = np.asarray(weight, dtype=np.float64)
    if weight.shape != (len(u),):
        raise InputError(f"weight must have shape [{len(u)}], got {weight.shape}")
    if not 0 < rho <= math.pi:
        raise InputError(f"encoder radius must be a central angle in (0, pi], got {rho}")
    nodes = SphereGrid(grid.nlat, grid.nlon).nodes()
    nb = radius_neighbors(nodes, u, 2.0 * math.sin(rho / 2.0))
    theta = 2.0 * np.arcsin(np.clip(nb.distances / 2.0, 0.0, 1.0))
    vals = np.clip(1.0 - (theta / rho) ** 2, 0.0, None) ** 2 * weight[nb.indices]
    rows = nb.rows()
    den = np.bincount(rows, weights=vals, minlength=grid.size)
    occupancy = den / (R**2 * cap_kernel_mass(rho))
    safe = np.where(den > 0, den, 1.0)
    mat = sp.csr_matrix((vals / safe[rows], nb.indices, nb.indptr), shape=(grid.size, len(u)))
    mat.eliminate_zeros()
    return mat, occupancy, int(np.sum(den <= 0))


def sphere_decoder_matrix(pos, grid: SphereGrid) -> sp.csr_matrix:
    """Bilinear (lon, colat) interpolation with the across-the-pole rule in the polar caps
    (module docstring): scipy CSR [N, G], 4 entries per row (fewer where they coincide)."""
    u, _ = _unit_points(pos)
    lon, lat = to_lonlat(u)
    theta = np.pi / 2 - lat
    colat = grid.colatitudes()
    nlat, nlon = grid.nlat, grid.nlon
    dlon = 2.0 * np.pi / nlon
    N = len(u)

    def lon_weights(phi):
        v = np.mod(phi, 2.0 * np.pi) / dlon
        j0 = np.floor(v).astype(np.int64)
        t = v - j0
        j0 = np.mod(j0, nlon)
        return j0, np.mod(j0 + 1, nlon), t

    k = np.clip(np.searchsorted(colat, theta, side="right") - 1, 0, nlat - 2)
    s = np.clip((theta - colat[k]) / (colat[k + 1] - colat[k]), 0.0, 1.0)
    ka, kb = k, k + 1                       # ring a gets 1 - s, ring b gets s
    j0, j1, t = lon_weights(lon)
    ja0, ja1, ta = j0.copy(), j1.copy(), t.copy()   # ring a's longitude
    north, south = theta < colat[0], theta > colat[-1]
    # north cap: ring a = ring 0 across the pole (lon + pi), ring b = ring 0 at lon
    f0, f1, ft = lon_weights(lon + np.pi)
    c0 = colat[0]
    ka = np.where(north, 0, ka)
    kb = np.where(north, 0, kb)
    s = np.where(north, (theta + c0) / (2.0 * c0), s)
    ja0, ja1, ta = (np.where(north, f0, ja0), np.where(north, f1, ja1), np.where(north, ft, ta))
    # south cap: ring a = last ring at lon, ring b = last ring across the pole
    c1 = np.pi - colat[-1]
    ka = np.where(south, nlat - 1, ka)
    kb = np.where(south, nlat - 1, kb)
    s = np.where(south, (theta - colat[-1]) / (2.0 * c1), s)
    jb0, jb1, tb = j0.copy(), j1.copy(), t.copy()
    jb0, jb1, tb = (np.where(south, f0, jb0), np.where(south, f1, jb1), np.where(south, ft, tb))
    cols = np.stack([ka * nlon + ja0, ka * nlon + ja1, kb * nlon + jb0, kb * nlon + jb1], 1)
    vals = np.stack([(1 - s) * (1 - ta), (1 - s) * ta, s * (1 - tb), s * tb], 1)
    rows = np.repeat(np.arange(N), 4)
    m = sp.coo_matrix((vals.ravel(), (rows, cols.ravel())), shape=(N, grid.size)).tocsr()
    m.sum_duplicates()
    return m


class SphereEncoder(nn.Module):
    """Mesh on a sphere -> latent Gauss-Legendre grid: geodesic-ball average + occupancy.

    See the module docstring for the formula.

    Args:
        latent_shape: (nlat, nlon) of the latent grid (e.g. (32, 64)).
        radius: geodesic radius rho of the bump (radians, a central angle); default
            ``radius_factor * pi / nlat``.
        radius_factor: rho in latent latitude spacings when ``radius`` is None (default 2).

    Shapes: x [N, C], data (pos [N, 3], weight [N]) -> (grid [B, C, nlat, nlon],
        occupancy [B, 1, nlat, nlon]).
    """

    def __init__(self, latent_shape=(32, 64), radius: float | None = None,
                 radius_factor: float = 2.0):
        super().__init__()
        self.latent_shape = _latent_shape(latent_shape)
        if radius is not None and not 0 < radius <= math.pi:
            raise InputError(f"encoder radius must be a central angle in (0, pi], got {radius}")
        if not radius_factor > 0:
            raise InputError(f"radius_factor must be positive, got {radius_factor}")
        self.radius, self.radius_factor = radius, float(radius_factor)

    @property
    def rho(self) -> float:
        """The geodesic radius in use (radians)."""
        return float(self.radius) if self.radius else self.radius_factor * math.pi / self.latent_shape[0]

    def operator(self, data):
        """``(operator, fold)`` for ``data`` from the cache: the encoder [G, N] of each graph
        with its occupancy as ``extra``."""
        grid = SphereGrid(*self.latent_shape)
        rho = self.rho
        g = graph_set(data, need_weight=True, what="data")

        def build(b):
            p, w, _ = g.slice(b)
            mat, occ, empty = sphere_encoder_matrix(p, w, grid, rho)
            if empty:
                warnings.warn(f"SphereEncoder: {empty} of {grid.size} latent nodes of the "
                              f"{grid.nlat} x {grid.nlon} grid have no mesh point within "
                              f"{rho:.4g} rad (mesh of {len(p)} points); they get 0 and "
                              "occupancy 0", GraphopWarning, stacklevel=4)
            return SparseOperator(mat, extra=occ)

        return batch_operator("sphere_encoder", (grid, rho), g.keys, build)

    def forward(self, x: torch.Tensor, data, op=None):
        op, fold = op if op is not None else self.operator(data)
        G = self.latent_shape[0] * self.latent_shape[1]
        out = fold_matmul(op, fold, x)                                  # [B*G, C]
        B, C = out.shape[0] // G, x.shape[1]
        grid = out.reshape(B, G, C).transpose(1, 2).reshape(B, C, *self.latent_shape)
        occ = op.extra_on(x.device, x.dtype).reshape(-1, G)
        occ = occ.expand(B, G) if fold > 1 else occ
        return grid, occ.reshape(B, 1, *self.latent_shape)

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, radius={self.rho:.4g}"


class SphereDecoder(nn.Module):
    """Latent Gauss-Legendre grid -> any points on the sphere: bilinear in (lon, colat),
    periodic in longitude, across the pole in the polar caps (module docstring; 4 entries per
    row, second order).

    Args:
        latent_shape: (nlat, nlon).

    Shapes: grid [B, C, nlat, nlon], data with N points (pos [N, 3]) -> [N, C].
    """

    def __init__(self, latent_shape=(32, 64)):
        super().__init__()
        self.latent_shape = _latent_shape(latent_shape)

    def operator(self, data):
        """``(operator, fold)``: the interpolation [N, G] of each graph, from the cache."""
        grid = SphereGrid(*self.latent_shape)
        g = graph_set(data, need_weight=False, what="data")

        def build(b):
            return SparseOperator(sphere_decoder_matrix(g.slice(b)[0], grid))

        return batch_operator("sphere_decoder", (grid,), g.keys, build)

    def forward(self, grid: torch.Tensor, data, op=None) -> torch.Tensor:
        op, fold = op if op is not None else self.operator(data)
        if grid.dim() != 4 or tuple(grid.shape[2:]) != self.latent_shape:
            raise InputError(f"grid has shape {tuple(grid.shape)}, expected [B, C, "
                             f"{self.latent_shape[0]}, {self.latent_shape[1]}]")
        B, C = grid.shape[:2]
        flat = grid.reshape(B, C, -1).transpose(1, 2).reshape(-1, C)   # [B*G, C]
        return fold_matmul(op, fold, flat)

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}"


class SphericalSpectralConv(nn.Module):
    """Spherical spectral convolution (SFNO-style) on a Gauss-Legendre grid.

    out = ISHT( W . SHT(v) ), with, for l <= lmax and m <= mmax (module docstring):

        weights="degree":        out_lm,o = sum_c W[l, c, o] c_lm,c   (W real [lmax+1, C, O];
                                 the Driscoll-Healy form, commutes with every rotation)
        weights="degree_order":  out_lm,o = sum_c W[l, m, c, o] c_lm,c (W complex
                                 [lmax+1, mmax+1, C, O]; commutes with rotations about z only)

    Any grid with nlat >= lmax + 1 and nlon > 2 mmax works (the same weights at every
    resolution); the output lives on the input's grid.

    Args:
        in_channels, out_channels: C, O.
        lmax: largest degree kept.
        mmax: largest order kept (default lmax).
        weights: ``"degree"`` (default) or ``"degree_order"``.

    Shapes: x [B, C, nlat, nlon] -> [B, O, nlat, nlon].
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, mmax: int | None = None,
                 weights: str = "degree"):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
        lmax = int(lmax)
        mmax = lmax if mmax is None else int(mmax)
        if lmax < 0 or not 0 <= mmax <= lmax:
            raise InputError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
        if weights not in WEIGHT_MODES:
            raise InputError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.lmax, self.mmax, self.weights = lmax, mmax, weights
        if weights == "degree":
            self.weight = nn.Parameter(torch.empty(lmax + 1, in_channels, out_channels))
        else:
            self.weight = nn.Parameter(torch.empty(lmax + 1, mmax + 1, in_channels, out_channels,
                                                   dtype=torch.cfloat))
        self._transforms: dict = {}   # per grid: (RealSHT, InverseRealSHT), no state
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W ~ N(0, 1 / in_channels) (complex: real and imaginary parts each of variance
        1 / (2 in_channels)): O(1) outputs for O(1) inputs."""
        with torch.no_grad():
            self.weight.copy_(torch.randn_like(self.weight) / math.sqrt(self.in_channels))

    def transforms(self, nlat: int, nlon: int):
        """The ``(RealSHT, InverseRealSHT)`` pair of an (nlat, nlon) grid (made once)."""
        key = (int(nlat), int(nlon))
        if key not in self._transforms:
            if nlat < self.lmax + 1 or nlon <= 2 * self.mmax:
                raise InputError(f"a {nlat} x {nlon} grid cannot hold lmax={self.lmax}, "
                                 f"mmax={self.mmax} (needs nlat >= {self.lmax + 1}, "
                                 f"nlon >= {2 * self.mmax + 1})")
            self._transforms[key] = (RealSHT(nlat, nlon, self.lmax, self.mmax),
                                     InverseRealSHT(nlat, nlon, self.lmax, self.mmax))
        return self._transforms[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"SphericalSpectralConv expects [B, {self.in_channels}, nlat, nlon],"
                             f" got {tuple(x.shape)}")
        sht, isht = self.transforms(*x.shape[2:])
        c = sht(x)                                                      # [B, C, l, m]
        if self.weights == "degree":
            w = self.weight.to(x.dtype)
            out = torch.complex(torch.einsum("bclm,lco->bolm", c.real, w),
                                torch.einsum("bclm,lco->bolm", c.imag, w))
        else:
            out = torch.einsum("bclm,lmco->bolm", c, self.weight.to(c.dtype))
        return isht(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, lmax={self.lmax}, mmax={self.mmax}, "
                f"weights={self.weights!r}")


class SphericalGlobalBranch(nn.Module):
    """The spherical global branch: G(x) = Dec(SphericalSpectralConv([Enc(x), occupancy])).

    Args:
        in_channels, out_channels: C, O.
        latent_shape: (nlat, nlon) of the latent Gauss-Legendre grid (default (32, 64)).
        lmax: largest degree of the convolution (default nlat // 2: the encoder's average over
            ~2 latent spacings damps the degrees above that, and they alias on the grid).
        mmax: largest order (default lmax).
        radius, radius_factor: the encoder's geodesic radius (see :class:`SphereEncoder`).
        weights: ``"degree"`` (default, rotation-equivariant) or ``"degree_order"``.
        occupancy: feed the occupancy channel to the convolution (default True; then the
            convolution has C + 1 input channels).

    Shapes: x [N, C], data (pos [N, 3], weight [N]; a Batch of several spheres) -> [N, O];
    with ``out`` (a Data/Batch of points on the same spheres, one graph per graph of data)
    -> [N_out, O] at its points.
    """

    def __init__(self, in_channels: int, out_channels: int, latent_shape=(32, 64),
                 lmax: int | None = None, mmax: int | None = None, radius: float | None = None,
                 radius_factor: float = 2.0, weights: str = "degree", occupancy: bool = True):
        super().__init__()
        latent_shape = _latent_shape(latent_shape)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.occupancy = bool(occupancy)
        lmax = latent_shape[0] // 2 if lmax is None else int(lmax)
        self.encoder = SphereEncoder(latent_shape, radius, radius_factor)
        self.spectral = SphericalSpectralConv(in_channels + self.occupancy, out_channels, lmax,
                                              mmax, weights)
        self.decoder = SphereDecoder(latent_shape)
        self.spectral.transforms(*latent_shape)   # check the grid holds (lmax, mmax) now

    def reset_parameters(self) -> None:
        self.spectral.reset_parameters()

    def forward(self, x: torch.Tensor, data, out=None, ops=None) -> torch.Tensor:
        """``ops`` = (encoder ``(op, fold)``, decoder ``(op, fold)``) to reuse operators."""
        check_features(x, n_points(data), self.in_channels, "SphericalGlobalBranch")
        enc_op, dec_op = ops if ops is not None else (None, None)
        g, occ = self.encoder(x, data, op=enc_op)
        if self.occupancy:
            g = torch.cat([g, occ], dim=1)
        y = self.spectral(g)
        target = data if out is None else out
        if dec_op is None:
            dec_op = self.decoder.operator(target)
        n_graphs = len(graph_set(target, need_weight=False, what="out").keys)
        if n_graphs != y.shape[0]:
            raise InputError(f"out has {n_graphs} graphs but data has {y.shape[0]}")
        return self.decoder(y, target, op=dec_op)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, occupancy={self.occupancy}"
