"""Gaussian random fields defined in physical space by a random Fourier series.

A field is a truncated, random Fourier series on a periodic box ``[lo, lo + L)^d`` chosen larger
than the domain, so the same sample is *one function of x*: evaluating it on two different meshes
of a domain gives the same function, and a point set gets exact values (no grid interpolation).

    g(x) = Re sum_{k in Z^d, |k_i| <= K, k != 0} c_k exp(2 pi i k . (x - lo) / L)
    c_k  = sigma * sqrt(S(k) / L^d) * (xi_k - i eta_k),   xi_k, eta_k ~ N(0, 1) i.i.d.
    S(k) = (4 pi^2 |k|^2 / L^2 + tau^2)^(-alpha)

(the 1 / L^d keeps the pointwise variance independent of the box: the physical spectrum is
S at the physical wave number 2 pi k / L, whatever box carries the lattice)

which is a Matern-like field with covariance operator (-Laplace + tau^2)^(-alpha), as in the FNO
benchmarks (Li et al., "Fourier Neural Operator for Parametric PDEs", ICLR 2021: alpha = 2,
tau = 3 for Darcy; alpha = 2.5, tau = 7 for Navier-Stokes initial vorticity). Each term
xi cos + eta sin is stationary, so the field is stationary on the torus.

Evaluation is separable: with E_a[n, k] = exp(2 pi i k x_{n,a} / L) per axis,
g = Re sum_{k1,k2} E_1[n,k1] C[k1,k2] E_2[n,k2] = Re(((E_1 @ C) * E_2).sum(1)) in 2D
(one more contraction in 3D), i.e. O(N K^d) work with dense BLAS, chunked over points.

Shapes:
    points [N, d] -> values [N]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphop.errors import InputError

__all__ = ["GaussianRandomField", "fourier_eval", "threshold"]


def _axis_exponentials(x: np.ndarray, freqs: np.ndarray, lo: float, length: float) -> np.ndarray:
    """exp(2 pi i k (x - lo) / L) for every point and frequency: [N, K].

    For the contiguous integer frequencies -K..K the powers of z = exp(2 pi i (x - lo) / L) are
    built by cumulative products (|z| = 1, so the recurrence is stable; error ~K ulp), which is
    several times faster than one complex exp per entry.
    """
    k = np.asarray(freqs)
    kmax = int(k.max())
    if np.array_equal(k, np.arange(-kmax, kmax + 1)) and kmax > 0:
        theta = (2 * np.pi / length) * (x - lo)
        z = np.cos(theta) + 1j * np.sin(theta)
        out = np.empty((2 * kmax + 1, len(x)), dtype=np.complex128)  # row-major in k: fast
        out[kmax] = 1.0
        out[kmax + 1] = z
        for j in range(kmax + 2, 2 * kmax + 1):  # loop over frequencies, vectorised over points
            np.multiply(out[j - 1], z, out=out[j])
        np.conjugate(out[kmax + 1:][::-1], out=out[:kmax])
        return out.T
    return np.exp((2j * np.pi / length) * np.outer(x - lo, k))


def fourier_eval(coeffs: np.ndarray, freqs: np.ndarray, points: np.ndarray,
                 lo=0.0, length=1.0, chunk: int = 8192) -> np.ndarray:
    """Evaluate Re sum_k coeffs[k] exp(2 pi i k . (x - lo) / L) at arbitrary points.

    Args:
        coeffs: complex [K] * d (a d-dimensional array over the frequency lattice).
        freqs: integer frequencies [K] of each lattice axis (same for all axes).
        points: [N, d] coordinates.
        lo: origin of the periodic box (scalar or [d]).
        length: period L of the box (scalar or [d]).
        chunk: points per block (bounds memory to chunk * K^(d-1) complex numbers).

    Returns:
        [N] float64 values. Exact for a trigonometric polynomial (no interpolation error).
    """
    points = np.asarray(points, dtype=np.float64)
    d = points.shape[1]
    if coeffs.ndim != d:
        raise InputError(f"coefficients have {coeffs.ndim} axes but points have dimension {d}")
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (d,))
    length = np.broadcast_to(np.asarray(length, dtype=np.float64), (d,))
    freqs = np.asarray(freqs, dtype=np.float64)
    out = np.empty(len(points))
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        e = [_axis_exponentials(p[:, a], freqs, lo[a], length[a]) for a in range(d)]
        if d == 1:
            v = e[0] @ coeffs
        elif d == 2:
            v = ((e[0] @ coeffs) * e[1]).sum(1)
        else:
            k = len(freqs)
            t = (e[0] @ coeffs.reshape(k, k * k)).reshape(len(p), k, k)  # [n, k2, k3]
            v = np.einsum("nab,na,nb->n", t, e[1], e[2], optimize=True)
        out[s:s + chunk] = v.real
    return out


@dataclass(frozen=True)
class GaussianRandomField:
    """A Matern-like Gaussian random field law on the periodic box [lo, lo + length)^dim.

    Args:
        dim: spatial dimension (1, 2 or 3).
        alpha: smoothness exponent of the spectrum (default 2.0).
        tau: inverse length scale (default 3.0).
        sigma: amplitude multiplier (default: tau^(alpha - dim/2), the FNO normalisation,
            which keeps the variance O(1) as tau changes).
        lo: origin of the periodic box (default 0.0).
        length: period of the box (default 1.0). Choose it larger than the domain (e.g. twice
            its diameter) when the domain is not itself periodic.
        n_modes: K, the largest |frequency| per axis (default 16, i.e. (2K+1)^d terms).
    """

    dim: int = 2
    alpha: float = 2.0
    tau: float = 3.0
    sigma: float | None = None
    lo: float | tuple = 0.0
    length: float = 1.0
    n_modes: int = 16

    def __post_init__(self):
        if self.dim not in (1, 2, 3):
            raise InputError(f"dim must be 1, 2 or 3, got {self.dim}")
        if not self.length > 0:
            raise InputError(f"length must be positive, got {self.length}")
        if self.n_modes < 1:
            raise InputError(f"n_modes must be >= 1, got {self.n_modes}")

    @property
    def freqs(self) -> np.ndarray:
        return np.arange(-self.n_modes, self.n_modes + 1)

    def spectrum(self) -> np.ndarray:
        """sigma^2 S(k) on the frequency lattice, [2K+1]^dim, zero at k = 0 (mean-free)."""
        k = self.freqs.astype(np.float64)
        grids = np.meshgrid(*([k] * self.dim), indexing="ij")
        k2 = sum(g**2 for g in grids)
        sigma = self.sigma if self.sigma is not None else self.tau ** (self.alpha - self.dim / 2)
        s = sigma**2 * (4 * np.pi**2 * k2 / self.length**2 + self.tau**2) ** (-self.alpha)
        s[(k2 == 0)] = 0.0
        # a finer lattice (larger box) has more terms: divide by L^d so the pointwise variance,
        # sum_k S(2 pi k / L) / L^d ~ (2 pi)^-d int S, does not depend on the box
        return s / self.length**self.dim

    def sample_coefficients(self, rng: np.random.Generator) -> np.ndarray:
        """Random complex coefficients c_k, [2K+1]^dim."""
        shape = (2 * self.n_modes + 1,) * self.dim
        xi = rng.standard_normal(shape)
        eta = rng.standard_normal(shape)
        return np.sqrt(self.spectrum()) * (xi - 1j * eta)

    def sample(self, rng: np.random.Generator) -> "FieldSample":
        """One random function of x (call it on points)."""
        return FieldSample(self.sample_coefficients(rng), self.freqs, self.lo, self.length)


@dataclass(frozen=True)
class FieldSample:
    """One sample of a :class:`GaussianRandomField`: ``sample(points) -> values [N]``."""

    coeffs: np.ndarray
    freqs: np.ndarray
    lo: float | tuple
    length: float

    def __call__(self, points) -> np.ndarray:
        return fourier_eval(self.coeffs, self.freqs, points, self.lo, self.length)


def threshold(values: np.ndarray, high: float = 12.0, low: float = 3.0) -> np.ndarray:
    """The FNO Darcy coefficient: ``high`` where values >= 0, ``low`` elsewhere."""
    return np.where(np.asarray(values) >= 0.0, high, low)
