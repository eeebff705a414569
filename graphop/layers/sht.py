"""Real spherical harmonic transforms on a Gauss-Legendre latitude-longitude grid (torch).

**Grid.** ``nlat`` Gauss-Legendre latitudes listed from north to south (colatitude theta_k
increasing, x_k = cos theta_k the Gauss-Legendre nodes on [-1, 1] in decreasing order, weights
w_k), and ``nlon`` equally spaced longitudes phi_j = 2 pi j / nlon (j = 0..nlon-1). The same
layout as :func:`graphop.geometry.sphere.latlon_grid` with ``kind="gauss"`` and as
torch-harmonics: a field is a tensor [..., nlat, nlon].

**Harmonics.** Orthonormal complex harmonics with the Condon-Shortley phase,

    Y_lm(theta, phi) = Pbar_lm(cos theta) exp(i m phi),   int_{S^2} |Y_lm|^2 dOmega = 1,
    Pbar_lm(x) = (-1)^m sqrt((2l + 1) / (4 pi) (l - m)! / (l + m)!) P_l^m(x)

(so Y_00 = 1 / sqrt(4 pi), Y_10 = sqrt(3 / (4 pi)) cos theta). A real field is stored by its
coefficients for m >= 0 only (c_{l,-m} = (-1)^m conj(c_lm)), a complex tensor
[..., lmax + 1, mmax + 1] (degree l along the first axis, order m along the second; entries
with m > l are 0), the layout of torch-harmonics:

    forward   c_lm = int f conj(Y_lm) dOmega
                   = sum_k w_k Pbar_lm(x_k) (2 pi / nlon) sum_j f(theta_k, phi_j) exp(-i m phi_j)
    inverse   f(theta, phi) = sum_l [ c_l0 Pbar_l0 + 2 Re sum_{m=1}^{min(l, mmax)} c_lm Y_lm ]

The forward transform is the real FFT over longitude followed, for each m, by a dense product
with the matrix 2 pi w_k Pbar_lm(x_k) [lmax + 1, nlat]; the inverse is the product with
Pbar_lm(x_k) followed by the inverse real FFT (the imaginary part of c_l0 is ignored there, as
for any real field). Gauss-Legendre quadrature on nlat nodes is exact for polynomials of degree
2 nlat - 1 and the trapezoidal rule in longitude for frequencies |m| < nlon, so the round trip
``inverse(forward(f)) = f`` and ``forward(inverse(c)) = c`` are exact (to rounding) for
band-limited fields whenever lmax <= nlat - 1 and 2 mmax < nlon (checked; the defaults are
lmax = nlat - 1, mmax = min(lmax, (nlon - 1) // 2)).

**Legendre functions.** Pbar_lm is computed by the standard stable three-term recurrences in
float64 (never from the unnormalised P_l^m, which overflows for l ~ 150):

    Pbar_00 = 1 / sqrt(4 pi),  Pbar_mm = -sqrt((2m + 1) / (2m)) sin(theta) Pbar_{m-1,m-1},
    Pbar_{m+1,m} = sqrt(2m + 3) x Pbar_mm,
    Pbar_lm = a_lm (x Pbar_{l-1,m} - b_lm Pbar_{l-2,m}),
    a_lm = sqrt((4 l^2 - 1) / (l^2 - m^2)),  b_lm = sqrt(((l - 1)^2 - m^2) / (4 (l - 1)^2 - 1)).

**Design notes (backend).** Two backends were measured here (one CPU thread of a shared
2-core machine, median of repeats, forward + inverse of a batch of 8 x 32 = 256 fields,
nlon = 2 nlat, lmax = nlat - 1; ``python -m graphop.layers.sht`` prints them):

    nlat   own Legendre matrices (torch)      ducc0 0.42 analysis_2d + synthesis_2d "GL"
           float64        float32             float64, a Python loop over the 256 maps
     64     55-64 ms       37-50 ms            33-36 ms
    128     ~500 ms       ~330 ms              ~140 ms

The GEMMs themselves take ~15% of the torch time; the rest is the transposes that put the
orders m in front (this machine's memory is slow: a 67 MB permuted copy takes ~35 ms). ducc0 is
a fast C++ library, but it works on numpy arrays on the CPU only, one map per call for spin 0
(a Python loop over batch x channels), needs a hand-written torch.autograd.Function whose
backward is the adjoint (adjoint(analysis) = diag of the quadrature weights composed with the
adjoint synthesis, not the synthesis itself), and adds a compiled dependency. The own matrices
(b) are exact, run on any torch device (on CUDA the transform is one batched FFT and one batched
GEMM, where the CPU transposes stop mattering), are differentiable (and twice differentiable)
by torch's autograd with no custom backward, cost (mmax + 1)(lmax + 1) nlat floats (16 MiB in
float64 at nlat = 128), and are ~60 lines to maintain. On the CPU they take 1.1-1.9x ducc0's time at
nlat = 64 (float32 / float64; the latent sizes the global branch uses are nlat 32-64) and
2.4-3.5x at nlat = 128. Backend (b) is the one used; ducc0 serves only as an independent reference
in the tests (skipped when it is not installed).
The Legendre tables are computed once per (nlat, lmax, mmax) in float64 and kept in a small
LRU (:func:`legendre_matrices`); each transform keeps one copy per (device, dtype), as plain
attributes: the transforms have no parameters and nothing in a ``state_dict``.

Shapes:
    RealSHT:         x [..., nlat, nlon] real  ->  [..., lmax + 1, mmax + 1] complex
    InverseRealSHT:  c [..., lmax + 1, mmax + 1] complex  ->  [..., nlat, nlon] real
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from graphop.errors import InputError

__all__ = ["RealSHT", "InverseRealSHT", "gauss_legendre_grid", "legendre", "legendre_matrices",
           "sh_evaluate", "check_band_limits"]


def gauss_legendre_grid(nlat: int, nlon: int | None = None):
    """Gauss-Legendre colatitudes (north first), their weights, and the longitudes.

    Args:
        nlat: number of latitudes (>= 1).
        nlon: number of longitudes (default 2 nlat).

    Returns:
        ``(colat [nlat], weights [nlat], lon [nlon])`` (float64 numpy): colat_k = arccos(x_k)
        for the Gauss-Legendre nodes x_k in decreasing order, weights w_k (sum 2), and
        lon_j = 2 pi j / nlon.
    """
    nlat = int(nlat)
    nlon = 2 * nlat if nlon is None else int(nlon)
    if nlat < 1 or nlon < 1:
        raise InputError(f"grid needs nlat >= 1 and nlon >= 1, got ({nlat}, {nlon})")
    x, w = np.polynomial.legendre.leggauss(nlat)
    x, w = x[::-1].copy(), w[::-1].copy()
    return np.arccos(np.clip(x, -1.0, 1.0)), w, 2.0 * np.pi * np.arange(nlon) / nlon


def legendre(lmax: int, mmax: int, x) -> np.ndarray:
    """Orthonormal associated Legendre functions Pbar_lm(x) (module docstring; with the
    Condon-Shortley phase), by the stable recurrences in float64.

    Args:
        lmax, mmax: largest degree and order (0 <= mmax <= lmax).
        x: [K] values cos(theta) in [-1, 1].

    Returns:
        [mmax + 1, lmax + 1, K] float64, zero where m > l.
    """
    lmax, mmax = int(lmax), int(mmax)
    if lmax < 0 or not 0 <= mmax <= lmax:
        raise InputError(f"need 0 <= mmax <= lmax, got lmax={lmax}, mmax={mmax}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    s = np.sqrt(np.clip(1.0 - x * x, 0.0, None))
    out = np.zeros((mmax + 1, lmax + 1, len(x)))
    pmm = np.full(len(x), 1.0 / math.sqrt(4.0 * math.pi))
    for m in range(mmax + 1):
        if m > 0:
            pmm = -math.sqrt((2.0 * m + 1.0) / (2.0 * m)) * s * pmm
        out[m, m] = pmm
        if m + 1 <= lmax:
            out[m, m + 1] = math.sqrt(2.0 * m + 3.0) * x * pmm
        for l in range(m + 2, lmax + 1):
            a = math.sqrt((4.0 * l * l - 1.0) / (l * l - m * m))
            b = math.sqrt(((l - 1.0) ** 2 - m * m) / (4.0 * (l - 1.0) ** 2 - 1.0))
            out[m, l] = a * (x * out[m, l - 1] - b * out[m, l - 2])
    return out


def check_band_limits(nlat: int, nlon: int, lmax: int | None, mmax: int | None):
    """``(lmax, mmax)`` with the defaults filled in (lmax = nlat - 1, mmax = min(lmax,
    (nlon - 1) // 2)); InputError unless 0 <= mmax <= lmax <= nlat - 1 and 2 mmax < nlon, the
    conditions for an exact transform on the grid."""
    nlat, nlon = int(nlat), int(nlon)
    if nlat < 1 or nlon < 1:
        raise InputError(f"grid needs nlat >= 1 and nlon >= 1, got ({nlat}, {nlon})")
    lmax = nlat - 1 if lmax is None else int(lmax)
    mmax = min(lmax, (nlon - 1) // 2) if mmax is None else int(mmax)
    if not 0 <= lmax <= nlat - 1:
        raise InputError(f"lmax must be in [0, nlat - 1] = [0, {nlat - 1}] for an exact transform "
                         f"on {nlat} Gauss-Legendre latitudes, got {lmax}")
    if not 0 <= mmax <= lmax:
        raise InputError(f"mmax must be in [0, lmax] = [0, {lmax}], got {mmax}")
    if 2 * mmax >= nlon:
        raise InputError(f"mmax = {mmax} needs nlon > 2 mmax = {2 * mmax} longitudes (aliasing "
                         f"of +m and -m), got nlon = {nlon}")
    return lmax, mmax


@functools.lru_cache(maxsize=16)
def legendre_matrices(nlat: int, lmax: int, mmax: int):
    """``(analysis [mmax+1, lmax+1, nlat], synthesis [mmax+1, lmax+1, nlat])`` float64 numpy:
    2 pi w_k Pbar_lm(x_k) and Pbar_lm(x_k) on the Gauss-Legendre nodes (cached, read-only)."""
    colat, w, _ = gauss_legendre_grid(nlat, 1)
    syn = legendre(lmax, mmax, np.cos(colat))
    ana = syn * (2.0 * np.pi * w)
    ana.flags.writeable = syn.flags.writeable = False
    return ana, syn


class _SHTBase(nn.Module):
    def __init__(self, nlat: int, nlon: int, lmax: int | None = None, mmax: int | None = None):
        super().__init__()
        self.nlat, self.nlon = int(nlat), int(nlon)
        self.lmax, self.mmax = check_band_limits(self.nlat, self.nlon, lmax, mmax)
        self._copies: dict = {}

    def _matrix(self, which: int, device, dtype) -> torch.Tensor:
        key = (which, torch.device(device), dtype)
        if key not in self._copies:
            mats = legendre_matrices(self.nlat, self.lmax, self.mmax)
            m = mats[0] if which == 0 else mats[1] if which == 1 else mats[1].transpose(0, 2, 1)
            self._copies[key] = torch.as_tensor(np.array(m), dtype=dtype, device=device)
        return self._copies[key]

    def extra_repr(self) -> str:
        return f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, mmax={self.mmax}"


#: the orders m are processed in this many chunks, each skipping the degrees l below its first m
#: (the zero part of the l x m triangle): measured 20% faster than one dense product at nlat 128
M_CHUNKS = 8


def _m_chunks(n_m: int):
    bounds = np.linspace(0, n_m, min(M_CHUNKS, n_m) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _real_dtype(dtype):
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


class RealSHT(_SHTBase):
    """Forward real SHT: grid [..., nlat, nlon] -> coefficients [..., lmax+1, mmax+1].

    c_lm = sum_k 2 pi w_k Pbar_lm(x_k) (1 / nlon) sum_j f_kj exp(-2 pi i m j / nlon) (module
    docstring): exact for fields band-limited to degree lmax.

    Args:
        nlat, nlon: grid size (Gauss-Legendre latitudes north first, equispaced longitudes).
        lmax: largest degree (default nlat - 1, at most nlat - 1).
        mmax: largest order (default min(lmax, (nlon - 1) // 2); 2 mmax < nlon).

    Shapes: x [..., nlat, nlon] (float) -> [..., lmax + 1, mmax + 1] (complex of x's precision).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or tuple(x.shape[-2:]) != (self.nlat, self.nlon):
            raise InputError(f"RealSHT expects [..., {self.nlat}, {self.nlon}], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(f"RealSHT expects a real floating tensor, got {x.dtype}")
        batch = x.shape[:-2]
        L, M = self.lmax + 1, self.mmax + 1
        # longitude leading, batch innermost: the FFT then gives [m, k, n] and every order m is
        # one GEMM [l, k] x [k, n * 2] on contiguous memory (no transpose of complex data)
        f = torch.fft.rfft(x.reshape(-1, self.nlat, self.nlon).permute(2, 1, 0), dim=0,
                           norm="forward")[:M]                                 # [m, k, n]
        A = self._matrix(0, x.device, x.dtype)                                 # [m, l, k]
        c = torch.bmm(A, torch.view_as_real(f).reshape(M, self.nlat, -1))      # [m, l, n * 2]
        c = torch.view_as_complex(c.reshape(M, L, -1, 2)).permute(2, 1, 0)     # [n, l, m]
        return c.contiguous().reshape(*batch, L, M)


class InverseRealSHT(_SHTBase):
    """Inverse real SHT: coefficients [..., lmax+1, mmax+1] -> grid [..., nlat, nlon].

    f_kj = sum_m' a_m(k) exp(2 pi i m j / nlon) with a_m(k) = sum_l c_lm Pbar_lm(x_k) and the
    real-field convention (m = 0 once, m > 0 as 2 Re); Im c_l0 is ignored.

    Args: as :class:`RealSHT`.

    Shapes: c [..., lmax + 1, mmax + 1] (complex) -> [..., nlat, nlon] (real).
    """

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if c.dim() < 2 or tuple(c.shape[-2:]) != (self.lmax + 1, self.mmax + 1):
            raise InputError(f"InverseRealSHT expects [..., {self.lmax + 1}, {self.mmax + 1}], "
                             f"got {tuple(c.shape)}")
        if not c.is_complex():
            raise InputError(f"InverseRealSHT expects complex coefficients, got {c.dtype}")
        batch = c.shape[:-2]
        L, M = self.lmax + 1, self.mmax + 1
        g = c.reshape(-1, L, M).permute(2, 1, 0).resolve_conj().contiguous()   # [m, l, n]
        g = torch.view_as_real(g).reshape(M, L, -1)                            # [m, l, n * 2]
        P = self._matrix(2, c.device, _real_dtype(c.dtype))                    # [m, k, l]
        # orders lo..hi-1 have no degree below lo: skip the zero part of the l x m triangle
        a = torch.cat([torch.bmm(P[lo:hi, :, lo:], g[lo:hi, lo:]) for lo, hi in _m_chunks(M)])
        nfreq = self.nlon // 2 + 1
        if nfreq > M:   # the orders above mmax are zero
            a = torch.cat([a, a.new_zeros(nfreq - M, *a.shape[1:])])
        a = torch.view_as_complex(a.reshape(nfreq, self.nlat, -1, 2))          # [m, k, n]
        f = torch.fft.irfft(a, n=self.nlon, dim=0, norm="forward")             # [j, k, n]
        return f.permute(2, 1, 0).contiguous().reshape(*batch, self.nlat, self.nlon)


def sh_evaluate(coeffs, colat, lon) -> np.ndarray:
    """Evaluate the real field of ``coeffs`` at arbitrary points (direct synthesis, numpy).

    f(theta, phi) = sum_l [ c_l0 Pbar_l0(cos theta) + 2 Re sum_{m >= 1} c_lm Pbar_lm e^{i m phi} ].

    Args:
        coeffs: [..., lmax + 1, mmax + 1] complex (numpy or torch).
        colat, lon: [K] colatitudes and longitudes (radians).

    Returns:
        [..., K] float64.
    """
    c = coeffs.detach().cpu().numpy() if torch.is_tensor(coeffs) else np.asarray(coeffs)
    c = c.astype(np.complex128)
    L, M = c.shape[-2] - 1, c.shape[-1] - 1
    colat = np.asarray(colat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    P = legendre(L, M, np.cos(colat))                                # [m, l, K]
    a = np.einsum("...lm,mlk->...mk", c, P)                          # [..., m, K]
    fac = np.where(np.arange(M + 1) == 0, 1.0, 2.0)[:, None]
    e = np.exp(1j * np.arange(M + 1)[:, None] * lon[None, :])        # [m, K]
    return np.real(np.sum(a * e * fac, axis=-2))


def _benchmark(sizes=(64, 128), batch=(8, 32), repeat=3) -> None:   # pragma: no cover
    """Print the forward + inverse time of both backends (the numbers in the module docstring)."""
    import time

    torch.set_num_threads(1)
    try:
        import ducc0
    except ImportError:
        ducc0 = None
    for nlat in sizes:
        nlon = 2 * nlat
        fwd, inv = RealSHT(nlat, nlon), InverseRealSHT(nlat, nlon)
        for dtype in (torch.float64, torch.float32):
            x = torch.randn(*batch, nlat, nlon, dtype=dtype)
            inv(fwd(x))
            t0 = time.perf_counter()
            for _ in range(repeat):
                inv(fwd(x))
            t = (time.perf_counter() - t0) / repeat
            print(f"torch  nlat={nlat} {dtype}: {1e3 * t:.1f} ms (forward + inverse)")
        if ducc0 is not None:
            xs = np.random.default_rng(0).standard_normal((int(np.prod(batch)), 1, nlat, nlon))
            lmax = nlat - 1
            t0 = time.perf_counter()
            for _ in range(repeat):
                for m in xs:
                    alm = ducc0.sht.analysis_2d(map=m, spin=0, lmax=lmax, geometry="GL", nthreads=1)
                    ducc0.sht.synthesis_2d(alm=alm, spin=0, lmax=lmax, geometry="GL", ntheta=nlat,
                                           nphi=nlon, nthreads=1)
            t = (time.perf_counter() - t0) / repeat
            print(f"ducc0  nlat={nlat} float64: {1e3 * t:.1f} ms (forward + inverse)")


if __name__ == "__main__":   # pragma: no cover
    _benchmark()
