"""Sphere geometry: point sets, exact and convergent quadrature, sphere detection, coordinates.

Closed forms used: the sphere integral of a monomial,
int_{S^2} x^a y^b z^c dA = 2 G((a+1)/2) G((b+1)/2) G((c+1)/2) / G((a+b+c+3)/2) for even a, b, c
(0 otherwise), and int_{S^2} exp(x) dA = 4 pi sinh(1).
"""
import math

import numpy as np
import pytest
from scipy.special import gamma

from graphop.errors import GraphopError, InputError, MeshError
from graphop.geometry.mesh import Mesh
from graphop.geometry.sphere import (SPHERE_KINDS, as_sphere_mesh, detect_sphere, exp_map,
                                     fibonacci_sphere, from_lonlat, geodesic_distance,
                                     healpix_like, icosphere, latlon_exact_degree, latlon_grid,
                                     log_map, point_set_weights, random_sphere, sphere_points,
                                     sphere_quadrature, tangent_frame, to_lonlat)

EXP_X = 4 * math.pi * math.sinh(1.0)


def mono_integral(a, b, c):
    if a % 2 or b % 2 or c % 2:
        return 0.0
    return 2 * gamma((a + 1) / 2) * gamma((b + 1) / 2) * gamma((c + 1) / 2) \
        / gamma((a + b + c + 3) / 2)


def max_monomial_error(mesh, degree):
    """max over all monomials of total degree ``degree`` of |Q(x^a y^b z^c) - exact|, on the
    unit sphere (points divided by R, weights by R^2)."""
    R = mesh.field_data["sphere"][3]
    p, w = mesh.points / R, mesh.weights / R**2
    err = 0.0
    for a in range(degree + 1):
        for b in range(degree + 1 - a):
            c = degree - a - b
            q = w @ (p[:, 0] ** a * p[:, 1] ** b * p[:, 2] ** c)
            err = max(err, abs(q - mono_integral(a, b, c)))
    return err


def test_monomial_closed_forms():
    assert mono_integral(0, 0, 0) == pytest.approx(4 * math.pi)
    assert mono_integral(2, 0, 0) == pytest.approx(4 * math.pi / 3)
    assert mono_integral(2, 2, 0) == pytest.approx(4 * math.pi / 15)
    assert mono_integral(4, 0, 0) == pytest.approx(4 * math.pi / 5)


# ------------------------------------------------------------------ weights sum to 4 pi R^2
@pytest.mark.parametrize("R", [1.0, 6.37])
@pytest.mark.parametrize("kind", SPHERE_KINDS)
def test_weights_sum_to_sphere_area(kind, R):
    m = sphere_points(kind, 500, seed=3, radius=R)
    assert isinstance(m, Mesh) and m.dim == 3
    assert m.weights.sum() == pytest.approx(4 * math.pi * R**2, rel=1e-13)
    assert (m.weights > 0).all()
    np.testing.assert_allclose(np.linalg.norm(m.points, axis=1), R, rtol=1e-14)
    np.testing.assert_array_equal(m.field_data["sphere"], [0, 0, 0, R])
    assert m.source.startswith("<") and f"{m.n_points} points" in m.source


@pytest.mark.parametrize("R", [1.0, 6.37])
def test_direct_constructors_weights(R):
    for m in (icosphere(2, R), latlon_grid(7, 11, "gauss", R), latlon_grid(6, kind="equiangular",
              radius=R), fibonacci_sphere(77, R), random_sphere(50, 1, R), healpix_like(3, R)):
        assert m.weights.sum() == pytest.approx(4 * math.pi * R**2, rel=1e-13), m.source


# ------------------------------------------------------------------ icosphere
@pytest.mark.parametrize("level", [0, 1, 3])
def test_icosphere_structure(level):
    m = icosphere(level)
    t = m.cells["triangle"]
    assert m.n_points == 10 * 4**level + 2 and len(t) == 20 * 4**level
    assert m.source == f"<icosphere level {level}, {m.n_points} points>"
    # closed surface: every edge in two triangles, Euler characteristic 2, no boundary
    assert m.n_points - len(m.edges()) + len(t) == 2
    assert not m.boundary.any()
    # outward orientation: (b - a) x (c - a) points away from the centre
    p = m.points
    nrm = np.cross(p[t[:, 1]] - p[t[:, 0]], p[t[:, 2]] - p[t[:, 0]])
    assert (np.einsum("ij,ij->i", nrm, p[t].mean(axis=1)) > 0).all()
    # the flat area is smaller than the spherical weights' total
    assert m.measure < m.weights.sum()


def test_icosphere_second_order_convergence():
    """Spherical lumped mass on exp(x): measured errors levels 1..5 are 4.1e-8, 8.4e-8,
    2.7e-8, 7.0e-9, 1.8e-9 (level 1 is pre-asymptotic: icosahedral symmetry cancels every
    harmonic of degree < 6), ratios 3.15, 3.79, 3.95 -> 4, order in the spacing 1.67, 1.93,
    1.98 -> 2."""
    errs, h = [], []
    for level in range(1, 6):
        m = icosphere(level)
        errs.append(abs(m.weights @ np.exp(m.points[:, 0]) - EXP_X))
        h.append(m.spacing()["mean"])
    errs, h = np.array(errs), np.array(h)
    ratios = errs[1:-1] / errs[2:]  # levels 2->3, 3->4, 4->5
    assert ratios[0] > 2.5
    assert 3.5 < ratios[1] < 4.5 and 3.7 < ratios[2] < 4.3
    order = np.log(errs[3] / errs[4]) / np.log(h[3] / h[4])
    assert 1.85 < order < 2.15
    assert errs[-1] < 3e-9


def test_icosphere_radius_scaling():
    m1, m2 = icosphere(2), icosphere(2, radius=6.37)
    np.testing.assert_allclose(m2.points, 6.37 * m1.points, rtol=1e-15)
    np.testing.assert_allclose(m2.weights, 6.37**2 * m1.weights, rtol=1e-13)


# ------------------------------------------------------------------ lat-lon grids
@pytest.mark.parametrize("nlat", [5, 6, 8])
def test_gauss_grid_exact_degree(nlat):
    m = latlon_grid(nlat, kind="gauss")
    D = latlon_exact_degree(nlat, kind="gauss")
    assert D == 2 * nlat - 1 and m.n_points == 2 * nlat**2
    for d in range(D + 1):
        assert max_monomial_error(m, d) < 1e-13, d
    # one degree past fails (z^(2 nlat) is the culprit; errors 1.8e-2, 4.6e-3, 2.9e-4)
    assert max_monomial_error(m, D + 1) > 1e-5


@pytest.mark.parametrize("nlat,D", [(5, 5), (6, 5), (7, 7), (8, 7)])
def test_equiangular_grid_exact_degree(nlat, D):
    m = latlon_grid(nlat, kind="equiangular")
    assert latlon_exact_degree(nlat, kind="equiangular") == D
    lon, lat = to_lonlat(m.points)
    # cell-centred latitudes, no poles
    expected = -np.pi / 2 + (np.arange(nlat) + 0.5) * np.pi / nlat
    np.testing.assert_allclose(np.sort(np.unique(np.round(lat, 12))), expected, atol=1e-12)
    for d in range(D + 1):
        assert max_monomial_error(m, d) < 1e-13, d
    assert max_monomial_error(m, D + 1) > 1e-4  # measured 3.7e-2 .. 1.6e-3


def test_latlon_longitude_bound_and_scaled_radius():
    # nlon = 5 caps the degree at 4 even though 8 Gauss latitudes reach 15
    m = latlon_grid(8, nlon=5, kind="gauss")
    assert latlon_exact_degree(8, 5, "gauss") == 4
    assert max(max_monomial_error(m, d) for d in range(5)) < 1e-13
    assert max_monomial_error(m, 5) > 1e-3
    R = 6.37
    g = latlon_grid(6, kind="gauss", radius=R)
    x = g.points[:, 0]
    assert g.weights @ x**2 == pytest.approx(R**4 * 4 * math.pi / 3, rel=1e-13)
    assert g.weights @ (x**2 * g.points[:, 1] ** 2) == pytest.approx(
        R**6 * 4 * math.pi / 15, rel=1e-13)


def test_latlon_layout():
    nlat, nlon = 4, 6
    m = latlon_grid(nlat, nlon, "gauss")
    lon, lat = to_lonlat(m.points)
    lat, lon = lat.reshape(nlat, nlon), np.mod(lon, 2 * np.pi).reshape(nlat, nlon)
    assert (np.diff(lat[:, 0]) < 0).all()  # north first
    np.testing.assert_allclose(lat, lat[:, :1] * np.ones((1, nlon)), atol=1e-15)
    np.testing.assert_allclose(lon[0], 2 * np.pi * np.arange(nlon) / nlon, atol=1e-14)
    z, _ = np.polynomial.legendre.leggauss(nlat)
    np.testing.assert_allclose(np.sin(lat[:, 0]), z[::-1], atol=1e-15)


# ------------------------------------------------------------------ Voronoi point sets, healpix
def test_fibonacci_voronoi_convergence():
    """Measured |Q(exp x) - 4 pi sinh 1|: n = 100: 6.5e-4, 1600: 3.2e-5, 6400: 6.1e-6
    (about n^-1.3)."""
    e = {}
    for n in (100, 1600, 6400):
        m = fibonacci_sphere(n)
        assert m.n_points == n
        e[n] = abs(m.weights @ np.exp(m.points[:, 0]) - EXP_X)
    assert e[1600] < e[100] / 8 and e[6400] < e[1600] / 2.5
    assert e[6400] < 2e-5


def test_random_voronoi_convergence():
    """Mean over 3 seeds of |Q(exp x) - exact|: n = 400 about 1e-2, 6400 about 1.5e-4
    (Voronoi weights converge far faster than the Monte Carlo n^-1/2)."""
    def mean_err(n):
        return np.mean([abs((m := random_sphere(n, seed=s)).weights @ np.exp(m.points[:, 0])
                            - EXP_X) for s in range(3)])
    e400, e6400 = mean_err(400), mean_err(6400)
    assert e6400 < e400 / 16  # Monte Carlo would give a factor 4
    assert e6400 < 1e-3


def test_random_sphere_seeded_and_uniform():
    a, b, c = random_sphere(2000, seed=1), random_sphere(2000, seed=1), random_sphere(2000, 2)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.allclose(a.points, c.points)
    # uniform: the mean point is O(n^-1/2) from 0, the second moments are 1/3
    assert np.abs(a.points.mean(axis=0)).max() < 4 / math.sqrt(2000)
    np.testing.assert_allclose((a.points**2).mean(axis=0), 1 / 3, atol=0.04)


def test_healpix_like():
    """Equal weights; equal-weight quadrature error for exp(x) falls by 4.0 per doubling of
    nside (0.0259, 0.00634, 0.00157 for nside 2, 4, 8)."""
    errs = []
    for nside in (2, 4, 8):
        m = healpix_like(nside)
        assert m.n_points == 12 * nside**2
        np.testing.assert_array_equal(m.weights, np.full(m.n_points, 4 * math.pi / m.n_points))
        assert len(np.unique(np.round(m.points, 12), axis=0)) == m.n_points
        z = np.unique(np.round(m.points[:, 2], 12))
        assert len(z) == 4 * nside - 1
        errs.append(abs(m.weights @ np.exp(m.points[:, 0]) - EXP_X))
    r = np.array(errs[:-1]) / np.array(errs[1:])
    assert ((3.7 < r) & (r < 4.3)).all()
    # equal area: the cap above each ring's centre latitude z_i (area 2 pi (1 - z_i)) holds
    # the points of the rings above plus half of ring i
    for nside in (3, 4):
        m = healpix_like(nside)
        z = m.points[:, 2]
        for zi in np.unique(np.round(z, 12)):
            above = (z > zi + 1e-9).sum() + 0.5 * (np.abs(z - zi) < 1e-9).sum()
            assert above * m.weights[0] == pytest.approx(2 * math.pi * (1 - zi), abs=1e-11)


def test_point_set_weights_errors_and_scaling():
    u = fibonacci_sphere(200).points
    w = point_set_weights(u)
    np.testing.assert_allclose(point_set_weights(3 * u), 9 * w, rtol=1e-12)
    c = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(point_set_weights(2 * u + c, center=c), 4 * w, rtol=1e-12)
    with pytest.raises(MeshError, match="duplicate"):
        point_set_weights(np.vstack([u, u[5:6]]))
    with pytest.raises(MeshError, match="not on the sphere"):
        point_set_weights(u * np.linspace(1, 1.1, len(u))[:, None])
    with pytest.raises(MeshError):
        point_set_weights(u[:3])
    circle = from_lonlat(np.linspace(0, 6, 10), np.zeros(10)) + [0, 0, 1e-300]
    with pytest.raises(MeshError):
        point_set_weights(circle)


def test_sphere_quadrature_cells_and_quads():
    m = icosphere(3)
    w_dict = sphere_quadrature(m.points, m.cells)
    w_arr = sphere_quadrature(m.points, m.cells["triangle"], radius=1.0, center=np.zeros(3))
    np.testing.assert_allclose(w_dict, m.weights, rtol=1e-12)
    np.testing.assert_allclose(w_arr, m.weights, rtol=1e-12)
    wv = sphere_quadrature(m.points)  # Voronoi
    assert wv.sum() == pytest.approx(4 * math.pi, rel=1e-13)
    assert abs(wv @ np.exp(m.points[:, 0]) - EXP_X) < 1e-4
    # quads: a cube surface, k x k quads a face, projected to the sphere
    k = 6
    s = np.linspace(-1, 1, k + 1)
    A, B = np.meshgrid(s, s, indexing="ij")
    idx = np.arange((k + 1) ** 2).reshape(k + 1, k + 1)
    q = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    pts, quads = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            face = np.zeros((A.size, 3))
            face[:, axis] = sign
            others = [i for i in range(3) if i != axis]
            face[:, others[0]], face[:, others[1]] = A.ravel(), B.ravel()
            quads.append(q + sum(len(p) for p in pts))
            pts.append(face)
    pts = np.vstack(pts)
    pts = 2.5 * pts / np.linalg.norm(pts, axis=1, keepdims=True)
    wq = sphere_quadrature(pts, {"quad": np.vstack(quads)}, radius=2.5, center=np.zeros(3))
    assert wq.sum() == pytest.approx(4 * math.pi * 2.5**2, rel=1e-12)


# ------------------------------------------------------------------ detection
def test_detect_sphere_shifted_scaled():
    c, R = np.array([1.5, -2.0, 0.3]), 3.7
    u = fibonacci_sphere(300).points
    found = detect_sphere(c + R * u)
    assert found is not None
    np.testing.assert_allclose(found[0], c, atol=1e-12)
    assert found[1] == pytest.approx(R, rel=1e-13)
    # a hemisphere only, and noise within rtol, are still a sphere
    assert detect_sphere(c + R * u[u[:, 2] > 0]) is not None
    noisy = c + R * u * (1 + 1e-8 * np.random.default_rng(0).standard_normal((300, 1)))
    assert detect_sphere(noisy) is not None
    # centred at the origin -> centre exactly 0
    np.testing.assert_array_equal(detect_sphere(u)[0], 0.0)


def test_detect_sphere_rejects():
    u = fibonacci_sphere(300).points
    assert detect_sphere(u * [1, 1, 1 - 1e-4]) is None  # slightly squashed ellipsoid
    assert detect_sphere(u * [1, 1, 1 - 1e-4], rtol=1e-3) is not None
    assert detect_sphere(u[:3]) is None
    assert detect_sphere(u[:, :2]) is None  # 2D
    plane = np.column_stack([u[:, :2], np.full(300, 0.5)])
    assert detect_sphere(plane) is None
    tilted_circle = from_lonlat(np.linspace(0, 6, 20), np.zeros(20)) @ np.array(
        [[1, 0, 0], [0, 0.6, 0.8], [0, -0.8, 0.6]])
    assert detect_sphere(tilted_circle) is None
    cube = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    assert detect_sphere(cube + 0.01 * np.arange(8)[:, None] ** 2) is None


def test_as_sphere_mesh():
    c, R = np.array([0.2, 0.0, -1.0]), 2.0
    ico = icosphere(3)
    plain = Mesh(c + R * ico.points, ico.cells)  # flat lumped mass
    assert plain.weights.sum() < 4 * math.pi * R**2 * (1 - 1e-3)
    sph = as_sphere_mesh(plain)
    assert sph.weights.sum() == pytest.approx(4 * math.pi * R**2, rel=1e-12)
    np.testing.assert_allclose(sph.weights, R**2 * ico.weights, rtol=1e-9)
    np.testing.assert_allclose(sph.field_data["sphere"], [*c, R], atol=1e-12)
    cloud = as_sphere_mesh(Mesh.from_points(c + R * fibonacci_sphere(500).points))
    assert cloud.weights.sum() == pytest.approx(4 * math.pi * R**2, rel=1e-12)
    squashed = Mesh(ico.points * [1, 1, 0.99], ico.cells, source="squash.vtk")
    with pytest.raises(MeshError, match=r"squash\.vtk.*not on a sphere.*off it"):
        as_sphere_mesh(squashed)
    with pytest.raises(MeshError, match="2D"):
        as_sphere_mesh(Mesh.from_points(np.random.default_rng(0).random((20, 2))))


# ------------------------------------------------------------------ coordinates
def test_lonlat_roundtrip_and_ranges():
    p = random_sphere(500, seed=4, radius=6.37).points
    lon, lat = to_lonlat(p)
    assert (lon >= -np.pi).all() and (lon < np.pi).all()
    assert (np.abs(lat) <= np.pi / 2).all()
    np.testing.assert_allclose(from_lonlat(lon, lat, 6.37), p, atol=1e-13)
    lon2, lat2 = to_lonlat(np.array([[-1.0, 0.0, 0.0], [0, 0, 2.0], [0, 0, -3.0]]))
    np.testing.assert_array_equal(lon2, [-np.pi, 0.0, 0.0])
    np.testing.assert_allclose(lat2, [0, np.pi / 2, -np.pi / 2])


def test_geodesic_distance_accuracy():
    x = np.array([[1.0, 0, 0]])
    for t in (1e-10, 1e-6, 0.3, np.pi - 1e-7):
        y = np.array([[math.cos(t), math.sin(t), 0.0]]) * 6.37
        assert geodesic_distance(x, y)[0] == pytest.approx(t, rel=1e-9)
    assert geodesic_distance(x, -x)[0] == pytest.approx(np.pi, rel=1e-15)
    a, b = random_sphere(100, 1).points, random_sphere(100, 2).points
    np.testing.assert_allclose(geodesic_distance(a, b),
                               np.arccos(np.clip(np.sum(a * b, 1), -1, 1)), atol=1e-7)
    with pytest.raises(InputError):
        geodesic_distance(np.zeros((1, 3)), x)


def test_tangent_frame_everywhere_including_poles():
    eps = 1e-12
    p = np.vstack([random_sphere(300, seed=5).points, [[0, 0, 1], [0, 0, -1],
                   [eps, 0, 1], [0, -eps, -1], [3e-10, 3e-10, 1]], [[0, 0, 6.37]]])
    p = p * np.linspace(1, 6.37, len(p))[:, None]
    e, n = tangent_frame(p)
    u = p / np.linalg.norm(p, axis=1, keepdims=True)
    for v in (e, n):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-14)
        np.testing.assert_allclose(np.sum(v * u, 1), 0, atol=1e-14)
    np.testing.assert_allclose(np.sum(e * n, 1), 0, atol=1e-14)
    np.testing.assert_allclose(np.cross(e, n), u, atol=1e-14)
    # the closed forms away from the poles
    lon, lat = to_lonlat(p[:300])
    np.testing.assert_allclose(e[:300], np.column_stack([-np.sin(lon), np.cos(lon),
                                                         np.zeros(300)]), atol=1e-14)
    np.testing.assert_allclose(n[:300], np.column_stack(
        [-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)]), atol=1e-14)
    # the poles: the lon = 0 limit
    np.testing.assert_array_equal(e[300], [0, 1, 0])
    np.testing.assert_array_equal(n[300], [-1, 0, 0])
    np.testing.assert_array_equal(e[301], [0, 1, 0])
    np.testing.assert_array_equal(n[301], [1, 0, 0])
    np.testing.assert_allclose(e[302], [0, 1, 0], atol=1e-11)
    np.testing.assert_allclose(n[302], [-1, 0, 0], atol=1e-11)


def test_log_map():
    rng = np.random.default_rng(7)
    x = random_sphere(400, seed=8, radius=6.37).points
    y = random_sphere(400, seed=9, radius=6.37).points
    v = log_map(x, y)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), geodesic_distance(x, y), atol=1e-13)
    np.testing.assert_allclose(exp_map(x, v), y, atol=1e-12)
    # near points: the tangent-frame components of (y - x) / R, to O(delta^2)
    R = 6.37
    e, n = tangent_frame(x)
    for delta in (1e-3, 1e-6):
        t = rng.standard_normal((400, 2)) * delta
        yy = exp_map(x, t)
        np.testing.assert_allclose(log_map(x, yy), t, atol=1e-12 + 1e-9 * delta)
        d = (yy - x) / R
        lin = np.column_stack([np.sum(d * e, 1), np.sum(d * n, 1)])
        assert np.abs(lin - t).max() < 2 * delta**2
    # y == x -> 0; exactly antipodal -> length pi, due north; nearly antipodal keeps its way
    np.testing.assert_array_equal(log_map(x[:5], x[:5]), 0.0)
    anti = log_map(x[:5], -x[:5])
    np.testing.assert_allclose(anti, np.tile([0.0, np.pi], (5, 1)), atol=1e-15)
    t = np.array([[np.pi - 1e-6, 0.0], [0.0, -(np.pi - 1e-4)], [2.0, 2.0]])
    t[2] *= (np.pi - 1e-5) / np.linalg.norm(t[2])
    np.testing.assert_allclose(log_map(x[:3], exp_map(x[:3], t)), t, atol=1e-8)
    # from the north pole, moving towards lon = 0 is minus "north" (north = (-1, 0, 0) there)
    pole = np.array([[0, 0, 1.0]])
    np.testing.assert_allclose(log_map(pole, from_lonlat(0.0, np.pi / 2 - 0.2)[None]),
                               [[0.0, -0.2]], atol=1e-14)
    # broadcasting a single base point against many targets
    assert log_map(x[0], y).shape == (400, 2)


# ------------------------------------------------------------------ dispatcher and errors
@pytest.mark.parametrize("n", [100, 1000, 5000])
def test_sphere_points_counts(n):
    counts = {k: sphere_points(k, n).n_points for k in SPHERE_KINDS}
    assert 0.5 * n <= counts["icosphere"] <= 2 * n
    for k in ("equiangular", "gauss", "healpix"):
        assert abs(counts[k] / n - 1) < 0.25, (k, counts[k])
    assert counts["fibonacci"] == counts["random"] == n
    assert sphere_points("icosphere", 1000).source == "<icosphere level 3, 642 points>"
    assert sphere_points("gauss", 2048).source == "<gauss grid 32x64, 2048 points>"


def test_bad_inputs():
    with pytest.raises(InputError):
        icosphere(-1)
    with pytest.raises(GraphopError):
        icosphere(1.5)
    with pytest.raises(InputError, match="icosphere, equiangular, gauss"):
        sphere_points("cubed", 100)
    for kind in SPHERE_KINDS:
        with pytest.raises(InputError):
            sphere_points(kind, 3)
    with pytest.raises(InputError):
        fibonacci_sphere(3)
    with pytest.raises(InputError):
        random_sphere(2)
    with pytest.raises(InputError):
        latlon_grid(1)
    with pytest.raises(InputError):
        latlon_grid(8, kind="clenshaw")
    with pytest.raises(InputError):
        icosphere(2, radius=-1.0)
    with pytest.raises(InputError):
        healpix_like(0)
    with pytest.raises(InputError):
        tangent_frame(np.zeros((2, 2)))
    with pytest.raises(MeshError, match="duplicate"):
        point_set_weights(np.vstack([fibonacci_sphere(50).points] * 2))
