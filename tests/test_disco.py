"""DISCOConv: agreement with high-accuracy integrals, convergence under refinement, periodicity."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from graphop.layers.basis import KernelBasis
from graphop.layers import DISCOConv
from graphop.testing import check_convergence_rate, check_refinement_convergence, nested_meshes

torch.set_num_threads(1)


def smooth(p):
    return np.sin(2 * p[:, 0]) * np.cos(3 * p[:, 1]) + p[:, 0] ** 2


def reference_integrals(q, r, basis, f):
    """int_{|z|<=1} psi_l(z) f(x + r z) r^2 dz by tensor Gauss-Legendre on each (ring, sector)
    cell of the polar grid, where the integrand is smooth: [len(q), L]."""
    n_r, n_a = basis.kernel_shape
    xg, wg = np.polynomial.legendre.leggauss(12)
    ref = np.zeros((len(q), basis.n_basis))
    for k in range(n_r):
        for m in range(n_a):
            rr = (k + (xg + 1) / 2) / n_r
            pp = (m + (xg + 1) / 2) * 2 * math.pi / n_a
            R, P = np.meshgrid(rr, pp, indexing="ij")
            W = np.outer(wg / (2 * n_r), wg * math.pi / n_a) * R
            z = np.stack([(R * np.cos(P)).ravel(), (R * np.sin(P)).ravel()], axis=1)
            psi = basis.dense(z)
            for a, x in enumerate(q):
                ref[a] += (psi * (f(x + r * z) * W.ravel())[:, None]).sum(0) * r * r
    return ref


@pytest.mark.parametrize("domain,area,radius,q", [
    ("square", 0.004, 0.2, [[0.5, 0.5], [0.3, 0.6], [0.7, 0.35]]),
    ("disk", 0.01, 0.3, [[0.0, 0.0], [0.3, -0.2], [-0.4, 0.3]]),
])
def test_matches_high_accuracy_integral(domain, area, radius, q):
    q = np.array(q)
    meshes = nested_meshes(domain, levels=4, max_area=area, seed=1)
    conv = DISCOConv(1, 1, radius, kernel_shape=(3, 4), bias=False, normalize=False).double()
    theta = torch.linspace(-1.0, 2.0, 9, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(theta.view(9, 1, 1))
    exact = reference_integrals(q, radius, KernelBasis((3, 4), 2), smooth) @ theta.numpy()
    out = Data(pos=torch.tensor(q))
    errors, hs = [], []
    for m in meshes:
        data = m.to_data(dtype=torch.float64)
        y = conv(torch.tensor(smooth(m.points))[:, None], data, out=out)[:, 0].detach().numpy()
        errors.append(np.abs(y - exact).max())
        hs.append(m.spacing()["mean"])
    rate = check_convergence_rate(hs, errors, min_rate=1.5)
    assert errors[-1] < 2e-3 * np.abs(exact).max(), (errors, exact)
    print(f"{domain}: errors {errors}, rate {rate:.2f}")


def test_random_layer_converges_on_refinements():
    meshes = nested_meshes("square", levels=4, max_area=0.004, seed=2)
    torch.manual_seed(0)
    conv = DISCOConv(2, 3, radius=0.15).double()
    n0 = meshes[0].n_points
    common = Data(pos=torch.tensor(meshes[0].points))
    outs = []
    for m in meshes:
        data = m.to_data(dtype=torch.float64)
        f = torch.tensor(np.stack([smooth(m.points), np.cos(4 * m.points[:, 1])], axis=1))
        outs.append(conv(f, data, out=common).detach())
    res = check_refinement_convergence(outs, np.arange(n0), max_ratio=0.7)
    assert res["differences"][-1] < 5e-3, res


def test_integral_of_one_is_ball_measure_and_normalised_average():
    """normalize=False: interior output for f=1 -> sum_l theta_l int psi_l r^2;
    normalize=True: every (nonnegative) basis function has unit mass, so f = 1 gives 1."""
    m = nested_meshes("square", levels=3, max_area=0.004, seed=3)[-1]
    data = m.to_data(dtype=torch.float64)
    q = Data(pos=torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    basis = KernelBasis((3, 4), 2)
    for normalize, expect in ((False, basis.l1_norms() * 0.2**2), (True, np.ones(9))):
        conv = DISCOConv(1, 9, 0.2, bias=False, normalize=normalize).double()
        with torch.no_grad():
            conv.weight.copy_(torch.eye(9, dtype=torch.float64).view(9, 1, 9))
        y = conv(torch.ones(m.n_points, 1, dtype=torch.float64), data, out=q)[0].detach().numpy()
        np.testing.assert_allclose(y, expect, rtol=2e-2)


def test_periodic_translation_equivariance_and_exact_interior_shift():
    rng = np.random.default_rng(0)
    g = (np.stack(np.meshgrid(np.arange(20), np.arange(20), indexing="ij"), -1).reshape(-1, 2)
         + 0.5 + rng.uniform(-0.3, 0.3, (400, 2))) / 20
    x = torch.randn(400, 2, dtype=torch.float64)
    w = torch.full((400,), 1 / 400, dtype=torch.float64)
    conv = DISCOConv(2, 2, 0.2).double()
    per = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    base = conv(x, Data(pos=torch.tensor(g), weight=w, periodic=per))
    shifted = torch.tensor(np.mod(g + [0.37, 0.81], 1.0))
    got = conv(x, Data(pos=shifted, weight=w, periodic=per))
    assert (got - base).abs().max() < 1e-12
    # without the torus the same shift changes outputs near the boundary
    plain = conv(x, Data(pos=torch.tensor(g), weight=w))
    assert (plain - base).abs().max() > 1e-3
    # a plain translation of the coordinates changes nothing
    moved = conv(x, Data(pos=torch.tensor(g + 5.0), weight=w))
    assert (moved - plain).abs().max() < 1e-12


def test_float32_matches_float64():
    m = nested_meshes("disk", levels=1, max_area=0.01, seed=4)[0]
    torch.manual_seed(1)
    conv = DISCOConv(3, 4, 0.4)
    x = torch.randn(m.n_points, 3)
    y32 = conv(x, m.to_data(dtype=torch.float32))
    y64 = conv.double()(x.double(), m.to_data(dtype=torch.float64))
    assert y32.dtype == torch.float32
    assert (y32.double() - y64).abs().max() < 1e-5


def test_3d_grid_interior_moments():
    """3D, kernel (3, 4) = {1, u_x, u_y, u_z} per ring: on a symmetric grid around the query the
    odd direction functions integrate f = 1 to 0 exactly, the isotropic ones to ~1."""
    n, h = 13, 1 / 12
    g = np.stack(np.meshgrid(*[np.arange(n) * h] * 3, indexing="ij"), -1).reshape(-1, 3)
    data = Data(pos=torch.tensor(g), weight=torch.full((n**3,), h**3, dtype=torch.float64))
    conv = DISCOConv(1, 9, 0.45, kernel_shape=(3, 4), bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.eye(9, dtype=torch.float64).view(9, 1, 9))
    q = Data(pos=torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64))
    y = conv(torch.ones(n**3, 1, dtype=torch.float64), data, out=q)[0].detach().numpy()
    iso = [0, 1, 5]                                  # centre, and the "1" of rings 1 and 2
    odd = [i for i in range(9) if i not in iso]
    np.testing.assert_allclose(y[iso], 1.0, rtol=0.1)
    assert np.abs(y[odd]).max() < 1e-12
