"""Tests of the grid FNO baseline (graphop.models.fno) and the mode truncation of SpectralConv."""
import numpy as np
import pytest
import torch

from graphop.errors import DataError
from graphop.geometry.domains import structured_square
from graphop.geometry.mesh import Mesh
from graphop.layers.spectral import SpectralConv
from graphop.models import FNO, build_model
from graphop.models.fno import grid_order
from graphop.testing import check_batch_consistency, check_permutation_equivariance

torch.set_num_threads(1)
SMALL = dict(width=8, n_layers=2, modes=(4, 4))


def _field(p, s=0.0):
    return np.sin(3 * p[:, 0] + s) * np.cos(2 * p[:, 1] - s) + p[:, 0] * p[:, 1]


def _grid(n, s=0.0, quad=True, dtype=torch.float64):
    mesh = structured_square(n, quad=quad)
    d = mesh.to_data(dtype=dtype)
    d.x = torch.tensor(_field(mesh.points, s)[:, None], dtype=dtype)
    return d


def _model(**kw):
    torch.manual_seed(0)
    return FNO(1, 2, **{**SMALL, **kw}).double().eval()


def test_shape_registry_and_config_round_trip():
    m = build_model({"name": "fno", "in_channels": 1, "out_channels": 2, **SMALL})
    assert m(_grid(9, dtype=torch.float32)).shape == (81, 2)
    again = build_model(m.config)
    assert again.config == m.config
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in m.parameters())
    assert "active_modes" in m.state_dict()
    assert "modes=(4, 4)" in repr(m)


def test_grid_order_recovers_the_grid():
    d = _grid(5)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(3))
    shape, order = grid_order(d.pos[perm])
    assert shape == (5, 5)
    g = d.pos[perm][order].view(5, 5, 2)
    # axis 0 is x (slowest), axis 1 is y; both increase along their axis
    assert torch.all(torch.diff(g[:, :, 0], dim=0) > 0) and torch.all(g[:, :, 0].diff(dim=1) == 0)
    assert torch.all(torch.diff(g[:, :, 1], dim=1) > 0) and torch.all(g[:, :, 1].diff(dim=0) == 0)


def test_output_follows_a_permutation_of_the_points():
    m = _model()
    d = _grid(12)
    check_permutation_equivariance(m, d, seed=1, atol=1e-12)
    # and the grid order matters: the same values on shuffled *coordinates* change the output
    shuffled = d.clone()
    shuffled.pos = d.pos[torch.randperm(144, generator=torch.Generator().manual_seed(2))]
    assert not torch.allclose(m(shuffled), m(d)[torch.arange(144)], atol=1e-3)


def test_batch_equals_each_grid_alone_also_for_mixed_shapes():
    m = _model()
    grids = [_grid(12, 0.0), _grid(12, 0.7), _grid(9, 0.3), _grid(12, 1.1)]
    err = check_batch_consistency(m, grids, atol=1e-12)
    assert err <= 1e-12


@pytest.mark.parametrize("kind", ["cloud", "perturbed", "graded", "missing node"])
def test_clear_error_on_points_that_are_not_a_grid(kind):
    m = _model()
    if kind == "cloud":
        d = Mesh.from_points(np.random.default_rng(0).random((100, 2))).to_data(dtype=torch.float64)
    elif kind == "perturbed":
        d = structured_square(10, quad=True, perturb=0.3).to_data(dtype=torch.float64)
    elif kind == "graded":
        d = _grid(10)
        d.pos = d.pos ** 2
    else:
        d = _grid(10)
        d.pos, d.weight = d.pos[1:], d.weight[1:]
    n = d.pos.shape[0]
    d.x = torch.zeros(n, 1, dtype=torch.float64)
    with pytest.raises(DataError) as info:
        m(d)
    msg = str(info.value)
    assert "\n" not in msg and "FNO needs" in msg
    assert ("tensor grid" in msg) == (kind in ("cloud", "perturbed", "missing node"))


def test_modes_truncated_on_the_training_grid_and_kept_for_zero_shot():
    torch.manual_seed(0)
    m = FNO(1, 1, width=8, n_layers=2).double()        # default modes (12, 12)
    assert m.grid_modes((17, 17)) == (10, 11)           # padded to 20 x 20
    assert m.grid_modes((33, 33)) == (12, 12)
    coarse, fine = _grid(17), _grid(33)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.train()
    loss = m(coarse).pow(2).mean()
    loss.backward()
    opt.step()
    assert m.active_modes.tolist() == [10, 11]
    m.eval()
    with torch.no_grad():
        ref = m(fine)
        assert ref.shape == (1089, 1)
        # the weights of modes the training grid did not hold play no part at 33 x 33
        for spec in m.spectral:
            spec.weight[:, :, 10:14].normal_()     # |k_0| in {10, 11}: indices 10, 11, 12, 13
            spec.weight[:, :, :, 11:].normal_()
        assert torch.equal(m(fine), ref)
        # a coarser grid than training truncates for that call only
        assert m(_grid(9)).shape == (81, 1) and m.active_modes.tolist() == [10, 11]


def test_padding_gives_the_same_fft_period_at_every_resolution():
    m = FNO(1, 1, padding=0.25)
    for n in (17, 33, 65, 129):
        pad = m.pad_amount((n, n))[0]
        assert (n + pad) / (n - 1) == 1.25     # the FFT period in units of the box side
    assert FNO(1, 1, periodic=True).pad_amount((17, 17)) == (0, 0)


def test_zero_shot_outputs_converge_under_refinement():
    """Fixed weights, one smooth input on nested grids 17 -> 33 -> 65 -> 129: the outputs at the
    17 x 17 nodes converge at first order (the zero padding is a jump, so the grid DFT is an
    O(h) Riemann sum of the continuous Fourier coefficient)."""
    m = _model(modes=(6, 6))
    outs = []
    with torch.no_grad():
        for n in (17, 33, 65, 129):
            step = (n - 1) // 16
            out = m(_grid(n)).view(n, n, 2)   # structured_square: row j is y, column i is x
            outs.append(out[::step, ::step].reshape(-1, 2))
    diffs = [float((a - b).pow(2).mean().sqrt()) for a, b in zip(outs[:-1], outs[1:])]
    scale = float(outs[-1].pow(2).mean().sqrt())
    assert diffs[-1] < 0.01 * scale, (diffs, scale)
    assert diffs[1] < 0.7 * diffs[0] and diffs[2] < 0.7 * diffs[1], diffs


def test_trains_on_a_few_grids():
    torch.manual_seed(0)
    m = FNO(1, 1, width=12, n_layers=2, modes=(5, 5)).double()
    data = [_grid(9, s) for s in (0.0, 0.5, 1.0)]
    for d in data:
        d.y = torch.tensor(np.cos(d.pos[:, :1].numpy() * 4 + float(d.x.mean())))
    from torch_geometric.data import Batch

    b = Batch.from_data_list(data)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = (m(b) - b.y).pow(2).mean()
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first


def test_spectral_conv_truncated_modes_equal_a_smaller_layer():
    torch.manual_seed(0)
    big = SpectralConv(2, 3, (5, 4)).double()
    small = SpectralConv(2, 3, (3, 2)).double()
    with torch.no_grad():
        small.weight[:, :, :3] = big.weight[:, :, :3, :2]        # k_0 = 0, 1, 2
        small.weight[:, :, 3:] = big.weight[:, :, 7:10, :2]      # k_0 = -3, -2, -1
    x = torch.randn(2, 2, 12, 10, dtype=torch.float64)
    assert torch.allclose(big(x, periodic=True, modes=(3, 2)), small(x, periodic=True), atol=1e-12)
    assert torch.equal(big(x, modes=(5, 4)), big(x))
    with pytest.raises(ValueError, match="modes"):
        big(x, modes=(6, 4))
