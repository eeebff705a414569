"""Tests of LocalGNO, its ablations, the MeshGraphNet baseline and the model registry."""
import json

import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay
from torch_geometric.data import Batch

from graphop import Mesh
from graphop.errors import ConfigError
from graphop.models import MODELS, LocalGNO, MeshGraphNet, build_model, resolve_supports
from graphop.models.gnn import mesh_edges
from graphop.testing import (check_batch_consistency, check_permutation_equivariance,
                             check_refinement_convergence, nested_meshes)

torch.set_num_threads(1)
# the fixed supports of these tests (the pre-'auto' defaults); 'auto' is tested in test_supports.py
FIXED = dict(disco_radius=0.06, encoder_radius=None)
SMALL = dict(width=12, n_layers=2, latent_shape=(12, 12), modes=(4, 4), **FIXED)


def _f(p):
    return np.stack([np.sin(2 * p[:, 0]) * np.cos(3 * p[:, 1]), p[:, 0] * p[:, 1]], 1)


def _data(mesh, dtype=torch.float64, s=0.0):
    d = mesh.to_data(dtype=dtype)
    p = mesh.points
    a = np.sin(3 * p[:, 0] + s) * np.cos(2 * p[:, 1] - s)
    d.x = torch.tensor(a[:, None], dtype=dtype)
    d.y = torch.tensor((a**2 + 0.5)[:, None], dtype=dtype)
    return d


def _disk(seed, max_area=0.02):
    m = nested_meshes("disk", levels=1, max_area=max_area, seed=seed)[0]
    return Mesh(0.45 * m.points + 0.5, m.cells)  # inside the unit box


def test_refinement_convergence_fixed_parameters():
    meshes = nested_meshes("square", levels=4, max_area=0.006, seed=0)
    torch.manual_seed(0)
    model = LocalGNO(2, 1, width=16, n_layers=4, latent_shape=(16, 16), modes=(6, 6), **FIXED).double()
    outs = []
    with torch.no_grad():
        for m in meshes:
            d = m.to_data(dtype=torch.float64)
            d.x = torch.tensor(_f(m.points))
            outs.append(model(d))
    res = check_refinement_convergence(outs, np.arange(meshes[0].n_points), max_ratio=0.7)
    assert res["differences"][-1] < 0.02 * float(outs[-1].pow(2).mean().sqrt()), res


def _rel_l2(out, y, batch, w, B):
    num = torch.zeros(B, dtype=out.dtype).index_add_(0, batch, w * ((out - y) ** 2).sum(1))
    den = torch.zeros(B, dtype=out.dtype).index_add_(0, batch, w * (y**2).sum(1))
    return (num / den).sqrt().mean()


@pytest.mark.parametrize("branches", [("global",), ("disco",), ("diff",), ("global", "disco", "diff")])
def test_overfits_tiny_dataset(branches):
    sq = nested_meshes("square", levels=2, max_area=0.01, seed=1)[1]
    b = Batch.from_data_list([_data(sq, torch.float32, 0.3), _data(_disk(2), torch.float32, 1.1)])
    torch.manual_seed(0)
    model = LocalGNO(1, 1, width=16, n_layers=2, branches=branches, latent_shape=(16, 16), modes=(6, 6),
                     **FIXED)
    branch_params = {name: p.detach().clone() for name, p in model.named_parameters()
                     if any(k in name for k in ("glob.", "disco.", "diff."))}
    assert branch_params, "every branch has parameters"
    steps = 300
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    for _ in range(steps):
        opt.zero_grad()
        loss = _rel_l2(model(b), b.y, b.batch, b.weight, 2)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        err = float(_rel_l2(model(b), b.y, b.batch, b.weight, 2))
    assert err < 0.015, f"{branches}: relative L2 error {err:.4f} after {steps} steps"
    # gradients reached every parameter of every active branch
    for name, p in model.named_parameters():
        if name in branch_params:
            assert (p.detach() - branch_params[name]).abs().max() > 1e-4, name


def test_batch_consistency_different_meshes_and_permutation():
    meshes = [nested_meshes("square", levels=1, max_area=0.02, seed=s)[0] for s in (3, 4)] + [_disk(5)]
    datas = [_data(m) for m in meshes]
    torch.manual_seed(0)
    model = LocalGNO(1, 2, **SMALL).double()
    check_batch_consistency(model, datas, atol=1e-10)
    check_permutation_equivariance(model, datas[2], atol=1e-10)
    gnn = MeshGraphNet(1, 2, hidden=16, n_layers=2).double()
    check_batch_consistency(gnn, datas, atol=1e-10)
    check_permutation_equivariance(gnn, datas[0], atol=1e-10)


def _tetra_mesh(n, seed):
    rng = np.random.default_rng(seed)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    pts = np.concatenate([corners, rng.random((n, 3))])
    return Mesh(pts, {"tetra": Delaunay(pts).simplices})


def test_3d_smoke_tetrahedral_meshes():
    meshes = [_tetra_mesh(150, 0), _tetra_mesh(200, 1)]
    datas = []
    for m in meshes:
        d = m.to_data(dtype=torch.float64)
        d.x = torch.tensor(np.sin(3 * m.points[:, :1]))
        datas.append(d)
    torch.manual_seed(0)
    model = LocalGNO(1, 2, width=8, n_layers=2, latent_shape=(8, 8, 8), modes=(3, 3, 3),
                     disco_radius=0.3, encoder_radius=None).double()
    assert model.dim == 3
    b = Batch.from_data_list(datas)
    out = model(b)
    assert out.shape == (b.num_nodes, 2) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    check_batch_consistency(model, datas, atol=1e-10)
    # the GNN on tetrahedra of a batch: cells_tetra is offset per sample
    e_batch = mesh_edges(b)
    e0, e1 = mesh_edges(datas[0]), mesh_edges(datas[1])
    assert e_batch.shape[1] == e0.shape[1] + e1.shape[1]
    check_batch_consistency(MeshGraphNet(1, 2, hidden=8, n_layers=2, dim=3).double(), datas, atol=1e-10)


def test_periodic_model_on_torus():
    L = 1.0
    rng = np.random.default_rng(0)
    pts = rng.random((400, 2)) * L
    m = Mesh.from_points(pts, measure=L * L)
    d = m.to_data(dtype=torch.float64)
    d.periodic = torch.tensor([[L, L]], dtype=torch.float64)
    d.x = torch.tensor(np.sin(2 * np.pi * pts[:, :1]))
    torch.manual_seed(0)
    model = LocalGNO(1, 1, branches=("global",), periodic=True, **SMALL).double()
    out = model(d)
    # positions enter as sin/cos: a point moved by a whole period gives the same output
    d2 = d.clone()
    d2.pos = d.pos + torch.tensor([L, -L], dtype=torch.float64)
    assert torch.allclose(model(d2), out, atol=1e-12)
    with pytest.raises(ValueError, match="built with periodic=False"):
        LocalGNO(1, 1, branches=("global",), **SMALL).double()(d)
    d3 = d.clone()
    del d3.periodic
    with pytest.raises(ValueError, match="no 'periodic' box"):
        model(d3)


def test_registry_builds_every_model_and_rebuilds_from_config():
    assert {"local_gno", "gino", "disco_only", "gnn", "fno"} <= set(MODELS)
    expect = {"local_gno": ("global", "disco", "diff"), "gino": ("global",), "disco_only": ("disco",)}
    d_mesh = _data(nested_meshes("square", levels=1, max_area=0.02, seed=6)[0], torch.float32)
    from graphop.geometry.domains import structured_square

    d_grid = _data(structured_square(9, quad=True), torch.float32)   # fno runs on tensor grids only
    for name in sorted(MODELS):
        d = d_grid if name == "fno" else d_mesh
        torch.manual_seed(0)
        model = build_model(resolve_supports({"name": name, "in_channels": 1, "out_channels": 3}, [d]))
        assert model.config["name"] == name
        if name in expect:
            assert model.branches == expect[name]
        cfg = json.loads(json.dumps(model.config))  # plain types: survives JSON/YAML
        rebuilt = build_model(cfg)
        assert rebuilt.config == model.config
        rebuilt.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.allclose(rebuilt(d), model(d))
            assert model(d).shape == (d.num_nodes, 3)


def test_registry_and_model_errors():
    with pytest.raises(ConfigError, match="unknown model 'fno3'; available: disco_only, fno, gino, gnn"):
        build_model({"name": "fno3", "in_channels": 1, "out_channels": 1})
    with pytest.raises(ConfigError, match="unknown argument.* branches for model 'gino'"):
        build_model({"name": "gino", "in_channels": 1, "out_channels": 1, "branches": ["disco"]})
    with pytest.raises(ConfigError, match="needs argument.* out_channels"):
        build_model({"name": "gnn", "in_channels": 1})
    with pytest.raises(ConfigError, match="branches must be distinct names"):
        build_model({"name": "local_gno", "in_channels": 1, "out_channels": 1, "branches": ["fft"]})
    with pytest.raises(ConfigError, match="with a 'name'"):
        build_model({"in_channels": 1})
    model = LocalGNO(2, 1, **SMALL)
    d = _data(nested_meshes("square", levels=1, max_area=0.05, seed=7)[0], torch.float32)
    with pytest.raises(ValueError, match=r"expects data.x of shape \[\d+, 2\], got"):
        model(d)
    with pytest.raises(ValueError, match=r"dim=3 but latent_shape \(8, 8\)"):
        LocalGNO(1, 1, dim=3, latent_shape=(8, 8))


def test_checkpointed_blocks_give_the_same_gradients():
    import torch

    from graphop.geometry.domains import mesh_domain
    from graphop.models import LocalGNO

    mesh = mesh_domain("square", 300, seed=0)
    data = mesh.with_point_data(a=mesh.points[:, 0] ** 2).to_data(fields=["a"], dtype=torch.float64)
    data.x = data.a.reshape(-1, 1)
    grads = []
    for ck in (False, True):
        torch.manual_seed(0)
        m = LocalGNO(1, 1, width=8, n_layers=2, disco_radius=0.2, encoder_radius=0.1,
                     checkpoint_blocks=ck).double()
        m(data).square().sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-10 * grads[0].abs().max()
    assert m.config["checkpoint_blocks"] is True


@pytest.mark.parametrize("ck", [False, True])
def test_locality_orders_change_no_output_or_gradient(monkeypatch, ck):
    # LocalGNO on a random cloud (in random order) and on a batch of it with a disk mesh: with
    # every operator in a locality order (threshold lowered to the cloud's size) the outputs,
    # the input gradients and the parameter gradients are the plain ones
    import graphop.layers.sparse as ops

    rng = np.random.default_rng(2)
    cloud = Mesh.from_points(rng.random((700, 2)), measure=1.0)
    datas = [_data(cloud), _data(_disk(1))]
    batch = Batch.from_data_list(datas)
    got = []
    for limit in (10**9, 300):
        monkeypatch.setattr(ops, "LOCALITY_MIN_POINTS", limit)
        ops.operator_cache.clear()
        torch.manual_seed(0)
        model = LocalGNO(1, 2, **SMALL, checkpoint_blocks=ck).double()
        outs = []
        for d in (datas[0], batch):
            x = d.x.clone().requires_grad_(True)
            d = d.clone()
            d.x = x
            y = model(d)
            (y * torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape)).sum().backward()
            outs += [y.detach(), x.grad]
        outs.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        ordered = [op for op in ops.operator_cache._items.values()
                   if isinstance(op, ops.SparseOperator) and op.ordered]
        got.append((outs, len(ordered)))
    assert got[0][1] == 0 and got[1][1] >= 2          # DISCO and the gradient over the cloud
    for a, b in zip(got[0][0], got[1][0]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * a.abs().max())
    ops.operator_cache.clear()
