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

Shapes:
    x [B, in_channels, n_1, ..., n_d] -> [B, out_channels, n_1, ..., n_d]
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from graphop.errors import InputError

__all__ = ["SpectralConv"]

def _mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y[b, o, k] = sum_i x[b, i, k] w[i, o, k]`` for every mode k (any number of mode axes),
    as one batched complex GEMM over the modes: measured 2.1x faster forward + backward than
    ``einsum("bixy,ioxy->boxy")`` at 12 x 12 modes (batch 8, 33 -> 32 channels, one thread)."""
    B, I, *m = x.shape
    O = w.shape[1]
    xk = x.reshape(B, I, -1).permute(2, 0, 1)          # [K, B, I]
    wk = w.reshape(I, O, -1).permute(2, 0, 1)          # [K, I, O]
    return torch.bmm(xk, wk).permute(1, 2, 0).reshape(B, O, *m)


class SpectralConv(nn.Module):
    """FNO spectral convolution with truncated modes and complex weights (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, modes, padding: float = 0.25):
        super().__init__()
        modes = tuple(int(m) for m in modes)
        if len(modes) not in (1, 2, 3) or min(modes) < 1:
            raise InputError(f"modes must be 1 to 3 positive integers, got {modes}")
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"channel counts must be positive, got {in_channels} -> {out_channels}")
        if padding < 0:
            raise InputError(f"padding must be >= 0, got {padding}")
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
        if any(pads):
            pad_arg = []
            for p in reversed(pads):
                pad_arg += [0, p]
            x = F.pad(x, pad_arg)
        n = tuple(x.shape[2:])
        for a in range(d - 1):
            if n[a] < 2 * modes[a]:
                raise InputError(f"grid axis {a} has {n[a]} nodes, too few for {modes[a]} modes "
                                 f"(needs >= {2 * modes[a]})")
        if n[-1] // 2 + 1 < modes[-1]:
            raise InputError(f"grid axis {d - 1} has {n[-1]} nodes, too few for {modes[-1]} "
                             f"modes (needs >= {2 * modes[-1] - 2})")
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
                f"padding={self.padding}")
