"""Spectral convolution on a regular 2D or 3D latent grid (the FNO layer).

Li et al., "Fourier Neural Operator for Parametric Partial Differential Equations" (ICLR 2021):

    (K v)_o = IRFFT( sum_c R[c, o, k] * RFFT(v_c)[k] )   for the kept modes k, zero elsewhere

with the real FFT over the d grid axes (``norm="forward"``: the coefficients are grid averages,
so a weight means the same at any grid size). The kept modes are |k_a| < m_a on every axis but
the last (both signs: the low and high ends of the FFT axis) and 0 <= k_d < m_d on the last (the
half spectrum of the real FFT). R is complex, one block per sign combination (2^(d-1) blocks).

Written out (what the tests check against a direct DFT), for a grid of n_1 x ... x n_d nodes:

    out_o[x] = sum_{k kept} c_k Re( sum_c R[c, o, k] vhat_c[k] exp(2 pi i k.x / n) ),
    vhat_c[k] = (1 / prod n) sum_x v_c[x] exp(-2 pi i k.x / n),

c_k = 1 where k_d = 0 (or k_d = n_d / 2), else 2. On a periodic grid the layer is exactly
translation-equivariant. For non-periodic domains ``forward(x, periodic=False)`` first pads
every axis at its end with ``ceil(padding * n_a)`` zeros (so the FFT's periodic wrap-around does
not couple opposite faces of the box) and crops the output back; periodic domains get no padding.
``forward(x, modes=(m'_1, ...))`` with m'_a <= m_a keeps only the lowest m'_a of the kept modes
(the same weights R for those modes): a grid FNO uses it to stay within what its grid holds.

Args:
    in_channels, out_channels: channel counts.
    modes: (m_1, ..., m_d), d in (2, 3) (d = 1 also works); each axis must hold the modes:
        n_a >= 2 m_a on the leading axes, n_d // 2 + 1 >= m_d on the last (after padding).
    padding: fraction of zero padding per axis for non-periodic inputs (default 0.25).
    method: ``"dft"`` computes only the kept modes, as small dense matrix products along each
        axis (the zero padding and the crop cost nothing: the tables span the unpadded nodes and
        the padded period); ``"fft"`` is the reference path (pad, ``rfftn``, mix, ``irfftn``,
        crop); ``"auto"`` (default) takes ``"dft"`` unless its tables would be large (see
        ``_choose_method``, with the measured speed-ups). Both compute the same layer; the tests
        check values and gradients of one against the other.

Shapes:
    x [B, in_channels, n_1, ..., n_d] -> [B, out_channels, n_1, ..., n_d]
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graphop.errors import InputError

__all__ = ["SpectralConv"]

METHODS = ("auto", "dft", "fft")


TABLE_LIMIT_BYTES = 64 * 2**20


def _choose_method(n: tuple, modes: tuple) -> str:
    """``method="auto"``: the dense truncated DFT unless its tables (one [n_a, 2 m_a] complex
    matrix per axis, forward and inverse) would pass ``TABLE_LIMIT_BYTES``.

    Measured forward + backward, 32 -> 32 channels, one CPU thread (``fft`` time / ``dft`` time,
    > 1 means the DFT is faster): 16^2 grid, modes (6, 7), batch 8: 1.07-1.32; 32^2, (12, 12):
    1.72; 64^2, (16, 16): 2.46; 128^2 and 256^2, (16, 16): 3.98; 512^2, (16, 16): 6.2; 16^3 and
    32^3, (8, 8, 8): 2.0-2.1; 64^3, (16, 16, 16): 2.4. Only with nearly every mode kept (64^2
    grid, modes (32, 32)) was the FFT ahead, by 0.86: the crossover is far beyond the modes
    FNOs keep, so the rule is about memory, not speed."""
    entries = sum(2 * na * 2 * m for na, m in zip(n, modes))
    return "dft" if 8 * entries <= TABLE_LIMIT_BYTES else "fft"

def _mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y[b, o, k] = sum_i x[b, i, k] w[i, o, k]`` for every mode k (any number of mode axes),
    as one batched complex GEMM over the modes: measured 2.1x faster forward + backward than
    ``einsum("bixy,ioxy->boxy")`` at 12 x 12 modes (batch 8, 33 -> 32 channels, one thread).
    The product is :class:`_ModeMix` (contiguous operands in the forward and backward pass)."""
    B, I, *m = x.shape
    O = w.shape[1]
    xk = x.reshape(B, I, -1).permute(2, 0, 1)                        # [K, B, I]
    wk = w.reshape(I, O, -1).permute(2, 0, 1)                        # [K, I, O]
    return _ModeMix.apply(xk, wk).permute(1, 2, 0).reshape(B, O, *m)


def _wavenumbers(m: int, half: bool) -> list[int]:
    """The kept wavenumbers of one axis, in the weight's order: 0..m-1 on the last (half) axis,
    0..m-1 then -m..-1 on the others."""
    return list(range(m)) if half else list(range(m)) + list(range(-m, 0))


def _real_block(c: torch.Tensor) -> torch.Tensor:
    """A complex matrix ``c`` [..., P, Q] as the real matrix [..., 2P, 2Q] that maps (Re, Im)
    pairs (interleaved, ``p`` major) the way ``c`` maps complex numbers:
    ``(zr, zi) -> (zr Re c - zi Im c, zr Im c + zi Re c)``."""
    re, im = c.real, c.imag
    blk = torch.stack([torch.stack([re, im], -1), torch.stack([-im, re], -1)], -3)  # [.., P, 2, Q, 2]
    return blk.reshape(*c.shape[:-2], 2 * c.shape[-2], 2 * c.shape[-1])


def _dft_tables(n: tuple, big: tuple, modes: tuple, dtype, device):
    """The truncated DFT of the module docstring as small dense real matrices, for an input of
    ``n`` nodes per axis zero-padded to ``big`` (the padding and the crop are then free: the
    padded rows contribute nothing and the cropped rows are never formed). Complex numbers are
    (Re, Im) pairs on a trailing axis of size 2, so every product is one real GEMM: a complex
    ``matmul`` on CPU loops over its batch matrix by matrix (measured: thousands of small copies
    per training step).

    Returns ``(fwd_last, fwd, inv, inv_last)``:
    ``fwd_last`` [n_d, 2 m_d]: x @ fwd_last interleaves (Re, Im) of
    (1 / N_d) sum_x v[x] exp(-2 pi i k x / N_d), k < m_d;
    ``fwd[a]`` [2 n_a, 2 K_a]: :func:`_real_block` of exp(-2 pi i k x / N_a) / N_a on a leading
    axis (K_a = 2 m_a wavenumbers, :func:`_wavenumbers`);
    ``inv[a]`` [2 K_a, 2 n_a]: the same for exp(+2 pi i k x / N_a);
    ``inv_last`` [2 m_d, n_d]: (Re, Im) -> sum_k c_k Re(z_k exp(2 pi i k x / N_d)), c_k = 1 at
    k = 0 and at the Nyquist k = N_d / 2, else 2 (what ``irfft`` does).
    Made in float64 and cast to ``dtype``; cached in the operator cache by sizes, modes, dtype
    and device."""
    from graphop.layers.sparse import operator_cache

    def build():
        x = np.arange(n[-1])
        k = np.arange(modes[-1])
        ang = 2 * np.pi * np.outer(x, k) / big[-1]                   # [n_d, m_d]
        fl = np.stack([np.cos(ang), -np.sin(ang)], -1).reshape(n[-1], -1) / big[-1]
        c = np.where((k == 0) | (2 * k == big[-1]), 1.0, 2.0)
        il = np.stack([c[:, None] * np.cos(ang).T, -c[:, None] * np.sin(ang).T], 1).reshape(-1, n[-1])
        fwd, inv = [], []
        for a in range(len(n) - 1):
            ka = np.array(_wavenumbers(modes[a], half=False))
            e = torch.as_tensor(np.exp(-2j * np.pi * np.outer(np.arange(n[a]), ka) / big[a]))
            fwd.append(_real_block(e / big[a]).to(dtype=dtype, device=device))
            inv.append(_real_block(e.conj().T.contiguous()).to(dtype=dtype, device=device))
        return _Tables((torch.as_tensor(fl, dtype=dtype, device=device), tuple(fwd), tuple(inv),
                        torch.as_tensor(il, dtype=dtype, device=device)))

    return operator_cache.get(("spectral_dft", n, big, modes, str(dtype), str(device)), build).value


class _ModeMix(torch.autograd.Function):
    """``bmm(x, w)`` for complex ``x`` [K, B, I] and ``w`` [K, I, O], with every operand of the
    forward and backward products made contiguous and conjugation resolved first: on CPU a
    complex ``bmm`` with a strided or conjugate-view operand runs matrix by matrix (measured:
    about a thousand small copies per layer and step)."""

    @staticmethod
    def forward(ctx, x, w):
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        return torch.bmm(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(g, w.transpose(1, 2).conj().resolve_conj().contiguous())
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(x.transpose(1, 2).conj().resolve_conj().contiguous(), g)
        return gx, gw


class _Tables:
    """A cache entry holding the DFT tables, with their byte count for the cache's budget."""

    def __init__(self, value):
        self.value = value
        fl, fwd, inv, il = value
        self.nbytes = sum(t.numel() * t.element_size() for t in (fl, *fwd, *inv, il))


def _along(z: torch.Tensor, axis: int, mat: torch.Tensor) -> torch.Tensor:
    """Apply the real block matrix ``mat`` [2 P, 2 Q] to axis ``axis`` of ``z`` [..., 2] (complex
    numbers as (Re, Im) pairs on the last axis): one GEMM over all other axes."""
    t = torch.movedim(z, axis, -2)                                   # [..., P, 2]
    out = t.reshape(-1, t.shape[-2] * 2) @ mat
    return torch.movedim(out.reshape(*t.shape[:-2], -1, 2), -2, axis)


class SpectralConv(nn.Module):
    """FNO spectral convolution with truncated modes and complex weights (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, modes, padding: float = 0.25,
                 method: str = "auto"):
        super().__init__()
        modes = tuple(int(m) for m in modes)
        if len(modes) not in (1, 2, 3) or min(modes) < 1:
            raise InputError(f"modes must be 1 to 3 positive integers, got {modes}")
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
        if padding < 0:
            raise InputError(f"padding must be >= 0, got {padding}")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.in_channels, self.out_channels = in_channels, out_channels
        self.modes, self.padding = modes, float(padding)
        shape = [2 * m for m in modes[:-1]] + [modes[-1]]
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *shape, dtype=torch.cfloat))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # complex normal, std 1/sqrt(in_channels): O(1) outputs for O(1) smooth inputs
        with torch.no_grad():
            std = 1.0 / math.sqrt(self.in_channels)
            self.weight.copy_(torch.randn_like(self.weight) * std)

    @property
    def dim(self) -> int:
        return len(self.modes)

    def pad_amount(self, shape) -> tuple[int, ...]:
        return tuple(int(math.ceil(self.padding * n)) for n in shape)

    def forward(self, x: torch.Tensor, periodic: bool = False, modes=None) -> torch.Tensor:
        d = self.dim
        if modes is None:
            modes = self.modes
        else:
            modes = tuple(int(m) for m in modes)
            if len(modes) != d or not all(1 <= m <= k for m, k in zip(modes, self.modes)):
                raise InputError(f"modes {modes} must be {d} integers in [1, {self.modes}]")
        if x.dim() != d + 2 or x.shape[1] != self.in_channels:
            raise InputError(f"SpectralConv expects [B, {self.in_channels}, <{d} grid axes>], "
                             f"got {tuple(x.shape)}")
        shape = tuple(x.shape[2:])
        pads = (0,) * d if periodic else self.pad_amount(shape)
        n = tuple(s + p for s, p in zip(shape, pads))
        for a in range(d - 1):
            if n[a] < 2 * modes[a]:
                raise InputError(f"grid axis {a} has {n[a]} nodes, too few for {modes[a]} modes "
                                 f"(needs >= {2 * modes[a]})")
        if n[-1] // 2 + 1 < modes[-1]:
            raise InputError(f"grid axis {d - 1} has {n[-1]} nodes, too few for {modes[-1]} "
                             f"modes (needs >= {2 * modes[-1] - 2})")
        method = self.method if self.method != "auto" else _choose_method(n, modes)
        if method == "dft":
            return self._forward_dft(x, shape, n, modes)
        return self._forward_fft(x, shape, pads, n, modes)

    def _weights(self, modes) -> torch.Tensor:
        """The weight blocks of the kept ``modes`` (all of them unless fewer are asked for),
        in the order of :func:`_wavenumbers`."""
        w = self.weight
        for a, (m, mw) in enumerate(zip(modes[:-1], self.modes[:-1])):
            if m < mw:
                idx = torch.tensor(list(range(m)) + list(range(2 * mw - m, 2 * mw)),
                                   device=w.device)
                w = w.index_select(2 + a, idx)
        if modes[-1] < self.modes[-1]:
            w = w[..., : modes[-1]]
        return w

    def _forward_dft(self, x, shape, n, modes):
        """The truncated transform as real matrix products (:func:`_dft_tables`)."""
        d = self.dim
        B = x.shape[0]
        fl, fwd, inv, il = _dft_tables(shape, n, modes, x.dtype, x.device)
        z = (x @ fl).unflatten(-1, (modes[-1], 2))                   # [B, C, n_1.., m_d, 2]
        for a in range(d - 1):
            z = _along(z, 2 + a, fwd[a])                             # [B, C, K_1.., m_d, 2]
        # mode-wise channel mixing as one batched complex GEMM [K, B, C] @ [K, C, O]
        kshape = z.shape[2:-1]
        zk = torch.view_as_complex(z.permute(*range(2, d + 2), 0, 1, d + 2).contiguous())
        w = self._weights(modes)
        wk = w.permute(*range(2, d + 2), 0, 1).reshape(-1, *w.shape[:2])
        y = _ModeMix.apply(zk.reshape(-1, B, self.in_channels), wk.to(zk.dtype))   # [K, B, O]
        y = torch.view_as_real(y).reshape(*kshape, B, self.out_channels, 2)
        y = y.permute(d, d + 1, *range(d), d + 2)
        for a in range(d - 1):
            y = _along(y, 2 + a, inv[a])                             # [B, O, n_1.., m_d, 2]
        return y.reshape(*y.shape[:-2], 2 * modes[-1]) @ il

    def _forward_fft(self, x, shape, pads, n, modes):
        """The reference path: zero-pad, ``rfftn``, mix the kept modes, ``irfftn``, crop."""
        d = self.dim
        if any(pads):
            pad_arg = []
            for p in reversed(pads):
                pad_arg += [0, p]
            x = F.pad(x, pad_arg)
        dims = tuple(range(2, d + 2))
        xf = torch.fft.rfftn(x, dim=dims, norm="forward")
        out = xf.new_zeros(x.shape[0], self.out_channels, *xf.shape[2:])
        w = self.weight.to(xf.dtype)
        m_last = modes[-1]
        for halves in itertools.product((0, 1), repeat=d - 1):
            sel, wsel = [], []
            for a, h in enumerate(halves):
                m, mw = modes[a], self.modes[a]   # negative k = -m..-1 sit at 2 mw - m .. 2 mw - 1
                sel.append(slice(0, m) if h == 0 else slice(n[a] - m, n[a]))
                wsel.append(slice(0, m) if h == 0 else slice(2 * mw - m, 2 * mw))
            sel.append(slice(0, m_last))
            wsel.append(slice(0, m_last))
            out[(slice(None), slice(None), *sel)] = _mix(
                xf[(slice(None), slice(None), *sel)], w[(slice(None), slice(None), *wsel)])
        y = torch.fft.irfftn(out, s=n, dim=dims, norm="forward")
        if any(pads):
            y = y[(slice(None), slice(None), *[slice(0, s) for s in shape])]
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, modes={self.modes}, "
                f"padding={self.padding}, method={self.method!r}")
