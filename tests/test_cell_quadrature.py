"""Integral operators over the cells (quadrature="cells", the default): the quadrature itself,
batching, and the property it is for: the same piecewise-linear input gives the same operator
output on every mesh that represents it."""
import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator
from torch_geometric.data import Batch, Data

from graphop.geometry.cells import interpolating_quadrature, simplices
from graphop.geometry.domains import mesh_ball, mesh_domain, structured_square
from graphop.layers.differential import DifferentialConv
from graphop.layers.disco import DISCOConv
from graphop.layers.latent import GridEncoder
from graphop.layers.sparse import graph_set

torch.set_num_threads(1)


def test_quadrature_weights_sum_to_the_measure_and_integrate_quadratics_exactly():
    """Triangles: the 3-point rule is exact for quadratic integrands on every cell, so on a
    polygon it integrates x^2, xy, y^2 exactly; the interpolation rows are barycentric
    coordinates (sum 1, reproduce the points)."""
    m = mesh_domain("square", 300, seed=0)
    x, w, B = interpolating_quadrature(m.points[:, :2], m.cells)
    assert abs(w.sum() - 1.0) < 1e-12 and (w > 0).all()
    for f, exact in ((lambda p: p[:, 0] ** 2, 1 / 3), (lambda p: p[:, 0] * p[:, 1], 1 / 4),
                     (lambda p: (p[:, 1] - 0.3) ** 2, (0.7**3 + 0.3**3) / 3)):
        assert abs(w @ f(x) - exact) < 1e-12
    np.testing.assert_allclose(np.asarray(B.sum(1)).ravel(), 1.0, atol=1e-14)
    np.testing.assert_allclose(B @ m.points[:, :2], x, atol=1e-14)
    # P1 functions: the cell rule integrates the interpolant exactly, as lumped mass does
    f = np.sin(3 * m.points[:, 0]) + m.points[:, 1] ** 2
    assert abs(w @ (B @ f) - m.weights @ f) < 1e-12


def test_quads_hexahedra_and_lower_dimensional_cells():
    """Quads split along the 0-2 diagonal, volume cells into tetrahedra (centroid rule, exact
    for linear integrands); boundary lines of a 2D mesh are ignored; a point cloud or a mesh of
    lines has no area to integrate over."""
    q = structured_square(5, quad=True)
    x, w, _ = interpolating_quadrature(q.points[:, :2], {**q.cells, "line": np.array([[0, 1]])})
    assert len(x) == 3 * 2 * 16 and abs(w.sum() - 1) < 1e-12
    pts = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0],
                    [0, 0, 3], [2, 0, 3], [2, 1, 3], [0, 1, 3]], dtype=float)
    x, w, B = interpolating_quadrature(pts, {"hexahedron": np.arange(8)[None]})
    assert len(x) == 5 and abs(w.sum() - 6) < 1e-12
    assert abs(w @ x[:, 2] - 9) < 1e-12                       # integral of z over the box
    tet = mesh_ball(300, seed=1)
    x, w, _ = interpolating_quadrature(tet.points, tet.cells)
    assert abs(w.sum() - tet.weights.sum()) < 1e-10
    assert interpolating_quadrature(pts[:2], {"line": np.array([[0, 1]])}) is None
    assert simplices({}) is None


def _nested_grid_inputs(n_coarse=17, n_fine=(33, 65), seed=0):
    """Quad grids of the unit square and one piecewise-bilinear function with O(1) jumps
    between cells of the coarse grid, given at the nodes of every grid."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_coarse)
    coarse = np.where(rng.random((n_coarse, n_coarse)) > 0.5, 12.0, 3.0)
    f = RegularGridInterpolator((t, t), coarse)
    out = []
    for n in (n_coarse, *n_fine):
        m = structured_square(n, quad=True)
        d = m.to_data(dtype=torch.float64)
        out.append((d, torch.as_tensor(f(m.points[:, [1, 0]]))[:, None]))
    return out


def _coarse_rows(d_coarse, d_fine):
    key = {tuple(np.rint(p * 64).astype(int)): i for i, p in enumerate(d_fine.pos.numpy())}
    return np.array([key[tuple(np.rint(p * 64).astype(int))] for p in d_coarse.pos.numpy()])


def _layers(quadrature):
    torch.manual_seed(0)
    return {"encoder": GridEncoder((16, 16), radius=0.125, quadrature=quadrature),
            "disco": DISCOConv(1, 4, 0.198, bias=False, quadrature=quadrature).double(),
            "mollifier": DifferentialConv(1, 2, smoothing_radius=0.198,
                                          quadrature=quadrature).double()}


def _outputs(layers, d, x):
    with torch.no_grad():
        g, occ = layers["encoder"](x, d)
        return {"encoder": torch.cat([g, occ], 1).reshape(len(g), 2, -1),   # [B, 2, G]
                "disco": layers["disco"](x, d), "mollifier": layers["mollifier"].smooth(x, d)}


def test_the_same_input_function_gives_the_same_operators_on_nested_grids():
    """The Darcy benchmark's setting: a coefficient-like input, bilinear on the cells of a
    17 x 17 grid, given at the nodes of the 17 x 17, 33 x 33 and 65 x 65 grids. Integrating over
    the cells, the encoder, DISCO and the mollifier agree across the grids to about 1% (the
    remaining error is the kernel's own quadrature); summing over the nodes they differ by
    3-7%, the 17 x 17 sums sampling kernels two mesh spacings wide at a few nodes."""
    data = _nested_grid_inputs()
    rows = [_coarse_rows(data[0][0], d) for d, _ in data]
    diffs = {}
    for quadrature in ("cells", "points"):
        layers = _layers(quadrature)
        outs = [_outputs(layers, d, x) for d, x in data]
        for name in outs[0]:
            ref = outs[-1][name] if name == "encoder" else outs[-1][name][rows[-1]]
            for k in (0, 1):
                y = outs[k][name] if name == "encoder" else outs[k][name][rows[k]]
                diffs[quadrature, name, k] = float((y - ref).norm() / ref.norm())
    print({k: round(v, 4) for k, v in diffs.items()})
    for name in ("encoder", "disco", "mollifier"):
        assert diffs["cells", name, 0] < 0.015 and diffs["cells", name, 1] < 0.01
        assert diffs["points", name, 0] > 2 * diffs["cells", name, 0]


@pytest.mark.parametrize("kind", ["quad", "triangle"])
def test_a_batch_of_different_meshes_gives_each_mesh_its_own_cells(kind):
    """Cells are per graph in a Batch: ``face`` (triangles) is offset by the batching,
    ``cells_quad`` is not; the batch's outputs equal each mesh alone (and differ from the nodal
    sums)."""
    if kind == "quad":
        meshes = [structured_square(9, quad=True), structured_square(6, quad=True, perturb=0.3)]
    else:
        meshes = [structured_square(7), mesh_domain("disk", 200, seed=0), structured_square(5)]
    datas = [m.to_data(dtype=torch.float64) for m in meshes]
    for d in datas:
        d.pos = d.pos[:, :2].contiguous()
        d.x = torch.sin(3 * d.pos[:, :1]) + d.pos[:, 1:] ** 2
    batch = Batch.from_data_list(datas)
    g = graph_set(batch, need_weight=True, cells=True)
    assert all(kind in c and "line" in c for c in g.cells)   # boundary lines are skipped
    for b, m in enumerate(meshes):
        x, w, B = g.quadrature(b)
        ref, ref_w, ref_B = interpolating_quadrature(m.points[:, :2], m.cells)
        # the cells' points and the nodes, in spatial order (a permutation of the rows)
        n = len(ref)
        rows = np.argsort(w < 1e-6 * w.max(), kind="stable")[:n]   # the cells' own points
        keys = lambda x_, b_: np.lexsort(np.c_[x_, b_.toarray()].T)  # noqa: E731
        mine, theirs = keys(x[rows], B[rows]), keys(ref, ref_B)
        np.testing.assert_allclose(x[rows][mine], ref[theirs], atol=1e-15)
        np.testing.assert_allclose(w[rows][mine], ref_w[theirs])
        np.testing.assert_allclose(B[rows].toarray()[mine], ref_B.toarray()[theirs])
        assert len(x) == n + m.n_points
    layers = _layers("cells")
    whole = _outputs(layers, batch, batch.x)
    alone = [_outputs(layers, d, d.x) for d in datas]
    for name in ("disco", "mollifier"):
        torch.testing.assert_close(whole[name], torch.cat([a[name] for a in alone]))
    for b, a in enumerate(alone):
        torch.testing.assert_close(whole["encoder"][b], a["encoder"][0])
    nodal = _outputs(_layers("points"), batch, batch.x)
    assert float((nodal["disco"] - whole["disco"]).abs().max()) > 1e-3


def test_a_3d_cloud_uses_the_nodes_a_planar_cloud_its_triangles_a_torus_its_cells():
    m = mesh_domain("square", 200, seed=0)
    d = m.to_data(dtype=torch.float64)
    d.periodic = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    g = graph_set(d, need_weight=True, cells=True)
    assert g.quadrature(0, "cells-except-torus") is None  # the nodes, as before version 4
    x_t, w_t, _ = g.quadrature(0)                          # the mesh's cells on the torus
    assert float(w_t.sum()) == pytest.approx(m.measure, rel=1e-6)
    cloud = Data(pos=d.pos, weight=d.weight)
    # a planar cloud: the filtered Delaunay triangles of its points (here the mesh's own)
    x_q, w_q, B = graph_set(cloud, need_weight=True, cells=True).quadrature(0)
    assert float(w_q.sum()) == pytest.approx(m.measure, rel=1e-6)
    assert graph_set(cloud, need_weight=True, cells=False).quadrature(0) is None
    cloud3 = Data(pos=torch.cat([d.pos, torch.rand(len(d.pos), 1, dtype=torch.float64)], 1),
                  weight=d.weight)
    assert graph_set(cloud3, need_weight=True, cells=True).quadrature(0) is None
    x = torch.sin(3 * d.pos[:, :1])
    conv = DISCOConv(1, 2, 0.2, bias=False).double()
    nodal = DISCOConv(1, 2, 0.2, bias=False, quadrature="points").double()
    nodal.load_state_dict(conv.state_dict())
    legacy = DISCOConv(1, 2, 0.2, bias=False, quadrature="cells-except-torus").double()
    legacy.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(legacy(x, d), nodal(x, d))        # the torus, as before v4
        assert float((conv(x, d) - nodal(x, d)).abs().max()) > 1e-4
        mesh = m.to_data(dtype=torch.float64)
        assert float((conv(x, mesh) - nodal(x, mesh)).abs().max()) > 1e-4
        torch.testing.assert_close(conv(x, cloud), conv(x, mesh), rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(nodal(x, cloud3), conv(x, cloud3))


def test_one_triangulation_serves_every_operator_of_a_cloud(monkeypatch):
    """DISCO, the mollified gradient and the grid encoder of one planar cloud share one
    triangulation (memoised by content key, cleared with the cache), and give the operators
    that fresh triangulations give."""
    import graphop.layers.sparse as sparse
    from graphop.layers.sparse import operator_cache

    pts = torch.rand(600, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cloud = Data(pos=pts, weight=torch.full((600,), 1 / 600, dtype=torch.float64))
    x = torch.sin(3 * pts[:, :1])
    calls = []
    real = sparse.triangulate_cloud
    monkeypatch.setattr(sparse, "triangulate_cloud", lambda p, **kw: calls.append(1) or real(p, **kw))
    layers = _layers("cells")

    def run():
        operator_cache.clear()
        with torch.no_grad():
            return _outputs(layers, cloud, x)

    first = run()
    assert len(calls) == 1
    operator_cache.clear()
    alone = {"encoder": lambda: torch.cat(layers["encoder"](x, cloud), 1).reshape(1, 2, -1),
             "disco": lambda: layers["disco"](x, cloud),
             "mollifier": lambda: layers["mollifier"].smooth(x, cloud)}
    for name, out in alone.items():                # each alone, after a cleared cache
        with torch.no_grad():
            torch.testing.assert_close(out(), first[name], rtol=0, atol=0)
        operator_cache.clear()
    assert len(calls) == 1 + len(layers)
    q = graph_set(cloud, need_weight=True, cells=True).quadrature(0)
    with pytest.raises(ValueError):               # shared by every build: read-only
        q[0][0, 0] = 1.0


@pytest.mark.parametrize("bad", ["lumped", None, 1])
def test_quadrature_option_is_checked(bad):
    from graphop.errors import InputError

    with pytest.raises(InputError, match="quadrature must be one of"):
        DISCOConv(1, 1, 0.1, quadrature=bad)
