"""Pseudo-spectral Navier-Stokes on the torus and exact spectral sampling at scattered points."""
import numpy as np
import pytest
from scipy import fft

from graphop.data.navier_stokes import (advection, fno_forcing, ns_sample, sample_at_points,
                                        solve_navier_stokes, spectral_coefficients, wavenumbers)

PI = np.pi


def grid(s):
    x = np.arange(s) / s
    return np.meshgrid(x, x, indexing="ij")


def test_taylor_green_decay():
    """w = A sin(2 pi x) sin(2 pi y) is a steady Euler flow; with viscosity it decays as
    exp(-8 pi^2 nu t). Crank-Nicolson is second order in time."""
    x, y = grid(32)
    w0 = 3.0 * np.sin(2 * PI * x) * np.sin(2 * PI * y)
    nu, t = 0.01, 1.0
    exact = w0 * np.exp(-8 * PI**2 * nu * t)
    w = solve_navier_stokes(w0, t, nu, forcing=None, dt_max=0.01)
    assert np.abs(w - exact).max() < 1e-5 * np.abs(w0).max()
    # temporal order with coarse steps (nu dt |k|^2 = 0.4 and 0.2)
    errs = [np.abs(solve_navier_stokes(w0, t, 0.05, None, dt_max=dt) -
                   w0 * np.exp(-8 * PI**2 * 0.05 * t)).max() for dt in (0.1, 0.05)]
    assert 3.5 < errs[0] / errs[1] < 4.5


def test_advection_closed_form():
    """w = sin(2 pi x) + cos(4 pi y): psi = sin(2 pi x)/(4 pi^2) + cos(4 pi y)/(16 pi^2),
    u = psi_y, v = -psi_x, so u w_x + v w_y = 1.5 cos(2 pi x) sin(4 pi y)."""
    s = 32
    x, y = grid(s)
    w = np.sin(2 * PI * x) + np.cos(4 * PI * y)
    kx, ky, mask = wavenumbers(s)
    n_hat, umax = advection(fft.rfft2(w), kx, ky, mask)
    np.testing.assert_allclose(fft.irfft2(n_hat, s=(s, s)),
                               1.5 * np.cos(2 * PI * x) * np.sin(4 * PI * y), atol=1e-12)
    assert umax == pytest.approx(np.hypot(1 / (4 * PI), 1 / (2 * PI)), rel=1e-2)


def test_inviscid_invariants():
    """Without viscosity and forcing the dealiased Galerkin system conserves energy and
    enstrophy (up to the small time-stepping error)."""
    s = 32
    rng = np.random.default_rng(0)
    kx, ky, mask = wavenumbers(s)
    w_hat = (rng.standard_normal(kx.shape) + 1j * rng.standard_normal(ky.shape[1])) * mask
    w_hat *= np.exp(-(kx**2 + ky**2) / (2 * (2 * PI * 4) ** 2))
    w0 = fft.irfft2(w_hat, s=(s, s))
    w0 *= 10.0 / np.abs(w0).max()
    w1 = solve_navier_stokes(w0, 0.5, 0.0, forcing=None, dt_max=2e-3)
    assert np.abs(w1 - w0).max() > 0.05 * np.abs(w0).max()  # it did evolve

    def energy(w):
        wh = np.fft.fft2(w)
        k2 = (2 * PI) ** 2 * (np.fft.fftfreq(s, 1 / s)[:, None] ** 2
                              + np.fft.fftfreq(s, 1 / s)[None] ** 2)
        k2[0, 0] = np.inf
        return (np.abs(wh) ** 2 / k2).sum()

    assert abs((w1**2).sum() / (w0**2).sum() - 1) < 1e-4
    assert abs(energy(w1) / energy(w0) - 1) < 1e-4


def test_spectral_sampling_is_exact():
    """A trigonometric polynomial within the band is recovered exactly at any point."""
    s = 48
    x, y = grid(s)

    def f(x, y):
        return np.sin(2 * PI * (3 * x - y)) + 0.5 * np.cos(2 * PI * 5 * y) + 0.25

    pts = np.random.default_rng(1).random((500, 2)) * 3 - 1  # outside [0,1) too: periodic
    np.testing.assert_allclose(sample_at_points(f(x, y), pts), f(pts[:, 0], pts[:, 1]),
                               atol=1e-12)
    c = spectral_coefficients(f(x, y))
    assert c.shape == (2 * 16 + 1,) * 2
    with pytest.raises(ValueError, match="n_modes"):
        spectral_coefficients(f(x, y), 24)


def test_ns_sample_deterministic_and_forced():
    a = ns_sample(np.random.default_rng([7, 1]), 300, grid=32, t0=0.2, horizon=0.2)
    b = ns_sample(np.random.default_rng([7, 1]), 300, grid=32, t0=0.2, horizon=0.2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["points"].shape == (300, 2) and a["w0"].shape == (300,)
    assert np.all((a["points"] >= 0) & (a["points"] < 1))
    assert a["weight"].sum() == pytest.approx(1.0)
    assert np.abs(a["w1"] - a["w0"]).max() > 1e-3
    # the FNO forcing
    p = np.array([[0.125, 0.0], [0.3, 0.2]])
    np.testing.assert_allclose(fno_forcing(p), 0.1 * (np.sin(2 * PI * p.sum(1))
                                                      + np.cos(2 * PI * p.sum(1))))


def test_bad_input():
    with pytest.raises(ValueError, match="square grid"):
        solve_navier_stokes(np.zeros((8, 6)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        solve_navier_stokes(np.zeros((8, 8)), -1.0)
