"""Shared behaviour of DISCOConv and DifferentialConv: batches, permutations, gradients,
errors, operator caching."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from graphop.layers import DifferentialConv, DISCOConv
from graphop.layers.sparse import operator_cache
from graphop.testing import (check_batch_consistency, check_permutation_equivariance,
                             nested_meshes)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def meshes():
    return [nested_meshes("disk", 1, 0.02, seed=0)[0], nested_meshes("square", 1, 0.006, seed=1)[0],
            nested_meshes("disk", 2, 0.08, seed=2)[1]]


def layers():
    torch.manual_seed(0)
    return [DISCOConv(3, 4, 0.3).double(), DifferentialConv(3, 4).double()]


def test_batch_of_three_different_meshes_equals_single_calls(meshes):
    datas = [m.to_data(dtype=torch.float64) for m in meshes]
    assert len({d.num_nodes for d in datas}) == 3
    xs = [torch.randn(d.num_nodes, 3, dtype=torch.float64) for d in datas]
    for conv in layers():
        err = check_batch_consistency(conv, datas, xs, atol=1e-12)
        assert err < 1e-12


def test_batch_sharing_one_mesh_is_one_operator_and_exact(meshes, monkeypatch):
    from graphop.layers import sparse

    data = meshes[0].to_data(dtype=torch.float64)
    xs = [torch.randn(data.num_nodes, 3, dtype=torch.float64) for _ in range(4)]
    batch = Batch.from_data_list([data] * 4)
    for conv in layers():
        op, fold = conv.operator(batch)     # small: 4 copies of the block, merged and cached
        assert fold == 1 and op.n_out == 4 * data.num_nodes and op is conv.operator(batch)[0]
        check_batch_consistency(conv, [data] * 4, xs, atol=1e-12)
    monkeypatch.setattr(sparse, "MERGE_NNZ", 0)   # large: the one block, graph by graph
    for conv in layers():
        op, fold = conv.operator(batch)
        assert fold == 4 and op.n_out == data.num_nodes
        check_batch_consistency(conv, [data] * 4, xs, atol=1e-12)


def test_batch_of_different_meshes_is_applied_block_by_block(meshes):
    from graphop.layers.sparse import BlockList

    datas = [m.to_data(dtype=torch.float64) for m in meshes[:3]]
    xs = [torch.randn(d.num_nodes, 3, dtype=torch.float64) for d in datas]
    for conv in layers():
        op, fold = conv.operator(Batch.from_data_list(datas))
        assert isinstance(op, BlockList) and fold == 1 and len(op.blocks) == 3
        check_batch_consistency(conv, datas, xs, atol=1e-12)


def test_permutation_equivariance(meshes):
    data = meshes[1].to_data(dtype=torch.float64)
    x = torch.randn(data.num_nodes, 3, dtype=torch.float64)
    for conv in layers():
        assert check_permutation_equivariance(conv, data, x, seed=3, atol=1e-12) < 1e-12


def test_bipartite_batch_of_different_meshes(meshes):
    datas = [m.to_data(dtype=torch.float64) for m in meshes[:2]]
    outs = [Data(pos=torch.rand(5, 2, dtype=torch.float64) * 0.5) for _ in datas]
    xs = [torch.randn(d.num_nodes, 3, dtype=torch.float64) for d in datas]
    conv = layers()[0]
    single = torch.cat([conv(x, d, out=o) for x, d, o in zip(xs, datas, outs)])
    got = conv(torch.cat(xs), Batch.from_data_list(datas), out=Batch.from_data_list(outs))
    assert got.shape == (10, 4) and (got - single).abs().max() < 1e-12


def test_gradcheck_float64():
    m = nested_meshes("square", 1, 0.05, seed=4)[0]
    data = m.to_data(dtype=torch.float64)
    x = torch.randn(m.n_points, 2, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    for conv in (DISCOConv(2, 3, 0.5).double(), DifferentialConv(2, 3).double()):
        fn = lambda x, w, b: torch.func.functional_call(conv, {"weight": w, "bias": b}, (x, data))
        assert torch.autograd.gradcheck(fn, (x, conv.weight, conv.bias))
        assert torch.autograd.gradgradcheck(lambda x: conv(x, data), (x,))


def test_operator_cached_by_content_not_in_state_dict(meshes):
    operator_cache.clear()
    conv = DISCOConv(3, 4, 0.3)
    data = meshes[0].to_data()
    x = torch.randn(data.num_nodes, 3)
    y1 = conv(x, data)
    assert (operator_cache.misses, operator_cache.hits) == (1, 0)
    y2 = conv(x, meshes[0].to_data())                    # new objects, same content
    assert (operator_cache.misses, operator_cache.hits) == (1, 1)
    assert torch.equal(y1, y2)
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert set(DifferentialConv(3, 4).state_dict()) == {"weight", "bias"}
    moved = data.clone()
    moved.pos = moved.pos + torch.tensor([1e-3, 0.0])     # different content -> new operator
    conv(x, moved)
    assert operator_cache.misses == 2
    # in-place change of the same tensor is noticed through its version counter
    data.pos.mul_(1.01)
    conv(x, data)
    assert operator_cache.misses == 3


def test_bad_input_raises_value_error(meshes):
    data = meshes[0].to_data()
    x = torch.randn(data.num_nodes, 3)
    conv, diff = DISCOConv(3, 4, 0.3), DifferentialConv(3, 4)
    with pytest.raises(ValueError, match="expected x with 3 input channels, got 2"):
        conv(x[:, :2], data)
    with pytest.raises(ValueError, match="expected x with 3 input channels, got 5"):
        diff(torch.randn(data.num_nodes, 5), data)
    with pytest.raises(ValueError, match="x has 10 rows but data.pos has"):
        conv(x[:10], data)
    no_w = Data(pos=data.pos)
    with pytest.raises(ValueError, match="no 'weight'"):
        conv(x, no_w)
    with pytest.raises(ValueError, match="dimension mismatch"):
        conv(x, data, out=Data(pos=torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        DifferentialConv(3, 4, dim=3)(x, data)
    for r in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="radius must be a positive number"):
            DISCOConv(3, 4, r)
    with pytest.raises(ValueError, match="weight must have shape"):
        conv(x, Data(pos=data.pos, weight=torch.ones(7)))
    with pytest.raises(ValueError, match="kernel_size must be an odd integer"):
        DifferentialConv(3, 4, kernel_size=4)
    with pytest.raises(ValueError, match="is torch.float64 but the layer is torch.float32"):
        conv(x.double(), data)


def test_repr_and_reset():
    conv = DISCOConv(3, 4, 0.3, kernel_shape=(4, 6))
    assert conv.weight.shape == (1 + 3 * 6, 3, 4)
    assert "radius=0.3" in repr(conv) and "n_basis=19" in repr(conv)
    w = conv.weight.detach().clone()
    conv.reset_parameters()
    assert not torch.equal(w, conv.weight)
    assert "kernel_size=3" in repr(DifferentialConv(1, 1))


def test_scipy_and_torch_cpu_kernels_agree(meshes, monkeypatch):
    from graphop.layers import sparse

    data = Batch.from_data_list([m.to_data(dtype=torch.float64) for m in meshes[:2]])
    x = torch.randn(data.num_nodes, 3, dtype=torch.float64, requires_grad=True)
    outs = []
    for backend in ("torch", "scipy"):
        monkeypatch.setattr(sparse, "CPU_BACKEND", backend)
        operator_cache.clear()
        for conv in layers():
            y = conv(x, data)
            (g,) = torch.autograd.grad(y.square().sum(), x)
            outs.append((y.detach(), g))
    operator_cache.clear()
    for (y1, g1), (y2, g2) in zip(outs[:2], outs[2:]):
        assert (y1 - y2).abs().max() < 1e-10 * y1.abs().max()
        assert (g1 - g2).abs().max() < 1e-10 * g1.abs().max()
