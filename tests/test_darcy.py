"""Darcy solver (P1 FEM), Gaussian random fields and the 2D domain families."""
import numpy as np
import pytest

from graphop.data.darcy import DARCY_GRF, darcy_sample, solve_darcy
from graphop.data.domains_random import DOMAINS_2D, mesh_domain
from graphop.data.fem import boundary_nodes, l2_error
from graphop.data.grf import GaussianRandomField, fourier_eval, threshold
from graphop.geometry.mesh import Mesh

PI = np.pi


def exact_u(p):
    return np.sin(PI * p[:, 0]) * np.sin(PI * p[:, 1]) + p[:, 0] * p[:, 1]


def coeff(p):
    return 1 + p[:, 0] ** 2 + 0.5 * np.sin(3 * p[:, 1])


def source(p):
    x, y = p[:, 0], p[:, 1]
    ux = PI * np.cos(PI * x) * np.sin(PI * y) + y
    uy = PI * np.sin(PI * x) * np.cos(PI * y) + x
    lap = -2 * PI**2 * np.sin(PI * x) * np.sin(PI * y)
    return -(coeff(p) * lap + 2 * x * ux + 1.5 * np.cos(3 * y) * uy)


@pytest.mark.parametrize("family", ["square", "lshape", "disk"])
def test_manufactured_solution_second_order(family):
    """-div(a grad u) = f with variable a and u = g on the boundary: L2 error O(h^2) on
    irregular meshes."""
    hs, errs = [], []
    for n in (150, 600, 2400):
        p, t = mesh_domain(family, n, np.random.default_rng(n))
        u = solve_darcy(p, t, coeff(p[t].mean(axis=1)), f=source(p), g=exact_u(p))
        hs.append(np.sqrt(Mesh(p, {"triangle": t}).measure / len(t)))
        errs.append(l2_error(p, t, u, exact_u))
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert order > 1.8, (family, order, errs)
    assert errs[-1] < 2e-3


def test_torsion_constant_and_scaling():
    """-Laplace(u) = 1 on the unit square: max u = 0.0736713 (series solution); with a = c the
    solution is u / c."""
    p, t = mesh_domain("square", 4000, np.random.default_rng(0))
    u1 = solve_darcy(p, t, 1.0)
    u4 = solve_darcy(p, t, np.full(len(t), 4.0))
    assert abs(u1.max() - 0.0736713) < 2e-4
    np.testing.assert_allclose(u4, u1 / 4, rtol=1e-10, atol=1e-14)
    assert np.all(u1[boundary_nodes(t, len(p))] == 0)


def test_darcy_sample_fields():
    p, t = mesh_domain("disk", 800, np.random.default_rng(1))
    s = darcy_sample(p, t, np.random.default_rng(5))
    assert set(np.unique(s["a"])) <= {3.0, 12.0} and len(np.unique(s["a"])) == 2
    b = boundary_nodes(t, len(p))
    assert np.all(s["u"][b] == 0) and np.all(s["u"][~b] > 0)
    # bounded by the torsion functions of a = 3 and a = 12 (comparison principle; the discrete
    # one is exact only for M-matrices, so allow 1% of the maximum)
    u_lo, u_hi = solve_darcy(p, t, 12.0), solve_darcy(p, t, 3.0)
    tol = 0.01 * u_hi.max()
    assert np.all(s["u"] >= u_lo - tol) and np.all(s["u"] <= u_hi + tol)
    assert s["u"].max() > 1.2 * u_lo.max() and s["u"].max() < 0.9 * u_hi.max()
    s2 = darcy_sample(p, t, np.random.default_rng(5))
    np.testing.assert_array_equal(s["u"], s2["u"])


def test_grf_is_a_function_of_space():
    """The same sample on two different meshes agrees at the points they share, and the fast
    separable evaluation equals the naive Fourier sum."""
    f = DARCY_GRF.sample(np.random.default_rng(3))
    p1, _ = mesh_domain("square", 300, np.random.default_rng(1))
    p2, _ = mesh_domain("square", 1200, np.random.default_rng(2))
    common = np.array([[0.0, 0.0], [1.0, 1.0], [0.3, 0.7]])
    v1 = f(np.concatenate([p1, common]))[-3:]
    v2 = f(np.concatenate([common, p2]))[:3]
    np.testing.assert_allclose(v1, v2, atol=1e-12)
    for dim in (2, 3):
        g = GaussianRandomField(dim=dim, n_modes=3, lo=-1.0, length=2.5)
        c = g.sample_coefficients(np.random.default_rng(dim))
        x = np.random.default_rng(9).random((50, dim))
        k = np.stack(np.meshgrid(*[g.freqs] * dim, indexing="ij"), -1).reshape(-1, dim)
        naive = (c.reshape(-1)[None] * np.exp(2j * PI * (x + 1.0) @ k.T / 2.5)).sum(1).real
        np.testing.assert_allclose(fourier_eval(c, g.freqs, x, -1.0, 2.5, chunk=7), naive,
                                   atol=1e-10)


def test_grf_variance_matches_spectrum():
    g = GaussianRandomField(dim=2, alpha=2.0, tau=3.0, n_modes=8)
    x = np.random.default_rng(0).random((64, 2))
    vals = np.stack([g.sample(np.random.default_rng(i))(x) for i in range(400)])
    # each term sqrt(S)(xi cos + eta sin) has variance S: the pointwise variance is sum S
    np.testing.assert_allclose(vals.var(axis=0).mean(), g.spectrum().sum(), rtol=0.1)
    assert np.all(threshold(np.array([-1.0, 0.0, 2.0])) == [3.0, 12.0, 12.0])


@pytest.mark.parametrize("family", DOMAINS_2D)
def test_domain_families(family):
    rng = np.random.default_rng(4)
    p, t = mesh_domain(family, 1000, rng)
    m = Mesh(p, {"triangle": t})
    assert 0.9 * 1000 <= m.n_points <= 1.1 * 1000
    assert m.warnings() == []
    area = {"square": 1.0, "lshape": 0.75, "disk": PI / 4}.get(family)
    if area is not None:
        assert abs(m.measure - area) < 0.01 * area
    # random families change with the generator, fixed ones only in their node placement
    p2, _ = mesh_domain(family, 1000, np.random.default_rng(5))
    assert len(p2) != len(p) or not np.allclose(p2, p)


def test_bad_input():
    p, t = mesh_domain("square", 100)
    with pytest.raises(ValueError, match="positive"):
        solve_darcy(p, t, -1.0)
    with pytest.raises(ValueError, match="one value per triangle"):
        solve_darcy(p, t, np.ones(len(p)))
    with pytest.raises(ValueError, match="unknown 2D domain"):
        mesh_domain("hexagon", 100)
