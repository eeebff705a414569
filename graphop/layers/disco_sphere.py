"""Geodesic DISCO convolution on the sphere: the planar 2D kernel basis in each point's tangent
plane, neighbourhoods that are geodesic balls, quadrature weights that are surface areas.

For points on the sphere S_R of radius R about the origin (``pos`` [N, 3]), output points x_i,
input points y_j with quadrature weights w_j (areas, in the mesh's units: sum_j w_j = 4 pi R^2
on a closed sphere), and a GEODESIC radius r in radians (a central angle, 0 < r <= pi):

    (K f)_o(x_i) = sum_l sum_c theta[l, c, o] * sum_{j : angle(x_i, y_j) < r} psi_l(z_ij) f_c(y_j) w_j,
    z_ij = log_x_i(y_j) / r                                                    (in R^2, |z_ij| < 1)

where ``log_x(y)`` (:func:`graphop.geometry.sphere.log_map`) is the tangent vector at x along
the geodesic to y, of length the central angle, in the (east, north) components of x's frame
(:func:`graphop.geometry.sphere.tangent_frame`: east = (-sin lon, cos lon, 0), north =
(-sin lat cos lon, -sin lat sin lon, cos lat)). So psi_l is the planar 2D
:class:`graphop.layers.basis.KernelBasis` (radial hats in the geodesic distance t = angle / r,
angular hats in the bearing phi measured from east towards north), unchanged. Neighbours come
from a KD-tree on the unit vectors u = p / |p| with the chord ``2 sin(r / 2)`` (the chord is a
monotone function of the angle, so the ball is exact; never a dense distance matrix).

**Frame, poles and symmetry.** Within 1e-9 rad of a pole longitude is undefined and
:func:`~graphop.geometry.sphere.tangent_frame` uses its limit along the prime meridian
(north pole: east = (0, 1, 0), north = (-1, 0, 0)); the angular basis of a point there is
expressed in that frame. No continuous tangent frame exists on the sphere, so:

* the radial (isotropic) part -- the centre function and ``n_a = 1`` bases -- depends on
  y_j only through the angle(x_i, y_j) and is invariant under every rotation of the sphere
  (rotate points and input together: the same output at the rotated points, to rounding);
* the anisotropic part is equivariant only up to the rotation of the frame: for a rotation Q,
  the frame at Q x_i is Q's image of the frame at x_i turned by an angle alpha_i(Q) in the
  tangent plane, so the output at Q x_i is that of the kernel turned by -alpha_i. alpha = 0 for
  rotations about the polar axis (east/north follow them), except at the pole points
  themselves; in general alpha_i varies from point to point. Learned anisotropic kernels are
  therefore tied to the east/north directions (as on a latitude-longitude grid, and as in the
  spherical DISCO of Ocampo et al. 2023), and singular at the two poles only in this sense.

**Normalisation** (``normalize``, the planar modes of :mod:`graphop.layers.disco` with the
spherical ball measure). In geodesic polar coordinates (rho, phi) about x the area element is
``R^2 sin(rho) d rho d phi``, so the continuum mass of psi_l over the geodesic ball is

    |psi_l|_S = R^2 int_0^1 int_0^{2 pi} |psi_l(t, phi)| r sin(r t) dphi dt
              = (R r)^2 * int hat_k(t) sin(r t) / r dt * int |a_m(phi)| dphi

(:func:`sphere_l1_norms`; the planar value ``r^2 int hat_k(t) t dt ...`` is its limit r -> 0
in units R = 1); the ball itself has area ``2 pi R^2 (1 - cos r)``, not ``pi (R r)^2``.

* ``"mean"``: ``psi_l w_j / max(m_il, c_l)`` plus the blend towards the ball mean, exactly the
  planar rule, with the floor ``c_l = MIN_MASS_FRACTION |psi_l|_S``.
* ``"quadrature"`` (default): the ``"mean"`` rows times the fraction of the ball inside the
  domain. On a closed sphere (``sum_j w_j`` within 1e-3 relative of 4 pi R^2) there is no
  boundary and the fraction is exactly 1, so ``"quadrature"`` equals ``"mean"`` and constants
  map to themselves exactly. On a part of a sphere (a regional mesh) it is the planar
  :func:`~graphop.layers.disco.ball_fraction` with the geodesic distance and the spherical
  integral of beta(t) = 1 - t^2 over the cap, ``2 pi R^2 (1 - 2 sin r / r + 2 (1 - cos r) / r^2)``.
* ``"l1"``: each psi_l divided by ``|psi_l|_S``.
* ``"none"``: the plain quadrature of the formula above (e.g. the cone psi_0 = 1 - t of
  ``kernel_shape=1`` integrates to ``2 pi R^2 (1 - sin r / r)``).

Shapes: :func:`sphere_disco_matrix` returns scipy CSR [N_out * L, N_in], rows ``i * L + l``,
the same kind of matrix as :func:`graphop.layers.disco.disco_matrix`, applied by the same
sparse runtime (:mod:`graphop.layers.sparse`).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from graphop.errors import InputError
from graphop.geometry.neighbors import Neighborhood, check_radius_operator, radius_neighbors
from graphop.geometry.sphere import tangent_frame
from graphop.layers.basis import KernelBasis
from graphop.layers.disco import BUILD_CHUNK_PAIRS, _weighted_means, basis_entries, normalize_mode
from graphop.layers.sparse import build_rows, csr_from_coo, row_chunk

__all__ = ["sphere_disco_matrix", "sphere_radius_of", "sphere_l1_norms", "sphere_neighbors",
           "tangent_log", "cap_area", "SPHERE_RTOL", "CLOSED_RTOL"]

#: points may deviate from the sphere of radius R (their median norm) by at most this * R
SPHERE_RTOL = 1e-6
#: a point set is a closed sphere when its weights sum to 4 pi R^2 within this relative error
CLOSED_RTOL = 1e-3


def sphere_radius_of(points, radius: float | None = None, what: str = "points",
                     rtol: float = SPHERE_RTOL) -> float:
    """The radius R of the origin-centred sphere the points lie on.

    R = ``radius`` if given, else the median of |p_i|; every point must satisfy
    ``| |p_i| - R | <= rtol * R``.

    Args:
        points: [N, 3].
        radius: R, or None to read it from the points.
        what: name used in error messages.
        rtol: relative tolerance (default :data:`SPHERE_RTOL` = 1e-6).

    Returns:
        R (float).

    Raises:
        InputError: points not [N, 3], not finite, or off the sphere (the message gives the
            largest deviation and says the sphere must be centred at the origin).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"{what}: manifold='sphere' needs 3D points [N, 3] on a sphere about "
                         f"the origin, got shape {p.shape}")
    if len(p) == 0 or not np.isfinite(p).all():
        raise InputError(f"{what}: points are empty or contain NaN/inf")
    norms = np.linalg.norm(p, axis=1)
    R = float(np.median(norms)) if radius is None else float(radius)
    if not (math.isfinite(R) and R > 0):
        raise InputError(f"{what}: sphere radius must be positive, got {R}")
    dev = float(np.abs(norms - R).max())
    if dev > rtol * R:
        i = int(np.argmax(np.abs(norms - R)))
        raise InputError(f"{what}: points are not on the sphere of radius {R:.6g} about the "
                         f"origin: point {i} at {p[i].tolist()} is {dev / R:.3g} R off "
                         f"(tolerance {rtol:g} R); centre the sphere at the origin "
                         "(graphop.geometry.sphere.detect_sphere) or use manifold='plane'")
    return R


def cap_area(radius: float, R: float = 1.0) -> float:
    """Area of the geodesic ball (spherical cap) of angular radius r: 2 pi R^2 (1 - cos r)."""
    return 2.0 * math.pi * R * R * (1.0 - math.cos(radius))


def _beta_cap_integral(r: float, R: float) -> float:
    """int_cap (1 - (rho / r)^2) dA = 2 pi R^2 (1 - 2 sin r / r + 2 (1 - cos r) / r^2)
    (-> pi (R r)^2 / 2, the planar value, as r -> 0; evaluated by a series for small r)."""
    if r < 1e-2:   # the closed form cancels: r^2/4 - r^4/72 + r^6/2880
        s = r * r / 4 - r ** 4 / 72 + r ** 6 / 2880
    else:
        s = 1.0 - 2.0 * math.sin(r) / r + 2.0 * (1.0 - math.cos(r)) / (r * r)
    return 2.0 * math.pi * R * R * s


def sphere_l1_norms(basis: KernelBasis, radius: float, R: float = 1.0) -> np.ndarray:
    """``|psi_l|_S = int_{cap(r)} |psi_l(log_x(y) / r)| dA(y)`` for every l, [L] (area units).

    Formula (module docstring): ``(R r)^2 int_0^1 hat_k(t) sin(r t) / r dt * A_m`` with the
    angular integral A_m of the planar basis (2 pi / n_a per sector, 2 pi for the centre and
    n_a = 1); the radial integral by 8-point Gauss-Legendre on each linear piece of the hat
    (the integrand is smooth there). As r -> 0 this is (R r)^2 times the planar
    :meth:`KernelBasis.l1_norms`.

    Args:
        basis: a 2D :class:`KernelBasis`.
        radius: r, radians (0 < r <= pi).
        R: sphere radius.
    """
    if basis.dim != 2:
        raise InputError(f"the sphere's tangent planes are 2D; got a {basis.dim}D basis")
    n_r, n_a = basis.n_r, basis.n_a
    r = float(radius)
    radial = basis.radial_integrals(lambda t: np.sin(r * t) / r)
    angular = np.full(n_a, 2 * math.pi / n_a)
    norms = np.empty(basis.n_basis)
    norms[0] = radial[0] * 2 * math.pi
    for k in range(1, n_r):
        norms[1 + (k - 1) * n_a: 1 + k * n_a] = radial[k] * angular
    return norms * (R * r) ** 2


class _SphereMasses:
    """The planar basis seen by :func:`graphop.layers.disco._weighted_means` with radius 1:
    ``1 ** dim * l1_norms()`` is then the spherical ball mass |psi_l|_S."""

    def __init__(self, basis: KernelBasis, norms: np.ndarray):
        self.n_basis, self.dim, self._norms, self._basis = basis.n_basis, basis.dim, norms, basis

    def l1_norms(self) -> np.ndarray:
        return self._norms

    def nonnegative(self) -> np.ndarray:
        return self._basis.nonnegative()


def sphere_neighbors(u_out: np.ndarray, u_in: np.ndarray | None, radius: float) -> Neighborhood:
    """Geodesic-ball neighbours on the unit sphere: all (i, j) with angle(u_i, u_j) <= r.

    KD-tree radius search on the unit vectors with the chord ``2 sin(r / 2)`` (times
    1 + 1e-12, so that no pair on the boundary is lost to rounding; pairs there have basis
    value 0). ``u_in=None`` means the same points (symmetric pair search).

    Returns:
        :class:`~graphop.geometry.neighbors.Neighborhood` with ``distances`` = central angles
        (radians) and ``offsets`` = ``log_map(u_i, u_j)`` [nnz, 2] (east, north; radians).
    """
    chord = 2.0 * math.sin(min(radius, math.pi) / 2.0) * (1 + 1e-12)
    nb = radius_neighbors(u_out, u_in, min(chord, 2.0 + 1e-9))
    src = u_out if u_in is None else u_in
    z = tangent_log(u_out, src, nb.rows(), nb.indices)
    ang = np.linalg.norm(z, axis=1)
    return Neighborhood(nb.indptr, nb.indices, ang, z, n_source=nb.n_source)


def tangent_log(u_out: np.ndarray, u_in: np.ndarray, rows: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
    """``log_map(u_out[rows], u_in[cols])`` [E, 2] for unit vectors, with each output point's
    frame computed once: for u = u_out[i], v = u_in[j] and the frame (e, n) of u,
    ``s = (v.e, v.n)`` is the part of v orthogonal to u (|s| = sin theta), theta =
    atan2(|s|, u.v), and log = theta s / |s| (0 for v = u; (0, pi) for v = -u, as
    :func:`graphop.geometry.sphere.log_map`, which this equals to rounding)."""
    east, north = tangent_frame(u_out)
    v = u_in[cols]
    s = np.stack([np.einsum("ed,ed->e", v, east[rows]),
                  np.einsum("ed,ed->e", v, north[rows])], axis=1)
    sin = np.sqrt(np.einsum("ed,ed->e", s, s))
    cos = np.einsum("ed,ed->e", v, u_out[rows])
    theta = np.arctan2(sin, cos)
    z = s * np.where(sin > 0, theta / np.where(sin > 0, sin, 1.0), 0.0)[:, None]
    anti = (sin <= 1e-12) & (cos < 0)
    if np.any(anti):
        z[anti] = np.stack([np.zeros(int(anti.sum())), theta[anti]], axis=1)
    return z


def _sphere_rows(nb, w, radius, R, basis, norms, mode, closed) -> sp.csr_matrix:
    e, l, rows, cols, vals = basis_entries(nb, w, radius, basis)
    nq, L = nb.n_query, basis.n_basis
    if mode == "l1":
        vals = vals / norms[l]
    if mode not in ("quadrature", "mean"):
        return csr_from_coo(rows * L + l, cols, vals, (nq * L, len(w)))
    m = _weighted_means(nb, e, l, rows, cols, vals, len(w), 1.0, _SphereMasses(basis, norms))
    if mode == "quadrature" and not closed:
        beta = np.maximum(0.0, 1.0 - (nb.distances / radius) ** 2)
        mass = np.bincount(nb.rows(), weights=beta * w[nb.indices], minlength=nq)
        phi = np.minimum(1.0, mass / _beta_cap_integral(radius, R))
        m = (sp.diags(np.repeat(phi, L)) @ m).tocsr()
    return m


def sphere_disco_matrix(pos_out, pos_in, weight_in, radius: float, basis: KernelBasis, *,
                        normalize="quadrature", sphere_radius: float | None = None,
                        same: bool = False) -> sp.csr_matrix:
    """The geodesic DISCO operator Psi on the sphere (module docstring) as CSR [N_out L, N_in].

    ``Psi[i L + l, j] = psi_l(log_x_i(y_j) / r) w_j`` for angle(x_i, y_j) < r, normalised by
    ``normalize`` (module docstring).

    Args:
        pos_out: [N_out, 3] output points x_i on the sphere (ignored when ``same``).
        pos_in: [N_in, 3] input points y_j on the same sphere.
        weight_in: [N_in] quadrature weights (areas in the mesh's units).
        radius: geodesic radius r in radians, 0 < r <= pi.
        basis: a 2D :class:`~graphop.layers.basis.KernelBasis` (evaluated in the tangent plane).
        normalize: ``"quadrature"`` (default), ``"mean"``, ``"l1"``, ``"none"`` (or True/False).
        sphere_radius: R; default the median norm of ``pos_in``. All points must be within
            1e-6 R of the sphere (:func:`sphere_radius_of`).
        same: pos_out is pos_in (symmetric pair search).

    Returns:
        scipy CSR [N_out * L, N_in], rows ``i * L + l``.

    Raises:
        InputError: points not 3D or off the sphere, radius outside (0, pi], a non-2D basis,
            weights of the wrong shape.
    """
    mode = normalize_mode(normalize)
    r = float(radius)
    if not (math.isfinite(r) and 0 < r <= math.pi):
        raise InputError(f"sphere DISCO radius is a geodesic angle in radians in (0, pi], "
                         f"got {radius}")
    if basis.dim != 2:
        raise InputError(f"sphere DISCO evaluates the basis in 2D tangent planes; got a "
                         f"{basis.dim}D basis")
    pos_in = np.asarray(pos_in, dtype=np.float64)
    R = sphere_radius_of(pos_in, sphere_radius, "pos_in")
    pos_out = pos_in if same else np.asarray(pos_out, dtype=np.float64)
    if not same:
        sphere_radius_of(pos_out, R, "pos_out")
    w = np.asarray(weight_in, dtype=np.float64).reshape(-1)
    if w.shape != (len(pos_in),):
        raise InputError(f"weight_in must have shape [{len(pos_in)}], got {w.shape}")
    u_in = pos_in / np.linalg.norm(pos_in, axis=1, keepdims=True)
    u_out = u_in if same else pos_out / np.linalg.norm(pos_out, axis=1, keepdims=True)
    chord = min(2.0 * math.sin(r / 2.0), 2.0)
    check_radius_operator(u_out, u_in, chord, entries_per_pair=basis.entries_per_offset(),
                          bytes_per_entry=48, scratch_per_pair=300,
                          max_scratch_pairs=BUILD_CHUNK_PAIRS, what="sphere DISCO")
    norms = sphere_l1_norms(basis, r, R)
    closed = abs(w.sum() - 4 * math.pi * R * R) <= CLOSED_RTOL * 4 * math.pi * R * R
    n_out = len(u_out)
    # pairs per output row ~ N_in * cap fraction (points roughly uniform on the sphere)
    per_row = max(1.0, len(u_in) * (1 - math.cos(r)) / 2)
    chunk = row_chunk(n_out, per_row * n_out, BUILD_CHUNK_PAIRS)
    if chunk >= n_out:
        nb = sphere_neighbors(u_out, None if same else u_in, r)
        return _sphere_rows(nb, w, r, R, basis, norms, mode, closed)
    return build_rows(n_out, chunk, lambda a: _sphere_rows(
        sphere_neighbors(u_out[a:a + chunk], u_in, r), w, r, R, basis, norms, mode, closed))

