"""A batch's geometry kept on the host (issue #15, item 5: no host-side reads per step on a GPU).

:func:`graphop.layers.sparse.tag_geometry` keeps the CPU tensors of a batch before it moves to a
device; the operators' keys, graph offsets, torus box and builds then read that copy. Here the
"device copy" is emulated on the CPU by tensors that refuse every read back to the host
(``.cpu()``, ``.numpy()``, ``.tolist()``, ``.item()``, ``bool()``): a tagged batch made of them
must run a LocalGNO forward and backward pass, and give the same output as the plain batch.
"""
import warnings

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from graphop.errors import InputError
from graphop.geometry.domains import mesh_domain
from graphop.layers import sparse
from graphop.layers.latent import periodic_box
from graphop.layers.sparse import graph_set, host_geometry, operator_cache, tag_geometry, to_device
from graphop.models.local_gno import LocalGNO


class DeviceOnly(torch.Tensor):
    """A CPU tensor standing in for a device tensor: reading it back to the host raises (so
    does any tensor computed from it)."""

    READS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item,
             torch.Tensor.__bool__, torch.Tensor.__array__}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls.READS:
            raise AssertionError(f"read back from the device: Tensor.{func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


def _device_only(t):
    return t.clone().as_subclass(DeviceOnly)


def _move(batch):
    """What ``batch.to(device)`` does to the tensors the geometry is read from: new tensors of
    the same content, here ones that refuse to be read back."""
    for k in ("pos", "weight", "ptr", "batch", "periodic", "face"):
        if torch.is_tensor(getattr(batch, k, None)):
            batch[k] = _device_only(batch[k])
    return batch


def _meshes():
    out = []
    for seed in (0, 1):
        d = mesh_domain("square", 300, seed=seed, perturb=0.3).to_data()
        d.x = torch.sin(3 * d.pos[:, :1]) * torch.cos(2 * d.pos[:, 1:2])
        d.y = torch.cos(d.x)
        out.append(d)
    return out


def _torus():
    p = torch.rand(400, 2, generator=torch.Generator().manual_seed(3))
    return Data(pos=p, weight=torch.full((400,), 1 / 400), x=torch.sin(6.2832 * p[:, :1]),
                y=torch.cos(6.2832 * p[:, 1:2]), periodic=torch.tensor([[1.0, 1.0]]))


def _model(periodic=False):
    torch.manual_seed(0)
    return LocalGNO(1, 1, width=8, n_layers=2, latent_shape=(12, 12), modes=(4, 4),
                    disco_radius=0.15, encoder_radius=0.15, periodic=periodic)


@pytest.mark.parametrize("which", ["meshes", "torus", "meshes, locality orders"])
def test_a_tagged_batch_runs_without_reading_its_device_tensors(which, monkeypatch):
    if "orders" in which:    # every operator in a locality order, made from the host copy
        monkeypatch.setattr(sparse, "LOCALITY_MIN_POINTS", 100)
        operator_cache.clear()
    data = [_torus()] if which == "torus" else _meshes()
    model = _model(periodic=which == "torus")
    ref = model(Batch.from_data_list(data)).detach()
    for fresh_cache in (True, False):     # operators built from the host copy, then cached
        if fresh_cache:
            operator_cache.clear()
        batch = _move(tag_geometry(Batch.from_data_list(data)))
        out = model(batch)
        out.square().mean().backward()
        torch.testing.assert_close(out.detach().as_subclass(torch.Tensor), ref)
    if "orders" in which:
        assert any(op.ordered for op in operator_cache._items.values()
                   if isinstance(op, sparse.SparseOperator))
    # the same batch untagged does read them: the check above is not vacuous
    batch = _move(Batch.from_data_list(data))
    with pytest.raises(AssertionError, match="read back from the device"):
        model(batch)


def test_the_tag_answers_from_the_host_copy():
    data = _meshes() + [_meshes()[0]]
    plain = Batch.from_data_list(data)
    keys = graph_set(plain, need_weight=True, cells=True).keys
    assert keys[0] == keys[2] != keys[1]
    batch = tag_geometry(Batch.from_data_list(data))
    batch.pos = batch.pos + 0.25        # a copy with other content: never read
    batch.ptr = torch.tensor([0, 5, 7, 9])
    gs = graph_set(batch, need_weight=True, cells=True)
    assert gs.keys == keys and gs.ptr == plain.ptr.tolist()
    torus = tag_geometry(Batch.from_data_list([_torus()]))
    torus.periodic = torch.tensor([[3.0, 3.0]])
    assert np.allclose(periodic_box(torus, 2), [1.0, 1.0])


def test_the_tag_is_dropped_when_the_batch_changes():
    batch = tag_geometry(Batch.from_data_list(_meshes()))
    assert host_geometry(batch) is not None      # binds to the tensors it holds now
    batch.pos.add_(0.5)                           # modified in place after the tag
    assert host_geometry(batch) is None
    assert not hasattr(batch, sparse.HostGeometry.ATTR)
    shifted = graph_set(batch, need_weight=True).keys
    assert shifted != graph_set(Batch.from_data_list(_meshes()), need_weight=True).keys

    batch = tag_geometry(Batch.from_data_list(_meshes()))
    batch.pos = batch.pos.clone()
    assert host_geometry(batch) is not None
    batch.pos = batch.pos.clone()                 # replaced after the first read
    assert host_geometry(batch) is None

    batch = tag_geometry(Batch.from_data_list(_meshes()))
    getattr(batch, sparse.HostGeometry.ATTR).pos.mul_(2.0)   # host copy changed before a read
    assert host_geometry(batch) is None

    batch = tag_geometry(Batch.from_data_list(_meshes()))
    batch.pos = batch.pos[:-3]                    # not a copy of the tagged tensor
    assert host_geometry(batch) is None


def test_the_tag_hashes_each_geometry_once(monkeypatch):
    calls = []
    digest = sparse._digest
    monkeypatch.setattr(sparse, "_digest", lambda *a: calls.append(1) or digest(*a))
    model = _model()
    batch = to_device(tag_geometry(Batch.from_data_list(_meshes())), "cpu")
    model(batch)
    first = len(calls)
    assert first > 0
    for _ in range(2):
        model(batch)
    assert len(calls) == first


def test_to_device_and_tag_errors():
    batch = Batch.from_data_list(_meshes())
    assert to_device(batch, "cpu") is batch
    assert host_geometry(batch) is None           # nothing to gain on the CPU: not tagged
    with pytest.raises(InputError, match="on the CPU"):
        tag_geometry(Data(x=torch.zeros(3, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "HostGeometry(2 graphs" in repr(getattr(tag_geometry(batch), "_graphop_host"))
