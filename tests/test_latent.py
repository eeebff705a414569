"""Tests of the mesh <-> latent grid operators (graphop.layers.latent)."""
import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay
from torch_geometric.data import Batch, Data

from graphop import Mesh
from graphop.layers.sparse import operator_cache
from graphop.layers.latent import (GridDecoder, GridEncoder, LatentGrid, decoder_matrix,
                                   encoder_matrix, kernel_mass)
from graphop.testing import check_refinement_convergence, nested_meshes

torch.set_num_threads(1)


def _square_mesh(n, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.random((n, 2)), [[0, 0], [1, 0], [0, 1], [1, 1]]])
    return Mesh(pts, {"triangle": Delaunay(pts).simplices}).to_data(dtype=dtype)


def test_kernel_mass_matches_quadrature():
    # integral of (1 - |u|^2/r^2)^2 over the ball, by a fine midpoint rule
    r, h = 0.3, 0.002
    ax = np.arange(-r + h / 2, r, h)
    X, Y = np.meshgrid(ax, ax)
    s2 = (X**2 + Y**2) / r**2
    num = np.sum(np.where(s2 < 1, (1 - s2) ** 2, 0)) * h * h
    assert abs(num - kernel_mass(2, r)) < 1e-4 * kernel_mass(2, r)
    assert np.isclose(kernel_mass(2, 1.0), np.pi / 3) and np.isclose(kernel_mass(3, 1.0), 32 * np.pi / 105)


def test_encoder_of_constant_is_constant_on_occupied_grid():
    data = nested_meshes("square", levels=1, max_area=0.0008, seed=5)[0].to_data(dtype=torch.float64)
    enc = GridEncoder((24, 24))
    g, occ = enc(torch.full((data.num_nodes, 2), 3.5, dtype=torch.float64), data)
    assert g.shape == (1, 2, 24, 24) and occ.shape == (1, 1, 24, 24)
    inside = occ[0, 0] > 0
    assert inside.sum() > 0.8 * 24 * 24
    # the plain average where at least half the kernel's mass is inside the domain (floor 0.5),
    # fading with the mass inside farther out: g = 3.5 occ / 0.5
    full = occ[0, 0] >= 0.5
    assert full.sum() > 0.65 * 24 * 24
    assert torch.allclose(g[0][:, full], torch.tensor(3.5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(g[0][:, ~full], 3.5 * occ[0, 0][~full] / 0.5, atol=1e-12)
    assert torch.all(g[0][:, ~inside] == 0)
    # floor 0: the plain average everywhere the kernel holds a point
    g0, _ = GridEncoder((24, 24), floor=0.0)(torch.full((data.num_nodes, 2), 3.5,
                                                        dtype=torch.float64), data)
    assert torch.allclose(g0[0][:, inside], torch.tensor(3.5, dtype=torch.float64), atol=1e-12)
    # occupancy: ~1 deep inside the square, ~1/2 at the middle of an edge, 0 far outside
    z = torch.as_tensor(enc.grid().nodes()).reshape(24, 24, 2)
    deep = ((z > 0.15) & (z < 0.85)).all(-1)
    assert (occ[0, 0][deep] - 1).abs().max() < 0.1
    assert (occ[0, 0][deep] - 1).abs().mean() < 0.03


def test_encoder_linear_function_and_refinement_convergence():
    meshes = nested_meshes("square", levels=4, max_area=0.004, seed=3)
    enc = GridEncoder((16, 16))
    outs = []
    for m in meshes:
        d = m.to_data(dtype=torch.float64)
        f = torch.stack([1 + 2 * d.pos[:, 0] - d.pos[:, 1], torch.sin(3 * d.pos[:, 0])], 1)
        g, occ = enc(f, d)
        outs.append(torch.cat([g, occ], 1)[0].reshape(3, -1).t())
    # the same grid nodes every time: successive differences shrink
    res = check_refinement_convergence(outs, np.arange(256), max_ratio=0.7)
    assert res["differences"][-1] < 0.02
    # a symmetric kernel averages a linear function to its value where the ball is inside
    z = torch.as_tensor(enc.grid().nodes())
    deep = ((z > 0.2) & (z < 0.8)).all(1)
    exact = 1 + 2 * z[:, 0] - z[:, 1]
    assert (outs[-1][deep, 0] - exact[deep]).abs().max() < 0.01


def test_decoder_reproduces_linear_functions_exactly_2d_3d():
    rng = np.random.default_rng(1)
    for shape in [(9, 7), (5, 6, 4)]:
        d = len(shape)
        grid = LatentGrid.make(shape, box=((-0.1,) * d, (1.2,) * d))
        a, c = rng.normal(size=d), 0.7
        pts = np.concatenate([rng.random((300, d)) * 1.3 - 0.1, grid.nodes()[:5], [[1.2] * d]])
        D = decoder_matrix(pts, grid)
        assert D.shape == (len(pts), grid.size) and np.all(np.diff(D.indptr) == 2**d)
        vals = D @ (grid.nodes() @ a + c)
        assert np.abs(vals - (pts @ a + c)).max() < 1e-12
        assert np.allclose(D.sum(1), 1)


def test_decoder_clamps_points_outside_the_box():
    dec = GridDecoder((8, 8))
    g = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    inside = torch.tensor([[0.0, 0.3], [1.05, 0.5]], dtype=torch.float64)
    outside = torch.tensor([[-3.0, 0.3], [7.0, 0.5]], dtype=torch.float64)
    clamp = torch.tensor([[-0.05, 0.3], [1.05, 0.5]], dtype=torch.float64)
    out = dec(g, Data(pos=outside))
    assert torch.allclose(out, dec(g, Data(pos=clamp)))
    assert not torch.allclose(out, dec(g, Data(pos=inside)))


def test_encoder_outside_points_warn_error_or_clamp():
    data = _square_mesh(200)
    data.pos = data.pos * 1.5
    x = torch.ones(data.num_nodes, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mesh points lie outside the latent box"):
        GridEncoder((8, 8), outside="error")(x, data)
    with pytest.warns(UserWarning, match="clamped onto the box"):
        GridEncoder((8, 8), radius=0.31)(x, data)
    g, occ = GridEncoder((8, 8), latent_box=((0, 0), (1.5, 1.5)), outside="error")(x, data)
    assert torch.all(occ > 0)
    with pytest.raises(ValueError, match="outside must be"):
        GridEncoder((8, 8), outside="drop")
    with pytest.raises(ValueError, match="no 'weight'"):
        GridEncoder((8, 8))(x, Data(pos=data.pos))


def test_batch_of_different_meshes_and_shared_mesh():
    datas = [_square_mesh(300, 0), _square_mesh(500, 1), _square_mesh(400, 2)]
    enc, dec = GridEncoder((12, 12)), GridDecoder((12, 12))
    xs = [torch.sin(5 * d.pos[:, :1]) * d.pos[:, 1:] for d in datas]
    for ds in [datas, [datas[1]] * 3]:  # different meshes (block-diagonal), one mesh (folded)
        b = Batch.from_data_list(ds)
        xx = xs if ds is datas else [xs[1] * (k + 1) for k in range(3)]
        g, occ = enc(torch.cat(xx), b)
        singles = [enc(x, d) for x, d in zip(xx, ds)]
        assert torch.allclose(g, torch.cat([s[0] for s in singles]), atol=1e-13)
        assert torch.allclose(occ, torch.cat([s[1] for s in singles]), atol=1e-13)
        out = dec(g, b)
        ref = torch.cat([dec(s[0], d) for s, d in zip(singles, ds)])
        assert torch.allclose(out, ref, atol=1e-13)


def test_channels_last_layout_is_the_same_grid():
    """``channels_last=True``: the encoder's grids and occupancy and the decoder's input are
    the channels-first ones with the channels moved last, on one mesh, a batch of different
    meshes and a batch sharing one mesh; the decoder checks the layout it is given."""
    datas = [_square_mesh(300, 0), _square_mesh(500, 1)]
    enc, dec = GridEncoder((12, 10)), GridDecoder((12, 10))
    for ds in ([datas[0]], datas, [datas[1]] * 3):
        b = Batch.from_data_list(ds)
        x = torch.cos(3 * b.pos[:, :1]) * torch.arange(1.0, 4.0, dtype=b.pos.dtype)   # 3 channels
        g, occ = enc(x, b)
        g_last, occ_last = enc(x, b, channels_last=True)
        assert g_last.shape == (len(ds), 12, 10, 3) and occ_last.shape == (len(ds), 12, 10, 1)
        assert torch.equal(g_last, g.movedim(1, -1)) and torch.equal(occ_last, occ.movedim(1, -1))
        assert g_last.is_contiguous()                 # a view of the product: nothing copied
        assert torch.allclose(dec(g_last, b, channels_last=True), dec(g, b), atol=1e-14)
    with pytest.raises(ValueError, match=r"expected \[B, 12, 10, C\]"):
        dec(g, b, channels_last=True)
    with pytest.raises(ValueError, match=r"expected \[B, C, 12, 10\]"):
        dec(g_last, b)


def test_operators_are_cached_by_content_not_in_state_dict():
    data = _square_mesh(300, 7)
    enc = GridEncoder((10, 10))
    op1 = enc.operator(data)
    n = len(operator_cache)
    op2 = enc.operator(data.clone())
    assert op2[0] is op1[0] and len(operator_cache) == n
    moved = data.clone()
    moved.pos = moved.pos * 0.9
    assert enc.operator(moved)[0] is not op1[0]
    assert len(enc.state_dict()) == 0 and len(GridDecoder((10, 10)).state_dict()) == 0


def test_gradcheck_encoder_decoder():
    data = _square_mesh(60, 3)
    enc, dec = GridEncoder((6, 6)), GridDecoder((6, 6))
    x = torch.randn(data.num_nodes, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dec(enc(x, data)[0] ** 2, data), (x,))


def test_periodic_encoder_translation_and_wrap():
    L, n = 2.0, 16
    rng = np.random.default_rng(0)
    pts = rng.random((3000, 2)) * L
    w = np.full(len(pts), L * L / len(pts))
    f = lambda p: np.sin(np.pi * p[:, 0]) + np.cos(np.pi * p[:, 1])  # period L
    grid = LatentGrid.make((n, n), periodic=[L, L])
    assert np.allclose(grid.spacing, L / n)
    E, occ = encoder_matrix(pts, w, grid, radius=0.2)
    assert abs(occ.mean() - 1) < 0.02 and occ.min() > 0.5  # a torus has no outside
    # shifting every point by one grid spacing (and wrapping) shifts the encoding by one node
    shift = np.array([L / n, 0.0])
    E2, _ = encoder_matrix(np.mod(pts + shift, L), w, grid, radius=0.2)
    g1 = (E @ f(pts)).reshape(n, n)
    g2 = (E2 @ f(pts)).reshape(n, n)
    assert np.abs(np.roll(g1, 1, axis=0) - g2).max() < 1e-10
    # the periodic decoder interpolates grid values exactly at the nodes and wraps around
    dec = GridDecoder((n, n))
    data = Data(pos=torch.tensor(grid.nodes() + np.array([L, -L])), periodic=torch.tensor([[L, L]]))
    vals = torch.randn(1, 1, n, n, dtype=torch.float64)
    assert torch.allclose(dec(vals, data)[:, 0], vals.reshape(-1))


def _lshape_meshes(n_points, seed=0):
    """graphop's quality meshes of the L-shape [0, 1]^2 minus [0.5, 1]^2 (as the Darcy generator
    makes them), one per size."""
    from graphop.geometry.domains import mesh_domain

    out = []
    for n in n_points:
        m = mesh_domain("lshape", n_points=n, seed=seed, size=1.0)
        out.append(m.to_data(dtype=torch.float64))
    return out


def test_encoder_is_continuous_where_its_kernel_barely_reaches_the_domain():
    """Latent nodes 1.5 spacings outside the L-shape's re-entrant edges, with the encoder radius
    a hair above 1.5 spacings: their kernels touch the edges at s ~ 1 (as measured on a
    mesher's L-shapes, where a 32 x 32 grid and radius 1.5 spacings put such nodes at distance
    0.99999 r). The plain average (floor 0) gives such a node the full value of any edge point
    at s < 1, whatever its weight phi(s) ~ 0, and whether a mesh has one there depends on its
    resolution, so the feature jumps by O(1) between meshes; with the floor it is ~ its kernel
    mass inside the domain, ~ 0, on every mesh, and every node converges under refinement."""
    grid_shape = (32, 32)
    grid = LatentGrid.make(grid_shape)
    r = 1.5 * float(grid.spacing.max()) * (1 + 1e-4)
    meshes = _lshape_meshes([2000, 8000, 32000])
    assert all(float(d.pos.max()) == 1.0 and float(d.pos.min()) == 0.0 for d in meshes)

    def features(d, floor):
        f = 1 + d.pos[:, 0] + torch.sin(3 * d.pos[:, 1])
        g, occ = GridEncoder(grid_shape, radius=r, floor=floor)(f[:, None], d)
        return g[0, 0].reshape(-1), occ[0, 0].reshape(-1)

    floored = [features(d, 0.5)[0] for d in meshes]
    plain = [features(d, 0.0) for d in meshes]
    # the nodes whose kernel holds mesh points of weight phi < 1e-3 only on some mesh
    tail = torch.stack([occ for _, occ in plain]).amax(0) < 1e-4
    hit = torch.stack([g != 0 for g, _ in plain]).any(0) & tail
    assert hit.sum() >= 1, "the geometry no longer produces a barely-touching kernel"
    jump = max(float((plain[i][0] - plain[j][0])[hit].abs().max())
               for i in range(3) for j in range(i))
    assert jump > 0.5          # the defect the floor removes: O(1) on a tail node
    assert float(torch.stack(floored)[:, tail].abs().max()) < 1e-2
    d1 = float((floored[0] - floored[2]).abs().max())
    d2 = float((floored[1] - floored[2]).abs().max())
    assert d2 < 0.6 * d1 and d2 < 0.05
