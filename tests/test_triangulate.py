"""Cells for bare planar point clouds (graphop.geometry.triangulate) and their use by the
integral operators: a cloud integrates the way a mesh of the same points does."""
import numpy as np
import pytest
import torch

from graphop import Mesh
from graphop.geometry.cells import cell_measures
from graphop.geometry.domains import mesh_domain
from graphop.geometry.triangulate import CLOUD_ALPHA, triangulate_cloud

torch.set_num_threads(1)


def _circumradius(p, t):
    a, b, c = p[t[:, 0]], p[t[:, 1]], p[t[:, 2]]
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    la, lb, lc = (np.linalg.norm(b - c, axis=1), np.linalg.norm(a - c, axis=1),
                  np.linalg.norm(a - b, axis=1))
    return la * lb * lc / (2 * np.abs(cross)), cross


def _area(p, t):
    return cell_measures(p, "triangle", t).sum()


def _hull_area(p):
    from scipy.spatial import ConvexHull

    return ConvexHull(p).volume


@pytest.mark.parametrize("kind", ["uniform", "graded"])
def test_a_convex_cloud_is_covered_and_every_kept_triangle_is_local(kind):
    rng = np.random.default_rng(0)
    p = rng.random((3000, 2))
    if kind == "graded":                      # density varies ~100x across the square
        p[:, 0] = p[:, 0] ** 4
    t = triangulate_cloud(p)
    radius, cross = _circumradius(p, t)
    assert (cross > 0).all()                                  # counter-clockwise
    from graphop.geometry.neighbors import knn_distances

    h = knn_distances(p, 6)[:, -1]
    assert (radius <= CLOUD_ALPHA * h[t].mean(1) * (1 + 1e-12)).all()
    # what is dropped is the slivers along the hull: a sliver of the hull area at most
    assert _area(p, t) / _hull_area(p) > (0.98 if kind == "uniform" else 0.97)
    assert len(np.unique(t)) > 0.99 * len(p)


def test_gaps_wider_than_the_spacing_stay_empty():
    rng = np.random.default_rng(1)
    # an L-shape [0,1]^2 minus [0.5,1]^2 and an annulus 0.3 < r < 1: random interior points
    p = rng.random((6000, 2))
    lshape = p[~((p[:, 0] > 0.5) & (p[:, 1] > 0.5))]
    t = triangulate_cloud(lshape)
    centroid = lshape[t].mean(1)
    inside_notch = (centroid[:, 0] > 0.5 + 0.03) & (centroid[:, 1] > 0.5 + 0.03)
    assert not inside_notch.any()
    assert _area(lshape, t) == pytest.approx(0.75, rel=0.03)
    q = rng.uniform(-1, 1, (8000, 2))
    r = np.linalg.norm(q, axis=1)
    ring = q[(r > 0.3) & (r < 1)]
    t = triangulate_cloud(ring)
    assert np.linalg.norm(ring[t].mean(1), axis=1).min() > 0.27
    assert _area(ring, t) == pytest.approx(np.pi * (1 - 0.09), rel=0.03)


def test_degenerate_clouds_give_none_or_skip_points():
    assert triangulate_cloud(np.zeros((2, 2))) is None
    line = np.stack([np.linspace(0, 1, 20), np.linspace(0, 2, 20)], 1)
    assert triangulate_cloud(line) is None
    assert triangulate_cloud(np.zeros((10, 3))) is None        # 3D: not triangulated
    rng = np.random.default_rng(2)
    p = rng.random((500, 2))
    dup = np.concatenate([p, p[:50]])                          # exact duplicates
    t = triangulate_cloud(dup)
    assert t is not None and (_circumradius(dup, t)[1] > 0).all()
    assert _area(dup, t) == pytest.approx(_area(p, triangulate_cloud(p)), rel=1e-9)


def _gno(quadrature="cells", seed=0):
    from graphop.models import LocalGNO

    torch.manual_seed(seed)
    return LocalGNO(1, 1, width=8, n_layers=2, latent_shape=(12, 12), modes=(4, 4),
                    encoder_radius=0.1, disco_radius=0.12, diff_kwargs={"smoothing_radius": 0.12},
                    quadrature=quadrature).double().eval()


def _pair(domain):
    """A mesh of ``domain`` in the unit square, and its nodes as a bare cloud, with an input
    that has a jump."""
    m = mesh_domain(domain, 1500, seed=4)
    m = Mesh(m.points / (2 if domain == "lshape" else 1), m.cells)
    p = m.points[:, :2]
    x = torch.tensor(np.sin(4 * p[:, 0]) * np.cos(3 * p[:, 1]) + (p[:, 0] > 0.3))[:, None]
    mesh = m.to_data(dtype=torch.float64)
    cloud = Mesh.from_points(p, measure=m.measure).to_data(dtype=torch.float64)
    mesh.x, cloud.x = x, x
    w = mesh.weight[:, None]

    def rel(u, v):   # relative to the variation of v (an untrained model's output is mostly
        vc = v - (w * v).sum(0) / w.sum()             # its bias)
        return float(torch.sqrt((w * (u - v) ** 2).sum() / (w * vc ** 2).sum()))

    return mesh, cloud, rel


@pytest.mark.parametrize("domain", ["square", "lshape"])
def test_a_cloud_of_a_meshs_nodes_integrates_as_the_mesh(domain):
    """A Delaunay mesh's nodes without its cells: on a convex domain the filtered Delaunay
    triangles are the mesh's own, so DISCO gives the mesh's output; on the L-shape a few
    triangles bridge the re-entrant corner (measured: DISCO 3.9% from the mesh's output,
    against 12.6% with nodal sums and the cloud's k-NN weights, the fallback before clouds had
    cells; the differential branch 2.6% against 5.7%)."""
    from graphop.layers import DISCOConv, DifferentialConv

    mesh, cloud, rel = _pair(domain)
    torch.manual_seed(0)
    pairs = [(DISCOConv(1, 4, radius=0.12), DISCOConv(1, 4, radius=0.12, quadrature="points")),
             (DifferentialConv(1, 4, smoothing_radius=0.12),
              DifferentialConv(1, 4, smoothing_radius=0.12, quadrature="points"))]
    for cells, points in pairs:
        points.load_state_dict(cells.state_dict())
        cells.double(), points.double()
        with torch.no_grad():
            ref = cells(mesh.x, mesh)
            e_cells, e_points = rel(cells(cloud.x, cloud), ref), rel(points(cloud.x, cloud), ref)
        if domain == "square":
            assert e_cells < 0.005 and e_points > 0.04
        else:
            assert e_cells < 0.06 and e_points > 2 * e_cells


def test_the_default_model_on_a_cloud_of_a_meshs_nodes():
    """The whole LocalGNO (fixed random parameters) on the L-shape: 8.4% from the mesh's
    output against 18% with nodal sums (measured)."""
    from graphop.layers.sparse import operator_cache

    mesh, cloud, rel = _pair("lshape")
    operator_cache.clear()
    with torch.no_grad():
        ref = _gno()(mesh)
        e_cells, e_points = rel(_gno()(cloud), ref), rel(_gno("points")(cloud), ref)
    assert e_cells < 0.12 and e_points > 1.5 * e_cells


# ---------------------------------------------------------------------------- tori
def _torus_cloud(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(0, 2 * np.pi, (n, 2)), 2 * np.pi
    if kind == "graded":                              # density varies ~100x along x
        u = rng.random((n, 2))
        return np.c_[u[:, 0] ** 3, u[:, 1]], 1.0
    if kind == "rectangle":                           # a 6:1 box
        return rng.random((n, 2)) * [3.0, 0.5], np.array([3.0, 0.5])
    m = int(round(np.sqrt(n)))                        # a regular grid: every square cocircular
    g = np.arange(m) / m
    x, y = np.meshgrid(g, g)
    return np.c_[x.ravel(), y.ravel()], 1.0


@pytest.mark.parametrize("kind", ["uniform", "grid", "graded", "rectangle"])
@pytest.mark.parametrize("n", [64, 4096])
def test_a_torus_cloud_is_tiled_once(kind, n):
    """The periodic triangulation covers the torus once: on a uniform cloud or a grid it has
    exactly 2N triangles (Euler's formula on the torus: T = 2V), their unwrapped areas are
    positive and sum to the box's area (a missing or doubled triangle would show), and the
    hat functions' integrals (the lumped mass) sum to it too."""
    from graphop.geometry.cells import interpolating_quadrature
    from graphop.geometry.triangulate import triangulate_periodic

    p, L = _torus_cloud(kind, n)
    t = triangulate_periodic(p, L)
    if kind == "rectangle" and n == 64:   # spacing ~1/3 of the short side: cannot tile it
        assert t is None
        return
    assert len({tuple(sorted(r)) for r in t.tolist()}) == len(t)
    x, w, B = interpolating_quadrature(p, {"triangle": t}, box=L)
    assert ((x >= 0) & (x < L)).all() and (w > 0).all()
    area = float(np.prod(np.broadcast_to(L, (2,))))
    if kind == "graded":          # the filter drops a few slivers where the density changes
        assert 2 * n * 0.99 <= len(t) <= 2 * n
        assert w.sum() == pytest.approx(area, rel=2e-3)
    else:
        assert len(t) == 2 * n
        assert w.sum() == pytest.approx(area, rel=1e-12)
    assert (B.T @ w).sum() == pytest.approx(w.sum(), rel=1e-12)


def test_a_torus_triangulation_moves_with_the_cloud():
    """Translating the cloud around the torus (and wrapping it) gives the same triangles, and
    their quadrature integrates a smooth periodic function to second order where the nodal
    1/N sums of a random cloud are a Monte Carlo estimate."""
    from graphop.geometry.cells import interpolating_quadrature
    from graphop.geometry.triangulate import triangulate_periodic

    p, L = _torus_cloud("uniform", 2000, seed=3)
    same = {tuple(sorted(r)) for r in triangulate_periodic(p, L).tolist()}
    moved = np.mod(p + np.array([2.5, -4.0]), L)
    assert {tuple(sorted(r)) for r in triangulate_periodic(moved, L).tolist()} == same

    def f(q):
        return np.exp(np.sin(q[:, 0])) * (1 + np.cos(q[:, 1]) ** 2)
    from scipy.special import i0
    exact = 2 * np.pi * i0(1.0) * 3 * np.pi        # int e^sin x dx * int 1 + cos^2 y dy
    errors = []
    for n in (1000, 4000, 16000):
        q, _ = _torus_cloud("uniform", n, seed=n)
        x, w, B = interpolating_quadrature(q, {"triangle": triangulate_periodic(q, L)}, box=L)
        errors.append(abs(w @ (B @ f(q)) - exact) / exact)
        nodal = abs(f(q).mean() * L * L - exact) / exact
    assert errors[2] < 0.15 * errors[0] and errors[2] < 2e-5   # ~ N^-1 (h^2)
    assert errors[2] < 0.1 * nodal                     # Monte Carlo: ~ N^-1/2 (here 1.1e-3)


def test_a_torus_mesh_s_cells_cross_the_seam():
    """A torus mesh whose cells join nodes across the seam (a periodic grid's triangles) is
    integrated over those cells unwrapped: the weights sum to the box and the quadrature
    points lie in the box."""
    from graphop.geometry.cells import interpolating_quadrature

    m, L = 8, 2.0
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    pts = np.c_[i.ravel(), j.ravel()] * (L / m)
    v = lambda a, b: (a % m) * m + (b % m)  # noqa: E731
    tri = np.concatenate([np.c_[v(i, j).ravel(), v(i + 1, j).ravel(), v(i + 1, j + 1).ravel()],
                          np.c_[v(i, j).ravel(), v(i + 1, j + 1).ravel(), v(i, j + 1).ravel()]])
    x, w, B = interpolating_quadrature(pts, {"triangle": tri}, box=L)
    assert w.sum() == pytest.approx(L * L, rel=1e-12)
    np.testing.assert_allclose(np.asarray(B.T @ w).ravel(), (L / m) ** 2, rtol=1e-12)
    assert ((x >= 0) & (x < L)).all()
    # without the box the seam's cells are long slivers across the whole grid
    assert interpolating_quadrature(pts, {"triangle": tri})[1].sum() > 1.5 * L * L


def test_a_torus_cloud_too_coarse_to_tile_keeps_nodal_sums():
    """Duplicates and near-duplicates still tile the torus; a handful of points or a line of
    points cannot, and give None (nodal sums) rather than a partial cover."""
    from graphop.geometry.cells import interpolating_quadrature
    from graphop.geometry.triangulate import triangulate_periodic
    from graphop.testing import near_duplicate_points

    rng = np.random.default_rng(0)
    base = rng.random((500, 2))
    for p in (np.r_[base, base[:50]], np.mod(near_duplicate_points(), 1.0)):
        t = triangulate_periodic(p, 1.0)
        assert interpolating_quadrature(p, {"triangle": t}, box=1.0)[1].sum() == \
            pytest.approx(1.0, rel=1e-6)
    assert triangulate_periodic(rng.random((5, 2)), 1.0) is None
    assert triangulate_periodic(np.c_[np.linspace(0, 0.9, 10), np.zeros(10)], 1.0) is None


@pytest.mark.parametrize("cloud", ["uniform", "graded", "grid", "lshape"])
def test_a_large_cloud_is_triangulated_in_strips_with_the_same_triangles(monkeypatch, cloud):
    # strips of 4000 points (monkeypatched from 250k): on a random cloud the triangles of one
    # piece; on a grid (every square cocircular) and an L-shape a tiling with each interior
    # edge in two triangles at most and the area of the one-piece triangulation; the same for
    # 1 and 3 threads
    import graphop.geometry.triangulate as tr
    from graphop.geometry.domains import structured_square

    rng = np.random.default_rng(5)
    p = {"uniform": lambda: rng.random((16000, 2)),
         "graded": lambda: rng.random((16000, 2)) ** [1, 2],
         "grid": lambda: structured_square(127).points[:, :2],
         "lshape": lambda: structured_square(127).points[:, :2]}[cloud]()
    if cloud == "lshape":
        p = p[~((p[:, 0] > 0.5 + 1e-9) & (p[:, 1] > 0.5 + 1e-9))]
    whole = triangulate_cloud(p)
    monkeypatch.setattr(tr, "STRIP_POINTS", 4000)
    one, three = triangulate_cloud(p, threads=1), triangulate_cloud(p, threads=3)

    def canon(t):
        t = np.sort(t, axis=1)
        return t[np.lexsort(t.T[::-1])]

    np.testing.assert_array_equal(canon(one), canon(three))
    from graphop.geometry.neighbors import knn_distances

    margin = 1.01 * CLOUD_ALPHA * knn_distances(p, 6)[:, -1].max()
    assert len(p) // 4000 * margin < np.ptp(p[:, 0]) / 2      # the strips, not one piece
    radius, cross = _circumradius(p, one)
    assert (cross > 0).all()
    if cloud in ("uniform", "graded"):
        np.testing.assert_array_equal(canon(one), canon(whole))
    else:
        edges = np.sort(np.concatenate([one[:, [0, 1]], one[:, [1, 2]], one[:, [2, 0]]]), axis=1)
        _, count = np.unique(edges, axis=0, return_counts=True)
        assert count.max() == 2
        assert _area(p, one) == pytest.approx(_area(p, whole), rel=1e-12)
        assert len(one) == len(whole)
        if cloud == "grid":
            assert _area(p, one) == pytest.approx(1.0, rel=1e-12)
