"""Point sets, quadrature and coordinates on the sphere (numpy and scipy only).

Every generator returns a :class:`graphop.geometry.mesh.Mesh` on the sphere of radius ``R``
centred at the origin, with ``field_data["sphere"] = [cx, cy, cz, R]`` (here ``[0, 0, 0, R]``)
and quadrature ``weights`` that sum to the exact area ``4 pi R^2`` (to rounding):

* :func:`icosphere` -- an icosahedron subdivided ``level`` times (own numpy implementation:
  every triangle split in 4 at its edge midpoints, the midpoints projected onto the sphere after
  each split), ``10 * 4^level + 2`` points, triangle cells, spherical lumped mass
  (:func:`spherical_triangle_areas`).
* :func:`latlon_grid` -- ``kind="gauss"`` (Gauss-Legendre latitudes) or ``"equiangular"``
  (cell-centred latitudes, Fejer's first rule), a point cloud with exact product quadrature.
* :func:`fibonacci_sphere`, :func:`random_sphere` -- golden-spiral and uniform i.i.d. points,
  weights = spherical Voronoi cell areas (:func:`point_set_weights`).
* :func:`healpix_like` -- HEALPix pixel centres (equal-area rings), equal weights.
* :func:`sphere_points` -- one dispatcher over all of the above, by approximate point count.

Recognising a sphere in a user's mesh: :func:`detect_sphere` (least-squares fit),
:func:`sphere_quadrature`, :func:`as_sphere_mesh`.

Coordinates (for the layers): :func:`to_lonlat`, :func:`from_lonlat`,
:func:`geodesic_distance`, :func:`tangent_frame`, :func:`log_map`, :func:`exp_map`. These assume
the sphere is centred at the origin (subtract ``field_data["sphere"][:3]`` first otherwise);
they depend on the direction of each point only, so any radius works, and angles/log-map
lengths are central angles in radians (multiply by ``R`` for arc length).

Conventions: longitude ``lon = atan2(y, x)``, latitude ``lat = asin(z / |p|)``; east =
(-sin lon, cos lon, 0), north = (-sin lat cos lon, -sin lat sin lon, cos lat), so
``east x north = p / |p|`` (a right-handed frame with the outward normal).

Note: ``Mesh.measure`` of an :func:`icosphere` is the area of the flat triangles (slightly
less than 4 pi R^2); the ``weights`` are the spherical areas.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from graphop.errors import InputError, InputTypeError, MeshError
from graphop.geometry.mesh import Mesh

__all__ = [
    "SPHERE_KINDS",
    "icosphere",
    "latlon_grid",
    "fibonacci_sphere",
    "random_sphere",
    "healpix_like",
    "sphere_points",
    "spherical_triangle_areas",
    "point_set_weights",
    "sphere_quadrature",
    "detect_sphere",
    "as_sphere_mesh",
    "to_lonlat",
    "from_lonlat",
    "geodesic_distance",
    "tangent_frame",
    "log_map",
    "exp_map",
    "latlon_exact_degree",
]

#: the point-set kinds :func:`sphere_points` accepts
SPHERE_KINDS = ("icosphere", "equiangular", "gauss", "fibonacci", "random", "healpix")

#: points within this relative distance of the polar axis use the polar tangent frame
_POLE_TOL = 1e-9
#: coincidence threshold (relative to R) for Voronoi generators
_DUP_TOL = 1e-9


# ---------------------------------------------------------------------------- argument checks
def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def _radius_arg(radius) -> float:
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise InputTypeError(f"radius must be a number, got {radius!r}") from None
    if not (math.isfinite(r) and r > 0):
        raise InputError(f"radius must be positive and finite, got {radius!r}")
    return r


def _points3(points, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise InputError(f"{name} must have shape [..., 3], got {p.shape}")
    if not np.isfinite(p).all():
        raise InputError(f"{name} contain NaN or inf")
    return p


def _unit(p: np.ndarray, name: str = "points") -> np.ndarray:
    """p / |p| along the last axis; InputError for a point at the origin."""
    n = np.linalg.norm(p, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise InputError(f"{name}: a point at the centre of the sphere has no direction")
    return p / n


def _source(text: str, n: int, radius: float) -> str:
    rad = "" if radius == 1.0 else f", radius {radius:g}"
    return f"<{text}, {n} points{rad}>"


def _sphere_field(radius: float, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.array([*np.asarray(center, dtype=np.float64), radius], dtype=np.float64)


# ---------------------------------------------------------------------------- quadrature kernels
def spherical_triangle_areas(points, triangles, center=None, radius: float = 1.0) -> np.ndarray:
    """Area of the spherical (geodesic) triangle over each flat triangle.

    The vertices are projected radially onto the sphere (``u = (p - center) / |p - center|``)
    and the solid angle is the Van Oosterom-Strackee formula

        tan(Omega / 2) = |u_a . (u_b x u_c)| / (1 + u_a.u_b + u_b.u_c + u_c.u_a),

    evaluated with ``atan2`` (so Omega in [0, 2 pi), correct beyond a hemisphere's quarter);
    the area is ``Omega R^2``. The absolute triple product makes it orientation-independent.

    Args:
        points: [N, 3] vertices.
        triangles: [M, 3] vertex indices.
        center: [3] sphere centre (default origin).
        radius: sphere radius R.

    Returns:
        [M] spherical areas.
    """
    p = _points3(points)
    t = np.asarray(triangles, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != 3:
        raise InputError(f"triangles must have shape [M, 3], got {t.shape}")
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    u = _unit(p - c)
    a, b, cc = u[t[:, 0]], u[t[:, 1]], u[t[:, 2]]
    num = np.abs(np.einsum("ij,ij->i", a, np.cross(b, cc)))
    den = 1.0 + np.einsum("ij,ij->i", a, b) + np.einsum("ij,ij->i", b, cc) \
        + np.einsum("ij,ij->i", cc, a)
    return 2.0 * np.arctan2(num, den) * radius**2


def _spherical_lumped_mass(points, cells: dict, center, radius: float) -> np.ndarray:
    """Each vertex gets 1/3 of the spherical area of its triangles (1/4 for quads, whose area
    is that of the two triangles (0,1,2), (0,2,3))."""
    n = len(points)
    w = np.zeros(n)
    used = False
    for ctype, conn in cells.items():
        conn = np.asarray(conn, dtype=np.int64)
        if ctype == "triangle":
            area = spherical_triangle_areas(points, conn, center, radius)
            k = 3
        elif ctype == "quad":
            area = spherical_triangle_areas(points, conn[:, [0, 1, 2]], center, radius) \
                + spherical_triangle_areas(points, conn[:, [0, 2, 3]], center, radius)
            k = 4
        else:
            continue
        used = True
        w += np.bincount(conn.ravel(), weights=np.repeat(area / k, k), minlength=n)
    if not used:
        raise MeshError(f"spherical lumped mass needs triangle or quad cells, got "
                        f"{sorted(cells)}")
    return w


def point_set_weights(points, radius: float | None = None, center=None) -> np.ndarray:
    """Quadrature weights of a bare point set on a sphere: its spherical Voronoi cell areas.

    Each point gets the area of the region of the sphere closer (in geodesic distance) to it
    than to any other point (``scipy.spatial.SphericalVoronoi(...).calculate_areas()``); the
    areas tile the sphere, so they sum to 4 pi R^2. The points are first projected radially
    onto the sphere (they must lie within 1e-6 R of it).

    Args:
        points: [N, 3] points, N >= 4, not all on one great circle.
        radius: sphere radius R (default: the mean distance of the points from ``center``).
        center: [3] sphere centre (default: the origin; use :func:`detect_sphere` for a sphere
            elsewhere).

    Returns:
        [N] areas.

    Raises:
        MeshError: fewer than 4 points, points off the sphere, two points closer than
            1e-9 R (duplicates), or points that do not span the sphere (coplanar).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise MeshError(f"points must have shape [N, 3], got {p.shape}")
    if not np.isfinite(p).all():
        raise MeshError("points contain NaN or inf")
    if len(p) < 4:
        raise MeshError(f"Voronoi weights need at least 4 points on the sphere, got {len(p)}")
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    d = p - c
    r = np.linalg.norm(d, axis=1)
    R = float(r.mean()) if radius is None else _radius_arg(radius)
    if not R > 0:
        raise MeshError("all points are at the centre of the sphere")
    dev = float(np.abs(r - R).max())
    if dev > 1e-6 * R:
        raise MeshError(f"points are not on the sphere of radius {R:g} about {c.tolist()}: "
                        f"the farthest is {dev:.3g} ({dev / R:.3g} R) off; fit the sphere "
                        "first (detect_sphere / as_sphere_mesh)")
    u = d / r[:, None]
    from scipy.spatial import SphericalVoronoi, cKDTree

    pairs = cKDTree(u).query_pairs(_DUP_TOL, output_type="ndarray")
    if len(pairs):
        i, j = (int(v) for v in pairs[0])
        raise MeshError(f"{len(pairs)} pair(s) of duplicate points (closer than {_DUP_TOL:g} R;"
                        f" first: points {i} and {j}): Voronoi areas need distinct points, "
                        "remove duplicates first (e.g. np.unique(points, axis=0))")
    try:
        sv = SphericalVoronoi(u, radius=1.0, threshold=_DUP_TOL)
        areas = sv.calculate_areas()
    except Exception as exc:  # scipy ValueError / QhullError on degenerate input
        raise MeshError(f"spherical Voronoi diagram failed ({exc}); the points must be "
                        "distinct and not all on one great circle") from exc
    return np.asarray(areas, dtype=np.float64) * R**2


def sphere_quadrature(points, cells=None, radius: float | None = None,
                      center=None) -> np.ndarray:
    """Quadrature weights for points on a sphere.

    With triangle (or quad) ``cells``: spherical lumped mass, each vertex receiving one third
    (one quarter) of the spherical area of every incident cell
    (:func:`spherical_triangle_areas`). Without cells: spherical Voronoi areas
    (:func:`point_set_weights`). Both sum to 4 pi R^2 for a closed covering mesh.

    Args:
        points: [N, 3].
        cells: None, a [M, 3] triangle array, or a meshio-style dict (its ``triangle`` and
            ``quad`` blocks are used; other types ignored).
        radius: R (default: fitted, see below).
        center: [3] (default: fitted).

    When ``center`` is None the sphere is fitted with :func:`detect_sphere` (MeshError when the
    points are not on a sphere); a missing ``radius`` is then the fitted one, or the mean
    distance from the given ``center``.

    Returns:
        [N] weights.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise MeshError(f"points must have shape [N, 3], got {p.shape}")
    if center is None:
        fit = _fit_sphere(p)
        if fit is None or fit[2] > 1e-6 * fit[1]:
            raise MeshError(_off_sphere_message(p, fit, 1e-6))
        c = fit[0]
        R = fit[1] if radius is None else _radius_arg(radius)
    else:
        c = np.asarray(center, dtype=np.float64).reshape(3)
        R = float(np.linalg.norm(p - c, axis=1).mean()) if radius is None \
            else _radius_arg(radius)
    if cells is None or (isinstance(cells, dict) and not any(
            t in cells and len(cells[t]) for t in ("triangle", "quad"))):
        return point_set_weights(p, R, c)
    if not isinstance(cells, dict):
        cells = {"triangle": cells}
    cells = {t: np.asarray(v) for t, v in cells.items() if len(v)}
    for t, v in cells.items():
        if t in ("triangle", "quad") and (v.min() < 0 or v.max() >= len(p)):
            raise MeshError(f"{t} cells index a point outside 0..{len(p) - 1}")
    return _spherical_lumped_mass(p, cells, c, R)


# ---------------------------------------------------------------------------- sphere detection
def _fit_sphere(p: np.ndarray):
    """(center [3], R, max | |p - c| - R |) of the least-squares sphere, or None when the
    points do not determine one (fewer than 4, not finite, coplanar)."""
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 4 or not np.isfinite(p).all():
        return None
    m = p.mean(axis=0)
    q = p - m
    s = math.sqrt(float((q**2).sum(axis=1).mean()))
    if s == 0:
        return None
    q = q / s
    # algebraic fit: |q|^2 = 2 c.q + (R^2 - |c|^2), linear in (c, k)
    A = np.column_stack([2.0 * q, np.ones(len(q))])
    sol, _, rank, sv = np.linalg.lstsq(A, (q**2).sum(axis=1), rcond=None)
    if rank < 4 or sv[-1] <= 1e-10 * sv[0]:
        return None
    c = sol[:3]
    R2 = sol[3] + c @ c
    if not R2 > 0:
        return None
    R = math.sqrt(R2)
    # Gauss-Newton on the geometric residuals |q - c| - R
    for _ in range(4):
        d = q - c
        r = np.linalg.norm(d, axis=1)
        if np.any(r == 0):
            break
        J = np.column_stack([-d / r[:, None], -np.ones(len(q))])
        step = np.linalg.lstsq(J, -(r - R), rcond=None)[0]
        c, R = c + step[:3], R + step[3]
        if np.abs(step).max() <= 1e-15 * max(R, 1.0):
            break
    r = np.linalg.norm(q - c, axis=1)
    R = float(r.mean())
    dev = float(np.abs(r - R).max())
    return c * s + m, R * s, dev * s


def _off_sphere_message(p: np.ndarray, fit, rtol: float) -> str:
    if fit is None:
        return (f"the {len(p)} points do not determine a sphere (need >= 4 finite 3D points, "
                "not all in one plane)")
    c, R, dev = fit
    return (f"points are not on a sphere: the least-squares sphere (centre "
            f"{np.round(c, 6).tolist()}, radius {R:.6g}) has points {dev:.3g} "
            f"({dev / R:.3g} R) off it, more than rtol = {rtol:g}")


def detect_sphere(points, rtol: float = 1e-6) -> tuple[np.ndarray, float] | None:
    """Recognise points that lie on a sphere.

    Algorithm: the algebraic least-squares sphere (solve |p|^2 = 2 c.p + k for c and
    k = R^2 - |c|^2, on centred and scaled coordinates), refined by Gauss-Newton on the
    geometric residuals |p - c| - R, with R = mean |p - c|. The sphere is accepted when every
    point is within ``rtol * R`` of it. Centre components below 1e-12 R are set to exactly 0.

    Args:
        points: [N, d] points.
        rtol: relative tolerance on the distance of each point from the sphere.

    Returns:
        ``(center [3], R)``, or None when N < 4, d != 3, the points are coplanar or not
        finite, or some point is farther than ``rtol * R`` from the fitted sphere.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"points must have shape [N, d], got {p.shape}")
    fit = _fit_sphere(p)
    if fit is None:
        return None
    c, R, dev = fit
    if dev > rtol * R:
        return None
    c = np.where(np.abs(c) <= 1e-12 * R, 0.0, c)
    return c, R


def as_sphere_mesh(mesh: Mesh, rtol: float = 1e-6) -> Mesh:
    """A copy of ``mesh`` with spherical quadrature, when its points lie on a sphere.

    The sphere is found by :func:`detect_sphere`; the copy has :func:`sphere_quadrature`
    weights (spherical lumped mass for triangle/quad cells, Voronoi areas for a point cloud)
    and ``field_data["sphere"] = [cx, cy, cz, R]``; points, cells and fields are shared.

    Raises:
        MeshError: the mesh is 2D or its points are not within ``rtol * R`` of a sphere (the
            message gives the fitted sphere and the largest deviation).
    """
    if mesh.dim != 3:
        raise MeshError(f"{mesh.source}: a {mesh.dim}D mesh is not a sphere")
    p = mesh.points
    fit = _fit_sphere(p)
    if fit is None or fit[2] > rtol * fit[1]:
        raise MeshError(f"{mesh.source}: {_off_sphere_message(p, fit, rtol)}")
    center, R = detect_sphere(p, rtol)
    w = sphere_quadrature(p, mesh.cells if mesh.cells else None, radius=R, center=center)
    fd = dict(mesh.field_data)
    fd["sphere"] = _sphere_field(R, center)
    return Mesh(p, mesh.cells, dict(mesh.point_data), dict(mesh.cell_data), fd, weights=w,
                boundary_sets=dict(mesh.boundary_sets), source=mesh.source, validate=False)


# ---------------------------------------------------------------------------- point sets
def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """12 unit vertices (cyclic permutations of (0, +-1, +-phi)) and 20 outward faces."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    v = []
    for s1 in (-1.0, 1.0):
        for s2 in (-phi, phi):
            v += [(0.0, s1, s2), (s1, s2, 0.0), (s2, 0.0, s1)]
    v = np.array(v)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    from scipy.spatial import ConvexHull

    f = ConvexHull(v).simplices.astype(np.int64)
    flip = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])) < 0
    f[flip] = f[flip][:, [0, 2, 1]]
    return v, f


def _subdivide(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle (a, b, c) into (a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)
    at its edge midpoints (shared between neighbours), midpoints projected to the sphere."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e.sort(axis=1)
    uniq, inv = np.unique(e, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    mid = v[uniq[:, 0]] + v[uniq[:, 1]]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    m = len(f)
    ab, bc, ca = (len(v) + inv[:m], len(v) + inv[m:2 * m], len(v) + inv[2 * m:])
    a, b, c = f[:, 0], f[:, 1], f[:, 2]
    nf = np.concatenate([np.stack([a, ab, ca], 1), np.stack([b, bc, ab], 1),
                         np.stack([c, ca, bc], 1), np.stack([ab, bc, ca], 1)])
    return np.concatenate([v, mid]), nf


def icosphere(level: int, radius: float = 1.0) -> Mesh:
    """Geodesic icosphere: the icosahedron subdivided ``level`` times.

    Each subdivision splits every triangle into 4 at its edge midpoints and projects the new
    points radially onto the sphere (own numpy implementation, not trimesh). The result has
    ``10 * 4^level + 2`` points and ``20 * 4^level`` outward-oriented triangles. Weights are
    the spherical lumped mass: each vertex gets one third of the spherical area
    (:func:`spherical_triangle_areas`) of each incident triangle; they sum to 4 pi R^2 to
    rounding, and the quadrature error for smooth functions is O(h^2) in the spacing h
    (about a factor 4 per level).

    Args:
        level: number of subdivisions, >= 0 (0 is the icosahedron, 12 points).
        radius: R.

    Returns:
        Mesh with ``cells={"triangle": [20 4^level, 3]}``, ``field_data["sphere"]``.
    """
    level = _int_arg("level", level, 0)
    if level > 10:
        raise InputError(f"icosphere level {level} would have {10 * 4**level + 2} points; "
                         "use level <= 10")
    R = _radius_arg(radius)
    v, f = _icosahedron()
    for _ in range(level):
        v, f = _subdivide(v, f)
    w = spherical_triangle_areas(v, f, None, R)
    weights = np.bincount(f.ravel(), weights=np.repeat(w / 3.0, 3), minlength=len(v))
    return Mesh(v * R, {"triangle": f}, weights=weights,
                field_data={"sphere": _sphere_field(R)},
                source=_source(f"icosphere level {level}", len(v), R), validate=False)


def _fejer1(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fejer's first rule on [-1, 1]: nodes x_k = cos(theta_k), theta_k = (2k+1) pi / (2n),
    weights w_k = (2/n) (1 - 2 sum_{j=1}^{floor(n/2)} cos(2 j theta_k) / (4 j^2 - 1))."""
    theta = (2.0 * np.arange(n) + 1.0) * np.pi / (2.0 * n)
    j = np.arange(1, n // 2 + 1)
    s = (np.cos(2.0 * np.outer(theta, j)) / (4.0 * j**2 - 1.0)).sum(axis=1)
    return np.cos(theta), (2.0 / n) * (1.0 - 2.0 * s)


def latlon_exact_degree(nlat: int, nlon: int | None = None, kind: str = "equiangular") -> int:
    """Largest D such that :func:`latlon_grid` integrates every polynomial in (x, y, z) of
    total degree <= D (equivalently every spherical harmonic of degree <= D) exactly.

    ``"gauss"``: D = min(2 nlat - 1, nlon - 1). ``"equiangular"``: D = min(D_F, nlon - 1)
    where D_F = nlat for odd nlat and nlat - 1 for even nlat (the largest odd integer <= nlat:
    Fejer's first rule is interpolatory on nlat nodes, degree nlat - 1, and its symmetric nodes
    integrate the next, odd, degree too). The nlon - 1 bound is the trapezoidal rule in
    longitude, exact for frequencies |m| < nlon. With the default nlon = 2 nlat the latitude
    bound is the one that matters (gauss: 2 nlat - 1; equiangular: nlat or nlat - 1).
    """
    nlat = _int_arg("nlat", nlat, 2)
    nlon = 2 * nlat if nlon is None else _int_arg("nlon", nlon, 2)
    if kind == "gauss":
        d = 2 * nlat - 1
    elif kind == "equiangular":
        d = nlat if nlat % 2 else nlat - 1
    else:
        raise InputError(f"latlon kind must be 'equiangular' or 'gauss', got {kind!r}")
    return min(d, nlon - 1)


def latlon_grid(nlat: int, nlon: int | None = None, kind: str = "equiangular",
                radius: float = 1.0) -> Mesh:
    """A latitude-longitude grid (point cloud) with exact product quadrature.

    Longitudes lon_k = 2 pi k / nlon (k = 0..nlon-1; trapezoidal weights 2 pi / nlon).
    Latitudes, listed from north to south (colatitude increasing, as in torch-harmonics and
    ERA5): ``"gauss"`` -- sin(lat) at the Gauss-Legendre nodes
    (``numpy.polynomial.legendre.leggauss(nlat)``) with their weights; ``"equiangular"`` --
    the cell-centred latitudes lat_k = -pi/2 + (k + 1/2) pi / nlat (no points at the poles)
    with Fejer's first-rule weights in z = sin(lat) = cos(colatitude). Point weight = latitude
    weight x 2 pi / nlon x R^2; the weights sum to 4 pi R^2.

    Exactness (see :func:`latlon_exact_degree`): every polynomial of degree <= D is integrated
    exactly, D = min(2 nlat - 1, nlon - 1) for ``"gauss"`` and D = min(nlat if odd else
    nlat - 1, nlon - 1) for ``"equiangular"``; degree D + 1 is not.

    Layout: point ``i * nlon + k`` is latitude row i (north first), longitude k, so a field
    reshapes to [nlat, nlon].

    Args:
        nlat: number of latitudes, >= 2.
        nlon: number of longitudes, >= 2 (default 2 nlat).
        kind: ``"equiangular"`` or ``"gauss"``.
        radius: R.

    Returns:
        Mesh without cells, ``field_data["sphere"]``.
    """
    nlat = _int_arg("nlat", nlat, 2)
    nlon = 2 * nlat if nlon is None else _int_arg("nlon", nlon, 2)
    R = _radius_arg(radius)
    if kind == "gauss":
        z, wz = np.polynomial.legendre.leggauss(nlat)
        z, wz = z[::-1], wz[::-1]  # north first
        lat = np.arcsin(np.clip(z, -1.0, 1.0))
    elif kind == "equiangular":
        x, wz = _fejer1(nlat)  # x = cos(colatitude) decreasing: north first
        lat = np.pi / 2 - (2.0 * np.arange(nlat) + 1.0) * np.pi / (2.0 * nlat)
        z = np.sin(lat)
    else:
        raise InputError(f"latlon_grid kind must be 'equiangular' or 'gauss', got {kind!r}")
    lon = 2.0 * np.pi * np.arange(nlon) / nlon
    LAT, LON = np.meshgrid(lat, lon, indexing="ij")
    pts = from_lonlat(LON.ravel(), LAT.ravel(), R)
    # use z from the quadrature nodes directly (sin(arcsin(z)) can differ by an ulp)
    pts[:, 2] = np.repeat(z, nlon) * R
    w = np.repeat(wz, nlon) * (2.0 * np.pi / nlon) * R**2
    return Mesh(pts, {}, weights=w, field_data={"sphere": _sphere_field(R)},
                source=_source(f"{kind} grid {nlat}x{nlon}", len(pts), R), validate=False)


def fibonacci_sphere(n: int, radius: float = 1.0) -> Mesh:
    """Golden-spiral (Fibonacci) points: z_i = 1 - (2 i + 1) / n, lon_i = i * pi (3 - sqrt 5)
    (the golden angle), i = 0..n-1 -- nearly uniform, no point at the poles. Weights:
    spherical Voronoi areas (:func:`point_set_weights`).

    Args:
        n: number of points, >= 4.
        radius: R.
    """
    n = _int_arg("n", n, 4)
    R = _radius_arg(radius)
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    lon = np.mod(i * np.pi * (3.0 - math.sqrt(5.0)), 2.0 * np.pi)
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    u = np.column_stack([rho * np.cos(lon), rho * np.sin(lon), z])
    return Mesh(u * R, {}, weights=point_set_weights(u, 1.0) * R**2,
                field_data={"sphere": _sphere_field(R)},
                source=_source("fibonacci sphere", n, R), validate=False)


def random_sphere(n: int, seed: int = 0, radius: float = 1.0) -> Mesh:
    """Uniform i.i.d. points on the sphere (normalised standard Gaussian vectors drawn with
    ``numpy.random.default_rng(seed)``). Weights: spherical Voronoi areas.

    Args:
        n: number of points, >= 4.
        seed: random seed.
        radius: R.
    """
    n = _int_arg("n", n, 4)
    seed = _int_arg("seed", seed, 0)
    R = _radius_arg(radius)
    g = np.random.default_rng(seed).standard_normal((n, 3))
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    return Mesh(u * R, {}, weights=point_set_weights(u, 1.0) * R**2,
                field_data={"sphere": _sphere_field(R)},
                source=_source(f"random sphere seed {seed}", n, R), validate=False)


def healpix_like(nside: int, radius: float = 1.0) -> Mesh:
    """HEALPix pixel centres (Gorski et al. 2005, ring scheme): 12 nside^2 equal-area pixels
    on 4 nside - 1 rings, listed north to south; every weight is exactly 4 pi R^2 / N.

    Rings i = 1..4 nside - 1 (counted from the north). North cap (i < nside): z = 1 - i^2 /
    (3 nside^2), 4 i points at lon = pi (j - 1/2) / (2 i), j = 1..4 i. Equatorial belt
    (nside <= i <= 3 nside): z = 4/3 - 2 i / (3 nside), 4 nside points at
    lon = pi (j - s/2) / (2 nside), s = (i - nside + 1) mod 2. South cap: the north cap
    mirrored (z -> -z).

    Args:
        nside: resolution, >= 1 (any integer, not only powers of 2).
        radius: R.
    """
    nside = _int_arg("nside", nside, 1)
    R = _radius_arg(radius)
    zs, lons = [], []
    for i in range(1, nside):
        j = np.arange(1, 4 * i + 1)
        zs.append(np.full(4 * i, 1.0 - i * i / (3.0 * nside * nside)))
        lons.append(np.pi * (j - 0.5) / (2.0 * i))
    for i in range(nside, 3 * nside + 1):
        j = np.arange(1, 4 * nside + 1)
        s = (i - nside + 1) % 2
        zs.append(np.full(4 * nside, 4.0 / 3.0 - 2.0 * i / (3.0 * nside)))
        lons.append(np.pi * (j - s / 2.0) / (2.0 * nside))
    for i in range(nside - 1, 0, -1):
        j = np.arange(1, 4 * i + 1)
        zs.append(np.full(4 * i, -(1.0 - i * i / (3.0 * nside * nside))))
        lons.append(np.pi * (j - 0.5) / (2.0 * i))
    z, lon = np.concatenate(zs), np.concatenate(lons)
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    u = np.column_stack([rho * np.cos(lon), rho * np.sin(lon), z])
    n = len(u)
    return Mesh(u * R, {}, weights=np.full(n, 4.0 * np.pi * R**2 / n),
                field_data={"sphere": _sphere_field(R)},
                source=_source(f"healpix-like nside {nside}", n, R), validate=False)


def _closest_log(counts: dict[int, int], n: int) -> int:
    """The key whose count is closest to n in ratio (|log(count / n)|); ties -> smaller."""
    return min(counts, key=lambda k: (abs(math.log(counts[k] / n)), k))


def sphere_points(kind: str, n: int, seed: int = 0, radius: float = 1.0) -> Mesh:
    """One entry point for every sphere point set, by approximate point count ``n``.

    Resolution rule: the discrete parameter whose point count is closest to ``n`` in ratio
    (minimising |log(N / n)|; ties go to the coarser one):

    * ``"icosphere"``: level L >= 0 with N = 10 4^L + 2 (so n/2 < N < 2 n roughly).
    * ``"equiangular"``, ``"gauss"``: nlat >= 2 with nlon = 2 nlat, N = 2 nlat^2.
    * ``"healpix"``: nside >= 1 with N = 12 nside^2.
    * ``"fibonacci"``, ``"random"`` (uses ``seed``): exactly n points.

    Every returned mesh has ``field_data["sphere"] = [0, 0, 0, R]`` and a ``source`` such as
    ``"<icosphere level 3, 642 points>"``.

    Args:
        kind: one of :data:`SPHERE_KINDS`.
        n: approximate number of points, >= 4.
        seed: random seed (``"random"`` only).
        radius: R.

    Raises:
        InputError: unknown kind (the message lists the kinds), n < 4.
    """
    if kind not in SPHERE_KINDS:
        raise InputError(f"unknown sphere point kind {kind!r}; kinds: {', '.join(SPHERE_KINDS)}")
    n = _int_arg("n", n, 4)
    if kind == "icosphere":
        level = _closest_log({L: 10 * 4**L + 2 for L in range(11)}, n)
        return icosphere(level, radius)
    if kind in ("equiangular", "gauss"):
        base = max(2, int(math.sqrt(n / 2.0)))
        nlat = _closest_log({k: 2 * k * k for k in (base - 1, base, base + 1) if k >= 2}, n)
        return latlon_grid(nlat, 2 * nlat, kind, radius)
    if kind == "healpix":
        base = max(1, int(math.sqrt(n / 12.0)))
        nside = _closest_log({k: 12 * k * k for k in (base - 1, base, base + 1) if k >= 1}, n)
        return healpix_like(nside, radius)
    if kind == "fibonacci":
        return fibonacci_sphere(n, radius)
    return random_sphere(n, seed, radius)


# ---------------------------------------------------------------------------- coordinates
def to_lonlat(points) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (radians) of points on a sphere about the origin.

    lon = atan2(y, x) mapped into [-pi, pi) (pi becomes -pi); lat = atan2(z, hypot(x, y)) in
    [-pi/2, pi/2]. At the poles (x = y = 0) lon = 0.

    Args:
        points: [..., 3].

    Returns:
        (lon [...], lat [...]).
    """
    p = _points3(points)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    rho = np.hypot(x, y)
    lon = np.where(rho == 0, 0.0, np.arctan2(y, x))
    lon = np.where(lon >= np.pi, lon - 2.0 * np.pi, lon)
    return lon, np.arctan2(z, rho)


def from_lonlat(lon, lat, radius: float = 1.0) -> np.ndarray:
    """Points R (cos lat cos lon, cos lat sin lon, sin lat).

    Args:
        lon, lat: [...] radians (broadcast together).
        radius: R.

    Returns:
        [..., 3].
    """
    R = _radius_arg(radius)
    lon, lat = np.broadcast_arrays(np.asarray(lon, dtype=np.float64),
                                   np.asarray(lat, dtype=np.float64))
    cl = np.cos(lat)
    return R * np.stack([cl * np.cos(lon), cl * np.sin(lon), np.sin(lat)], axis=-1)


def geodesic_distance(a, b) -> np.ndarray:
    """Central angle between the directions of ``a`` and ``b`` (radians, in [0, pi]):
    atan2(|a x b|, a . b), accurate at small and near-pi angles (unlike arccos). Independent
    of the radius; multiply by R for the arc length.

    Args:
        a, b: [..., 3] (broadcast), not at the origin.

    Returns:
        [...] angles.
    """
    a, b = _unit(_points3(a, "a"), "a"), _unit(_points3(b, "b"), "b")
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def tangent_frame(points) -> tuple[np.ndarray, np.ndarray]:
    """Unit east and north vectors at points on a sphere about the origin.

    Away from the poles: east = (-sin lon, cos lon, 0), north = (-sin lat cos lon,
    -sin lat sin lon, cos lat), computed from the normalised point n = p / |p| as
    east = (-n_y, n_x, 0) / rho, north = (-n_z n_x, -n_z n_y, rho) / rho with
    rho = hypot(n_x, n_y); east x north = n.

    Poles: where rho <= 1e-9 (within 1e-9 rad of a pole, where longitude is undefined) the frame
    is the limit along the prime meridian lon = 0, made exactly tangent: east =
    normalise(e_y - (e_y . n) n), north = n x east. Exactly at the north pole (0, 0, 1) this
    is east = (0, 1, 0), north = (-1, 0, 0); at the south pole (0, 0, -1) east = (0, 1, 0),
    north = (1, 0, 0) -- i.e. the lon = 0 formulas at lat = +-pi/2. The frame is therefore
    discontinuous inside that tiny cap (no continuous tangent frame exists on the sphere).

    Args:
        points: [..., 3], not at the origin.

    Returns:
        (east [..., 3], north [..., 3]), orthonormal and tangent (orthogonal to p).
    """
    n = _unit(_points3(points))
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    rho = np.hypot(x, y)
    polar = rho <= _POLE_TOL
    safe = np.where(polar, 1.0, rho)
    east = np.stack([-y / safe, x / safe, np.zeros_like(x)], axis=-1)
    north = np.stack([-z * x / safe, -z * y / safe, rho], axis=-1)
    if np.any(polar):
        npol = n[polar]
        ey = np.zeros_like(npol)
        ey[:, 1] = 1.0
        e = ey - npol[:, 1:2] * npol
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        east[polar] = e
        north[polar] = np.cross(npol, e)
    return east, north


def log_map(x, y) -> np.ndarray:
    """Logarithmic map of the unit sphere: the tangent vector at x pointing along the
    geodesic to y, of length the central angle, in the (east, north) frame of x.

    With u = x/|x|, v = y/|y|: theta = atan2(|u x v|, u.v), w = d - (d.u) u with d = v - u
    (the component of v orthogonal to u, computed from the small difference d for accuracy;
    |w| = sin theta), and log = theta w / |w| expressed as (w.east, w.north) theta / |w| with
    :func:`tangent_frame` at x. For y close to x this is ((y - x).east, (y - x).north) / R up
    to O(|y - x|^2). y = x gives (0, 0). Exactly antipodal points (|w| <= 1e-12, u.v < 0),
    where every direction is a geodesic, give (0, pi): due north.

    Args:
        x: [..., 3] base points; y: [..., 3] target points (broadcast with x).

    Returns:
        [..., 2] (east, north) components; ``norm(log_map(x, y), axis=-1) ==
        geodesic_distance(x, y)``.
    """
    u = _unit(_points3(x, "x"), "x")
    v = _unit(_points3(y, "y"), "y")
    u, v = np.broadcast_arrays(u, v)
    d = v - u
    w = d - np.sum(d * u, axis=-1, keepdims=True) * u
    theta = np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), np.sum(u * v, axis=-1))
    east, north = tangent_frame(u)
    nw = np.linalg.norm(w, axis=-1)
    anti = (nw <= 1e-12) & (np.sum(u * v, axis=-1) < 0)
    scale = np.where(nw > 0, theta / np.where(nw > 0, nw, 1.0), 1.0)
    out = np.stack([np.sum(w * east, axis=-1), np.sum(w * north, axis=-1)], axis=-1)
    out = out * scale[..., None]
    if np.any(anti):
        out[anti] = np.stack([np.zeros(int(anti.sum())), theta[anti]], axis=-1)
    return out


def exp_map(x, v, radius: float | None = None) -> np.ndarray:
    """Exponential map, the inverse of :func:`log_map`: the point reached from x by the
    geodesic with initial direction t = v_e east + v_n north and length theta = |v| (radians):
    y = cos(theta) u + sin(theta) t / theta, with u = x / |x|, scaled by ``radius`` (default
    |x|).

    Args:
        x: [..., 3]; v: [..., 2] (east, north) tangent components (broadcast).
        radius: radius of the result (default |x|).

    Returns:
        [..., 3].
    """
    xp = _points3(x, "x")
    u = _unit(xp, "x")
    vv = np.asarray(v, dtype=np.float64)
    if vv.ndim < 1 or vv.shape[-1] != 2:
        raise InputError(f"v must have shape [..., 2], got {vv.shape}")
    east, north = tangent_frame(u)
    t = vv[..., :1] * east + vv[..., 1:] * north
    theta = np.linalg.norm(vv, axis=-1, keepdims=True)
    sinc = np.where(theta > 0, np.sin(theta) / np.where(theta > 0, theta, 1.0), 1.0)
    y = np.cos(theta) * u + sinc * t
    r = np.linalg.norm(xp, axis=-1, keepdims=True) if radius is None else _radius_arg(radius)
    return y * r
