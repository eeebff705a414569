"""Tests of the spherical harmonic transforms (graphop.layers.sht) and the spherical global
branch (graphop.layers.spherical)."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from graphop.errors import GraphopWarning, InputError
from graphop.geometry.sphere import fibonacci_sphere
from graphop.layers.sht import InverseRealSHT, RealSHT, gauss_legendre_grid, legendre, sh_evaluate
from graphop.layers.spherical import (SphereDecoder, SphereEncoder, SphereGrid,
                                      SphericalGlobalBranch, SphericalSpectralConv,
                                      cap_kernel_mass, sphere_decoder_matrix)
from graphop.testing import (check_batch_consistency, check_convergence_rate,
                             check_permutation_equivariance, check_refinement_convergence)

torch.set_num_threads(1)
F64 = torch.float64


def _random_coeffs(lmax, mmax, shape=(), seed=0, lband=None):
    """Random coefficients of a real field band-limited to degree ``lband`` (default lmax)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(*shape, lmax + 1, mmax + 1, 2, generator=g, dtype=F64)
    c = torch.view_as_complex(c)
    l, m = torch.meshgrid(torch.arange(lmax + 1), torch.arange(mmax + 1), indexing="ij")
    keep = (m <= l) & (l <= (lmax if lband is None else lband))
    c = torch.where(keep, c, torch.zeros_like(c))
    c[..., 0] = c[..., 0].real.to(c.dtype)   # m = 0 of a real field is real
    return c


def _grid_points(nlat, nlon):
    colat, _, lon = gauss_legendre_grid(nlat, nlon)
    C, L = np.meshgrid(colat, lon, indexing="ij")
    return C.ravel(), L.ravel()


# ---------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("nlat,nlon", [(16, 32), (9, 19), (5, 8)])
def test_sht_round_trip_of_band_limited_fields(nlat, nlon):
    fwd, inv = RealSHT(nlat, nlon), InverseRealSHT(nlat, nlon)
    c = _random_coeffs(fwd.lmax, fwd.mmax, (3, 2), seed=nlat)
    f = inv(c)
    assert f.shape == (3, 2, nlat, nlon) and f.dtype == F64
    assert float((fwd(f) - c).abs().max()) < 1e-10
    assert float((inv(fwd(f)) - f).abs().max()) < 1e-10
    # the synthesis is the field of the coefficients at the grid points
    colat, lon = _grid_points(nlat, nlon)
    direct = sh_evaluate(c, colat, lon).reshape(3, 2, nlat, nlon)
    assert np.abs(direct - f.numpy()).max() < 1e-10


def test_sht_of_known_harmonics():
    nlat, nlon = 10, 20
    colat, lon = (a.reshape(nlat, nlon) for a in _grid_points(nlat, nlon))
    fields = torch.tensor(np.stack([
        np.ones_like(colat),                                # sqrt(4 pi) Y_00
        math.sqrt(3 / (4 * math.pi)) * np.cos(colat),       # Y_10
        np.sin(colat) * np.cos(lon),                        # -sqrt(2 pi / 3) (Y_11 - Y_1-1)/..
        np.sin(colat) ** 2 * np.sin(2 * lon),               # x y = sqrt(2 pi / 15) Im part, l=2
    ]))
    c = RealSHT(nlat, nlon)(fields)
    expect = torch.zeros_like(c)
    expect[0, 0, 0] = math.sqrt(4 * math.pi)
    expect[1, 1, 0] = 1.0
    expect[2, 1, 1] = -math.sqrt(2 * math.pi / 3)
    # sin^2 sin(2 phi) = 2 Re(c Y_22), Y_22 = sqrt(15 / (32 pi)) sin^2 e^{2 i phi}
    expect[3, 2, 2] = -0.5j / math.sqrt(15 / (32 * math.pi))
    assert float((c - expect).abs().max()) < 1e-12


def test_legendre_functions_are_orthonormal_at_high_degree():
    lmax = 300   # the unnormalised P_l^m overflow far below this
    x, w = np.polynomial.legendre.leggauss(lmax + 1)
    P = legendre(lmax, 40, x)
    assert np.isfinite(P).all()
    for m in (0, 7, 40):
        gram = 2 * np.pi * (P[m] * w) @ P[m].T          # int Pbar_lm Pbar_l'm dOmega
        sub = gram[m:, m:]
        assert np.abs(sub - np.eye(lmax + 1 - m)).max() < 1e-10


def test_sht_matches_ducc0_reference():
    ducc0 = pytest.importorskip("ducc0")
    nlat, nlon = 12, 25
    fwd = RealSHT(nlat, nlon)
    x = torch.randn(nlat, nlon, dtype=F64, generator=torch.Generator().manual_seed(3))
    c = fwd(x).numpy()
    L, M = fwd.lmax, fwd.mmax
    alm = ducc0.sht.analysis_2d(map=x.numpy()[None], spin=0, lmax=L, mmax=M, geometry="GL")[0]
    ref = np.zeros_like(c)
    for m in range(M + 1):   # ducc0 / healpy packing: m major, index m (2 L + 1 - m) / 2 + l
        ref[m:, m] = alm[m * (2 * L + 1 - m) // 2 + np.arange(m, L + 1)]
    assert np.abs(c - ref).max() < 1e-10 * np.abs(ref).max()


def test_sht_gradcheck():
    fwd, inv = RealSHT(4, 7), InverseRealSHT(4, 7)
    x = torch.randn(2, 4, 7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(fwd, (x,))
    c = torch.randn(2, fwd.lmax + 1, fwd.mmax + 1, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(inv, (c,))


def test_sht_rejects_unresolvable_band_limits():
    with pytest.raises(InputError):
        RealSHT(8, 16, lmax=8)           # lmax > nlat - 1
    with pytest.raises(InputError):
        RealSHT(8, 16, lmax=7, mmax=8)   # 2 mmax >= nlon
    with pytest.raises(InputError):
        RealSHT(8, 16)(torch.zeros(8, 15))


# ---------------------------------------------------------------------------- convolution
@torch.no_grad()
def test_identity_weights_reproduce_band_limited_input():
    nlat, nlon, L = 12, 24, 7
    x = InverseRealSHT(nlat, nlon, L, L)(_random_coeffs(L, L, (2, 3), seed=1))
    conv = SphericalSpectralConv(3, 3, L).double()
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3, dtype=F64).expand(L + 1, 3, 3))
    assert float((conv(x) - x).abs().max()) < 1e-12
    lm = SphericalSpectralConv(3, 3, L, weights="degree_order")
    with torch.no_grad():
        lm.weight.copy_(torch.eye(3).expand(L + 1, L + 1, 3, 3).to(lm.weight.dtype))
    assert float((lm(x) - x).abs().max()) < 1e-12
    # the same weights on a finer grid: still the same band-limited field
    x2 = InverseRealSHT(20, 40, L, L)(_random_coeffs(L, L, (2, 3), seed=1))
    assert float((conv(x2) - x2).abs().max()) < 1e-12


@torch.no_grad()
def test_degree_conv_damps_degrees_by_their_weight():
    nlat, nlon, L = 10, 20, 6
    conv = SphericalSpectralConv(1, 1, L).double()
    with torch.no_grad():
        conv.weight.copy_(torch.arange(L + 1, dtype=F64).reshape(-1, 1, 1))   # W[l] = l
    c = _random_coeffs(L, L, (1, 1), seed=4)
    y = RealSHT(nlat, nlon, L, L)(conv(InverseRealSHT(nlat, nlon, L, L)(c)))
    assert float((y - c * torch.arange(L + 1).reshape(-1, 1)).abs().max()) < 1e-12


def _rotation(axis, angle):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _field_on(c, pts):
    u = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    return sh_evaluate(c, np.arccos(np.clip(u[:, 2], -1, 1)), np.arctan2(u[:, 1], u[:, 0]))


@torch.no_grad()
def test_degree_conv_is_rotation_equivariant():
    nlat, nlon, L = 12, 24, 6
    torch.manual_seed(0)
    conv = SphericalSpectralConv(2, 3, L).double()
    c = _random_coeffs(L, L, (2,), seed=7)
    x = InverseRealSHT(nlat, nlon, L, L)(c)[None]                       # [1, 2, nlat, nlon]
    y = conv(x)
    # about the z axis by a grid multiple: a shift in longitude, exactly
    assert float((conv(torch.roll(x, 5, dims=-1)) - torch.roll(y, 5, dims=-1)).abs().max()) < 1e-12
    # about an arbitrary axis: (K f)(Q^T z) = K(f o Q^T)(z), evaluated exactly through the
    # coefficients (rotations keep the degree, so every field here is band-limited to L)
    Q = _rotation([0.3, -0.8, 0.5], 1.1)
    nodes = SphereGrid(nlat, nlon).nodes()
    x_rot = torch.tensor(_field_on(c, nodes @ Q).reshape(1, 2, nlat, nlon))   # f(Q^T z)
    cy = RealSHT(nlat, nlon, L, L)(y[0])
    y_rot = torch.tensor(_field_on(cy, nodes @ Q).reshape(1, 3, nlat, nlon))
    err = float((conv(x_rot) - y_rot).abs().max())
    assert err < 1e-10 * float(y.abs().max())
    # the per-(l, m) weights are not: the same test fails by O(1)
    lm = SphericalSpectralConv(2, 3, L, weights="degree_order")
    y_lm = lm(x)
    cy = RealSHT(nlat, nlon, L, L)(y_lm[0])
    y_rot = torch.tensor(_field_on(cy, nodes @ Q).reshape(1, 3, nlat, nlon))
    assert float((lm(x_rot) - y_rot).abs().max()) > 0.05 * float(y_lm.abs().max())
    assert float((lm(torch.roll(x, 5, -1)) - torch.roll(y_lm, 5, -1)).abs().max()) < 1e-12


def test_conv_checks_grid_and_keeps_no_state_but_weights():
    conv = SphericalSpectralConv(2, 2, 7)
    with pytest.raises(InputError):
        conv(torch.zeros(1, 2, 6, 16))        # nlat < lmax + 1
    conv(torch.zeros(1, 2, 8, 16))
    assert list(conv.state_dict()) == ["weight"]
    assert "lmax=7" in repr(conv)


# ---------------------------------------------------------------------------- encoder / decoder
def _sphere_data(n, radius=1.0):
    return fibonacci_sphere(n, radius=radius).to_data(dtype=F64)


def test_encoder_maps_constants_to_constants_and_occupancy_is_one():
    d = _sphere_data(3000, radius=2.5)
    enc = SphereEncoder((12, 24))
    g, occ = enc(torch.full((d.num_nodes, 2), -1.75, dtype=F64), d)
    assert g.shape == (1, 2, 12, 24) and occ.shape == (1, 1, 12, 24)
    assert float((g + 1.75).abs().max()) < 1e-12
    assert float((occ - 1).abs().max()) < 2e-3   # Voronoi quadrature of the bump: 2.3e-4


def test_encoder_of_a_cap_leaves_uncovered_nodes_empty_and_warns():
    full = fibonacci_sphere(2000)
    keep = full.points[:, 2] > 0.2
    d = Data(pos=torch.tensor(full.points[keep]), weight=torch.tensor(full.weights[keep]))
    enc = SphereEncoder((12, 24))
    with pytest.warns(GraphopWarning, match=r"latent nodes .* have no mesh point"):
        g, occ = enc(torch.full((d.num_nodes, 1), 3.0, dtype=F64), d)
    colat, edge = SphereGrid(12, 24).colatitudes(), math.acos(0.2)   # the cap: colat < edge
    far = colat > edge + enc.rho + 0.05           # rings out of reach of the cap
    inside = colat < edge - enc.rho - 0.05        # rings whose whole ball lies in the cap
    assert far.any() and inside.any()
    assert float(g[0, 0][far].abs().max()) == 0 and float(occ[0, 0][far].abs().max()) == 0
    assert float((g[0, 0][inside] - 3).abs().max()) < 1e-12
    assert float((occ[0, 0][inside] - 1).abs().max()) < 0.03
    covered = occ[0, 0] > 0
    assert float((g[0, 0][covered] - 3).abs().max()) < 1e-12


def test_cap_kernel_mass():
    rho = 0.4
    t = np.linspace(0, rho, 200001)
    f = (1 - (t / rho) ** 2) ** 2 * np.sin(t)
    assert abs(cap_kernel_mass(rho) - 2 * np.pi * np.trapezoid(f, t)) < 1e-9
    assert abs(cap_kernel_mass(1e-3) / (np.pi * 1e-6 / 3) - 1) < 1e-5


def test_decoder_is_second_order_including_the_poles():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3000, 3))
    # points in both polar caps (above the first ring) and exactly at the poles
    cap = np.column_stack([0.01 * rng.standard_normal((200, 2)), np.ones(200)])
    q = np.vstack([q, cap, cap * [1, 1, -1], [[0, 0, 1], [0, 0, -1]]])
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def f(p):
        return np.exp(p[:, 0] + 0.5 * p[:, 1]) * np.cos(2 * p[:, 2]) + p[:, 2]

    h, errs, caps = [], [], []
    for nlat in (8, 16, 32, 64):
        grid = SphereGrid(nlat, 2 * nlat)
        D = sphere_decoder_matrix(q, grid)
        assert D.getnnz(axis=1).max() <= 4
        assert np.abs(np.asarray(D.sum(axis=1)).ravel() - 1).max() < 1e-14
        h.append(np.pi / nlat)
        err = np.abs(D @ f(grid.nodes()) - f(q))
        errs.append(err.max())
        caps.append(err[3000:].max())
    # measured max errors 0.31, 0.085, 0.021, 0.0056 (rate 1.93); in the polar caps 0.11,
    # 0.030, 0.0077, 0.0019 (rate 1.95)
    rate = check_convergence_rate(h, errs, min_rate=1.8)
    assert rate < 2.3
    check_convergence_rate(h, caps, min_rate=1.8)
    # the decoder module gives the matrix product, on any radius
    d = Data(pos=torch.tensor(3.0 * q))
    dec = SphereDecoder((16, 32))
    vals = torch.tensor(f(SphereGrid(16, 32).nodes())).reshape(1, 1, 16, 32)
    out = dec(vals, d)[:, 0].numpy()
    assert np.allclose(out, sphere_decoder_matrix(q, SphereGrid(16, 32)) @ vals.numpy().ravel())


def test_off_sphere_points_are_rejected():
    d = _sphere_data(200)
    d.pos = d.pos * torch.linspace(1, 1.1, 200, dtype=F64)[:, None]
    with pytest.raises(InputError, match="not on a sphere"):
        SphereEncoder((8, 16))(torch.ones(200, 1, dtype=F64), d)


# ---------------------------------------------------------------------------- global branch
def _branch(seed=0, **kw):
    torch.manual_seed(seed)
    return SphericalGlobalBranch(2, 3, latent_shape=(12, 24), **kw).double()


def _smooth_input(pos):
    p = pos / pos.norm(dim=1, keepdim=True)
    return torch.stack([torch.sin(2 * p[:, 0]) + p[:, 2], torch.exp(p[:, 1]) * p[:, 0]], 1)


def test_global_branch_converges_under_refinement():
    branch = _branch()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((400, 3))
    out = Data(pos=torch.tensor(q / np.linalg.norm(q, axis=1, keepdims=True)))
    outs = []
    for n in (500, 2000, 8000, 32000):
        d = _sphere_data(n)
        with torch.no_grad():
            outs.append(branch(_smooth_input(d.pos), d, out=out))
    # measured RMS differences 5.0e-4, 4.2e-5, 5.7e-6 (ratios 0.08, 0.14 per 4x points: faster
    # than the second order of the Voronoi quadrature on these smooth inputs)
    res = check_refinement_convergence(outs, np.arange(400), max_ratio=0.3)
    assert res["differences"][-1] < 2e-5


def test_global_branch_batch_of_different_meshes_equals_each_alone():
    branch = _branch(weights="degree_order")
    d1, d2 = _sphere_data(700), _sphere_data(1100, radius=2.0)
    xs = [_smooth_input(d.pos) for d in (d1, d2)]
    check_batch_consistency(branch, [d1, d2], xs, atol=1e-10)
    # one mesh shared by the whole batch (the folded operators) equals it alone
    b = Batch.from_data_list([d1, d1, d1])
    x = torch.cat([xs[0], 2 * xs[0], -xs[0]])
    y = branch(x, b)
    alone = torch.cat([branch(s * xs[0], d1) for s in (1, 2, -1)])
    assert float((y - alone).detach().abs().max()) < 1e-10


def test_global_branch_permutation_equivariance_and_gradients():
    branch = _branch()
    d = _sphere_data(600)
    check_permutation_equivariance(branch, d, _smooth_input(d.pos), atol=1e-10)
    small = SphericalGlobalBranch(1, 1, latent_shape=(4, 8), lmax=2).double()
    ds = _sphere_data(60)
    x = torch.randn(60, 1, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: small(v, ds), (x,))
    assert set(branch.state_dict()) == {"spectral.weight"}   # operators live in the cache


def test_global_branch_is_rotation_equivariant_about_the_axis_for_rotated_meshes():
    # rotating the mesh and its input by a latent-grid multiple about z gives the same output
    # at the rotated points (to the rounding of the rotated positions)
    branch = _branch()
    d = _sphere_data(1500)
    Q = torch.tensor(_rotation([0, 0, 1], 2 * np.pi * 3 / 24))
    rot = Data(pos=d.pos @ Q.T, weight=d.weight)
    x = _smooth_input(d.pos)
    assert float((branch(x, rot) - branch(x, d)).abs().max()) < 1e-8
