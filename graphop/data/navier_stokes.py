"""2D incompressible Navier-Stokes on the periodic unit torus, vorticity form, pseudo-spectral.

    w_t + u . grad(w) = nu Laplace(w) + f,     u = (psi_y, -psi_x),   -Laplace(psi) = w,

on [0, 1)^2 with the forcing of the FNO benchmark (Li et al., ICLR 2021),
f(x, y) = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y))).

Space: Fourier pseudo-spectral on an s x s grid, the nonlinear term computed in physical space
and dealiased by the 2/3 rule (modes with |k_x| or |k_y| > s/3 are zeroed). Time: Crank-Nicolson
for the viscous term and Heun (explicit trapezoidal, second order) for advection and forcing:

    w*      = [(1 - dt nu |k|^2 / 2) w_n + dt F(w_n)] / (1 + dt nu |k|^2 / 2)
    w_{n+1} = [(1 - dt nu |k|^2 / 2) w_n + dt (F(w_n) + F(w*)) / 2] / (1 + dt nu |k|^2 / 2)

with F = -u . grad(w) + f in Fourier space, and a CFL-limited step dt <= cfl * dx / max|u|.

Sampling: the solution is a trigonometric polynomial of degree s/3, so it is evaluated at any
scattered points *exactly* by summing its Fourier series there
(:func:`~graphop.data.grf.fourier_eval`), not by interpolating between grid nodes.

Shapes:
    grid fields [s, s] (axis 0 = x, axis 1 = y); points [P, 2] in [0, 1)^2 -> values [P]
"""
from __future__ import annotations

import numpy as np
from scipy import fft

from graphop.data.grf import GaussianRandomField, fourier_eval
from graphop.errors import InputError

__all__ = ["fno_forcing", "wavenumbers", "velocity", "advection", "solve_navier_stokes",
           "spectral_coefficients", "sample_at_points", "ns_sample", "NS_INITIAL_GRF"]

#: initial vorticity law of the FNO benchmark: N(0, 7^3 (-Laplace + 49)^-2.5) on the unit torus
NS_INITIAL_GRF = dict(alpha=2.5, tau=7.0)


def fno_forcing(points) -> np.ndarray:
    """f(x, y) = 0.1 (sin(2 pi (x + y)) + cos(2 pi (x + y))) at points [..., 2]."""
    p = np.asarray(points)
    t = 2 * np.pi * (p[..., 0] + p[..., 1])
    return 0.1 * (np.sin(t) + np.cos(t))


def wavenumbers(s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Angular wavenumbers (2 pi k) of the rfft2 layout, [s, 1] and [1, s//2 + 1], and the
    2/3-rule dealiasing mask [s, s//2 + 1]."""
    kx = 2 * np.pi * np.fft.fftfreq(s, 1.0 / s)[:, None]
    ky = 2 * np.pi * np.fft.rfftfreq(s, 1.0 / s)[None, :]
    cut = s / 3.0
    mask = (np.abs(kx) / (2 * np.pi) <= cut) & (np.abs(ky) / (2 * np.pi) <= cut)
    return kx, ky, mask


def _grid_points(s: int) -> np.ndarray:
    x = np.arange(s) / s
    return np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1)


def velocity(w_hat, kx, ky) -> tuple[np.ndarray, np.ndarray]:
    """Velocity (u, v) on the grid from the vorticity's rfft2 coefficients."""
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    psi = w_hat / k2
    psi[0, 0] = 0.0
    s = w_hat.shape[0]
    u = fft.irfft2(1j * ky * psi, s=(s, s))
    v = fft.irfft2(-1j * kx * psi, s=(s, s))
    return u, v


def advection(w_hat, kx, ky, mask) -> tuple[np.ndarray, float]:
    """The dealiased advection term u . grad(w) in Fourier space, and max |u| on the grid."""
    s = w_hat.shape[0]
    u, v = velocity(w_hat, kx, ky)
    wx = fft.irfft2(1j * kx * w_hat, s=(s, s))
    wy = fft.irfft2(1j * ky * w_hat, s=(s, s))
    n_hat = fft.rfft2(u * wx + v * wy) * mask
    return n_hat, float(np.sqrt((u**2 + v**2).max()))


def solve_navier_stokes(w0, t_final: float, nu: float = 1e-4, forcing=fno_forcing,
                        dt_max: float = 1e-2, cfl: float = 0.5, record=None) -> np.ndarray:
    """Integrate from the grid vorticity ``w0`` [s, s] over ``t_final`` time units.

    Args:
        w0: initial vorticity on the s x s grid (x along axis 0).
        t_final: integration time (>= 0).
        nu: viscosity (default 1e-4).
        forcing: callable points [..., 2] -> values, or None for no forcing.
        dt_max: largest time step (default 1e-2).
        cfl: the step also obeys dt <= cfl * (1 / s) / max|u| (default 0.5).
        record: optional list; (t, w_grid) pairs are appended after every step.

    Returns:
        the vorticity at t_final, [s, s].
    """
    w0 = np.asarray(w0, dtype=np.float64)
    s = w0.shape[0]
    if w0.shape != (s, s):
        raise InputError(f"w0 must be a square grid [s, s], got {w0.shape}")
    if t_final < 0 or nu < 0:
        raise InputError(f"t_final and nu must be non-negative, got {t_final} and {nu}")
    kx, ky, mask = wavenumbers(s)
    k2 = kx**2 + ky**2
    f_hat = 0.0 if forcing is None else fft.rfft2(forcing(_grid_points(s))) * mask
    w_hat = fft.rfft2(w0) * mask
    t = 0.0
    while t < t_final - 1e-12:
        n1, umax = advection(w_hat, kx, ky, mask)
        dt = min(dt_max, t_final - t, cfl / (s * max(umax, 1e-12)))
        lhs = 1.0 + 0.5 * dt * nu * k2
        rhs_lin = (1.0 - 0.5 * dt * nu * k2) * w_hat
        f1 = f_hat - n1
        w_star = (rhs_lin + dt * f1) / lhs
        n2, _ = advection(w_star, kx, ky, mask)
        w_hat = (rhs_lin + 0.5 * dt * (f1 + f_hat - n2)) / lhs
        t += dt
        if record is not None:
            record.append((t, fft.irfft2(w_hat, s=(s, s))))
    return fft.irfft2(w_hat, s=(s, s))


def spectral_coefficients(w, n_modes: int | None = None) -> np.ndarray:
    """Coefficients c[k1, k2], k in -K..K, with w(x) = Re sum c_k exp(2 pi i k . x) at the grid
    nodes (K = s//3 by default, the dealiased band; the Nyquist mode is dropped)."""
    w = np.asarray(w, dtype=np.float64)
    s = w.shape[0]
    k = s // 3 if n_modes is None else int(n_modes)
    if not 0 < k < s / 2:
        raise InputError(f"n_modes must be in 1..{(s - 1) // 2} for a {s} x {s} grid, got {k}")
    w_hat = np.fft.fft2(w) / s**2
    idx = np.r_[np.arange(-k, 0) % s, np.arange(0, k + 1)]
    return w_hat[np.ix_(idx, idx)]


def sample_at_points(w, points, n_modes: int | None = None) -> np.ndarray:
    """Exact values at ``points`` [P, 2] of the band-limited field with grid values ``w``."""
    c = spectral_coefficients(w, n_modes)
    k = (c.shape[0] - 1) // 2
    return fourier_eval(c, np.arange(-k, k + 1), np.asarray(points) % 1.0, 0.0, 1.0)


def ns_sample(rng: np.random.Generator, n_points: int, grid: int = 64, nu: float = 1e-4,
              t0: float = 1.0, horizon: float = 1.0, dt_max: float = 1e-2,
              forcing=fno_forcing) -> dict[str, np.ndarray]:
    """One sample of the map w(t0) -> w(t0 + horizon) at ``n_points`` uniform random points.

    The initial vorticity at t = 0 is drawn from :data:`NS_INITIAL_GRF` (band-limited to the
    grid's dealiased modes), run to t0, then to t0 + horizon.

    Returns ``{"points": [P, 2], "w0": [P], "w1": [P], "weight": [P]}``; the weights are the
    Monte Carlo quadrature 1 / P of uniform points on the unit torus.
    """
    grf = GaussianRandomField(dim=2, n_modes=grid // 3, lo=0.0, length=1.0, **NS_INITIAL_GRF)
    w_init = grf.sample(rng)(_grid_points(grid).reshape(-1, 2)).reshape(grid, grid)
    points = rng.random((n_points, 2))
    w_a = solve_navier_stokes(w_init, t0, nu, forcing, dt_max)
    w_b = solve_navier_stokes(w_a, horizon, nu, forcing, dt_max)
    return {"points": points, "w0": sample_at_points(w_a, points),
            "w1": sample_at_points(w_b, points), "weight": np.full(n_points, 1.0 / n_points)}
