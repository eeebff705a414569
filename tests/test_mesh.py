"""Mesh core: quadrature against closed-form measures with measured convergence order, content
hash, boundary detection, point-cloud weights, normalisation, validation of bad input."""
import math
import subprocess
import sys

import numpy as np
import pytest

from graphop import Mesh, MeshError
from graphop.geometry.domains import mesh_ball, mesh_domain, mesh_sphere, structured_square
from graphop.geometry.mesh import AffineMap


def _orders(sizes, errors, dim):
    """Observed order in h ~ N^(-1/dim) between consecutive refinements."""
    return [math.log(errors[i] / errors[i + 1]) / math.log((sizes[i + 1] / sizes[i]) ** (1 / dim))
            for i in range(len(errors) - 1)]


@pytest.mark.parametrize("name,exact", [
    ("disk", math.pi),
    ("holes", math.pi * (1 - 0.25**2 - 2 * 0.2**2)),
])
def test_planar_quadrature_converges_second_order(name, exact):
    sizes, errors = [], []
    for n in (250, 1000, 4000):
        m = mesh_domain(name, n)
        assert m.weights.sum() == pytest.approx(m.measure, rel=1e-12)
        assert (m.weights > 0).all()
        sizes.append(m.n_points)
        errors.append(abs(m.weights.sum() - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[-1] < 2e-3 * exact
    assert min(_orders(sizes, errors, 2)) > 1.8  # chords of a circle: O(h^2)


def test_annulus_quadrature_converges_second_order():
    """The area deficits of the inscribed outer and inner polygons (pi h^2 / 6 each at equal
    spacing) cancel, so the area is checked against a bound and the order is measured on the
    integral of r^2 (exact: pi / 2 (R^4 - r^4))."""
    sizes, errors = [], []
    for n in (250, 1000, 4000):
        m = mesh_domain("annulus", n, r_inner=0.5, r_outer=1.0)
        h = m.spacing()["median"]
        assert abs(m.weights.sum() - 0.75 * math.pi) < math.pi * h**2 / 6
        sizes.append(m.n_points)
        errors.append(abs((m.weights * (m.points**2).sum(1)).sum() - math.pi / 2 * (1 - 0.5**4)))
    orders = _orders(sizes, errors, 2)
    assert min(orders) > 1.8, orders
    assert errors[-1] < 1e-4


def test_sphere_surface_quadrature_converges():
    sizes, errors = [], []
    for s in (2, 3, 4):
        m = mesh_sphere(s)
        assert m.is_surface and m.dim == 3 and m.top_dim == 2
        assert not m.boundary.any()  # closed surface
        sizes.append(m.n_points)
        errors.append(abs(m.weights.sum() - 4 * math.pi))
    orders = _orders(sizes, errors, 2)
    assert min(orders) > 1.9, orders
    assert errors[-1] < 0.02


def test_ball_volume_converges():
    sizes, errors = [], []
    for n in (400, 3200):
        m = mesh_ball(n, seed=0)
        assert m.weights.sum() == pytest.approx(m.measure, rel=1e-12)
        assert m.warnings() == []
        sizes.append(m.n_points)
        errors.append(abs(m.weights.sum() - 4 / 3 * math.pi))
    assert _orders(sizes, errors, 3)[0] > 1.5
    assert errors[-1] < 0.03


def test_lumped_mass_integrates_linear_functions_exactly_on_the_square():
    m = mesh_domain("square", 500)
    x, y = m.points.T
    # lumped mass is exact for constants; for linear f, error is O(h^2) only at the boundary.
    assert (m.weights * 1.0).sum() == pytest.approx(1.0, rel=1e-13)
    assert (m.weights * x).sum() == pytest.approx(0.5, abs=1e-3)
    quads = structured_square(6, quad=True)
    assert quads.weights.sum() == pytest.approx(1.0, rel=1e-13)
    # interior nodes of a uniform quad grid carry exactly one cell area
    interior = ~quads.boundary
    assert np.allclose(quads.weights[interior], 1 / 25)


_HASH_SCRIPT = ("from graphop.geometry.domains import mesh_domain; "
                "print(mesh_domain('disk', 300).hash)")


def test_hash_stable_across_processes_and_sensitive_to_points():
    m = mesh_domain("disk", 300)
    out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == m.hash
    assert len(m.hash) == 16
    moved = m.points.copy()
    moved[7, 0] += 1e-9
    m2 = Mesh(moved, m.cells)
    assert m2.hash != m.hash
    assert Mesh(m.points.copy(), {k: v.copy() for k, v in m.cells.items()}).hash == m.hash


def test_boundary_detection():
    sq = structured_square(5)
    x, y = sq.points.T
    on_edge = np.isclose(x, 0) | np.isclose(x, 1) | np.isclose(y, 0) | np.isclose(y, 1)
    assert np.array_equal(sq.boundary, on_edge)
    assert sq.boundary.sum() == 16
    disk = mesh_domain("disk", 600)
    r = np.linalg.norm(disk.points, axis=1)
    # boundary facets (edges used by one triangle) are exactly the points on the circle
    from graphop.geometry.cells import boundary_facets
    facet_points = np.unique(np.concatenate([f.ravel() for f in boundary_facets(disk.cells)]))
    assert np.array_equal(facet_points, np.flatnonzero(np.isclose(r, 1.0)))
    ann = mesh_domain("annulus", 600)
    ra = np.linalg.norm(ann.points, axis=1)
    assert np.array_equal(np.sort(ann.boundary_sets["inner"]), np.flatnonzero(np.isclose(ra, 0.5)))
    assert np.array_equal(np.sort(ann.boundary_sets["outer"]), np.flatnonzero(np.isclose(ra, 1.0)))
    tet = mesh_ball(400)
    rb = np.linalg.norm(tet.points, axis=1)
    assert np.array_equal(tet.boundary, np.isclose(rb, 1.0))


def test_from_points_density_estimate_and_exact_measure():
    rng = np.random.default_rng(0)
    pts = rng.random((4000, 2))
    pc = Mesh.from_points(pts)
    assert pc.top_dim == 0 and pc.cells == {}
    assert pc.weights.sum() == pytest.approx(1.0, rel=0.1)  # k-NN estimate of the area
    pcm = Mesh.from_points(pts, measure=1.0)
    assert pcm.weights.sum() == pytest.approx(1.0, rel=1e-12)
    f = np.sin(math.pi * pts[:, 0]) * pts[:, 1]  # exact integral 1/pi
    assert (pcm.weights * f).sum() == pytest.approx(1 / math.pi, rel=0.03)
    given = Mesh.from_points(pts, weights=np.full(4000, 2.0))
    assert np.all(given.weights == 2.0)
    ball = rng.normal(size=(3000, 3))
    ball = ball / np.linalg.norm(ball, axis=1, keepdims=True) * rng.random((3000, 1)) ** (1 / 3)
    assert Mesh.from_points(ball).weights.sum() == pytest.approx(4 / 3 * math.pi, rel=0.15)


def test_normalisation_round_trip():
    m = mesh_domain("lshape", 400, size=2.0)
    m = m.with_point_data(u=m.points[:, 0] ** 2)
    n, aff = m.normalized()
    lo, hi = n.bbox
    assert np.allclose(lo, 0) and hi.max() == pytest.approx(1.0)
    assert np.allclose(aff.inverse(n.points), m.points, atol=1e-14)
    assert n.weights.sum() == pytest.approx(m.weights.sum() / aff.scale**2, rel=1e-12)
    assert n.measure == pytest.approx(n.weights.sum(), rel=1e-12)
    aff2 = AffineMap.from_dict(aff.to_dict())
    assert aff2 == aff
    assert np.array_equal(n.point_data["u"], m.point_data["u"])
    n2, same = m.normalized(aff)
    assert same is aff and np.array_equal(n2.points, n.points)


def test_two_d_mesh_stored_with_zero_z_is_reduced():
    m = structured_square(3)
    m3 = Mesh(np.column_stack([m.points, np.zeros(m.n_points)]), m.cells)
    assert m3.dim == 2 and m3.hash == Mesh(m.points, m.cells).hash


@pytest.mark.parametrize("make,message", [
    (lambda p, c: Mesh(np.where(np.arange(len(p))[:, None] == 3, np.nan, p), c),
     "1 point(s) have NaN or inf coordinates (first: point 3)"),
    (lambda p, c: Mesh(p, {"triangle": np.vstack([c["triangle"], [[0, 1, 99]]])}),
     "triangle cells index point 99 but the mesh has 9 points"),
    (lambda p, c: Mesh(p, {"triangle": np.array([[0, 1, 2], [2, 1, 0]])}),
     "all 2 cell(s) have zero area, so every quadrature weight is 0"),
    (lambda p, c: Mesh(p, c, {"u": np.zeros(5)}),
     "point_data 'u' has length 5, expected 9"),
    (lambda p, c: Mesh(np.zeros((0, 2)), {}),
     "no points"),
    (lambda p, c: Mesh(p[:, :1], c), "points must have shape [N, 2] or [N, 3]"),
])
def test_bad_input_raises_mesh_error(make, message):
    sq = structured_square(3)  # points 0, 1, 2 lie on one line: [[0,1,2]] has zero area
    with pytest.raises(MeshError) as exc:
        make(sq.points, {"triangle": sq.cells["triangle"]})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_few_zero_area_cells_are_accepted_with_one_warning_and_carry_no_weight():
    sq = structured_square(3)  # 9 points, the unit square
    good = sq.cells["triangle"]
    slivers = np.array([[0, 1, 2], [4, 4, 5]])  # collinear points; a repeated vertex
    from graphop.errors import MeshWarning

    with pytest.warns(MeshWarning) as rec:
        m = Mesh(sq.points, {"triangle": np.vstack([good, slivers])}, source="cad.stl")
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg == (f"cad.stl: 2 triangle cell(s) have zero area and carry no quadrature weight "
                   f"(first: cell {len(good)})")
    # the quadrature is that of the good cells: every weight, and the total area
    np.testing.assert_allclose(m.weights, Mesh(sq.points, {"triangle": good}).weights,
                               rtol=0, atol=1e-15)
    assert m.weights.sum() == pytest.approx(1.0, rel=1e-14) and m.measure == pytest.approx(1.0)
    assert any("2 triangle cell(s) have zero area" in w for w in m.warnings())


def test_zero_volume_tetra_among_good_ones_and_an_all_flat_mesh():
    from graphop.errors import MeshWarning

    ball = mesh_ball(60)
    tets = ball.cells["tetra"]
    flat = np.array([[0, 0, 1, 2]])
    with pytest.warns(MeshWarning, match=r"1 tetra cell\(s\) have zero volume"):
        m = Mesh(ball.points, {"tetra": np.vstack([flat, tets])})
    np.testing.assert_allclose(m.weights, ball.weights, atol=1e-15)
    with pytest.raises(MeshError, match=r"all 1 cell\(s\) have zero volume"):
        Mesh(ball.points, {"tetra": flat})


def test_read_only_arrays_from_a_reader_become_writable_copies():
    import warnings as _w

    import torch

    sq = structured_square(3)
    pts = sq.points.copy()
    pts.flags.writeable = False
    a = np.arange(9.0)
    a.flags.writeable = False
    m = Mesh(pts, sq.cells, {"a": a})
    assert m.points.flags.writeable and m.point_data["a"].flags.writeable
    import torch_geometric.data  # noqa: F401  (its own import-time warnings are not ours)

    with _w.catch_warnings():
        _w.simplefilter("error", UserWarning)  # torch warns about non-writable arrays
        d = m.to_data(fields=["a"])
    assert torch.equal(d.a[:, 0], torch.arange(9.0))
