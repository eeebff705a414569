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

Call: ``conv(x, periodic=False, modes=None, channels_last=False)``. ``channels_last=True`` takes
and returns the channels on the last axis, the layout of point features reshaped onto a grid
(:class:`graphop.layers.latent.GridEncoder` with ``channels_last=True``, the grid FNO): the
``"dft"`` path works in that layout throughout, so no transposed copy of the grid is made.
``x`` may be a tuple of tensors with the same batch and grid, concatenated along the channels
(the ``"dft"`` path transforms each on its own and joins them among the kept modes, so the
concatenated grid is never formed: the global branch's ``(features, occupancy)``).

Shapes:
    x [B, in_channels, n_1, ..., n_d] -> [B, out_channels, n_1, ..., n_d];
    with ``channels_last``: [B, n_1, ..., n_d, in_channels] -> [B, n_1, ..., n_d, out_channels]
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
    FNOs keep, so the rule is about memory, not speed. Measured again with the channels-last
    DFT (commit ``22e23d0``, channels-first input and output, a slower day of the machine):
    16^2 1.18, 32^2 1.87, 64^2 1.99, 128^2 3.22, 256^2 (batch 2) 2.89, 16^3 1.99, 32^3
    (batch 2) 2.69, and 1.00 at 64^2 with modes (32, 32)."""
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


def _complex_as_real(c: np.ndarray) -> np.ndarray:
    """A complex matrix ``c`` [P, Q] as the real matrix [2 P, 2 Q] that maps (Re, Im) pairs the
    way ``c`` maps complex numbers: rows (p, Re/Im), columns (Re/Im, q), so that the pair axis
    of the input sits before the axis ``c`` contracts and that of the output after the axis
    it makes (``(zr, zi) -> (Re c zr - Im c zi, Im c zr + Re c zi)``)."""
    re, im = c.real, c.imag
    blk = np.stack([np.stack([re, -im], 1), np.stack([im, re], 1)], 1)     # [P, 2, 2, Q]
    return blk.reshape(2 * c.shape[0], 2 * c.shape[1])


def _dft_tables(n: tuple, big: tuple, modes: tuple, dtype, device):
    """The truncated DFT of the module docstring as small dense real matrices, one per axis, for
    an input of ``n`` nodes per axis zero-padded to ``big`` (the padding and the crop are then
    free: the padded nodes contribute nothing and the cropped ones are never formed), applied
    to the channels-last array one axis after the other, the first axis first. Complex numbers
    are (Re, Im) pairs on an axis of size 2 just before the next axis to transform, so every
    product is one real GEMM over the other axes (a complex ``matmul`` on CPU loops over its
    batch matrix by matrix; measured: thousands of small copies per training step).

    With kept wavenumbers kappa_k of axis a (:func:`_wavenumbers`: K_a = 2 m_a on the leading
    axes, m_d on the last) and E[k, x] = exp(-2 pi i kappa_k x / N_a) / N_a:
    ``fwd[a]`` maps axis a to (k, Re/Im) rows: [2 K_a, n_a] for the first axis (real input),
    [2 K_a, 2 n_a] with columns (Re/Im, x) for the others (complex input);
    ``inv[a]`` maps (Re/Im, k) back with exp(+2 pi i kappa_k x / N_a): [2 n_a, 2 K_a] with rows
    (x, Re/Im) on all axes but the last, and [n_d, 2 K_d] on the last, the real part times
    c_k (1 at k = 0 and at the Nyquist k = N_d / 2, else 2: what ``irfft`` does).
    Returns ``(fwd, fwd_t, inv, inv_t)``, tuples over the axes, ``*_t`` the contiguous
    transposes (for the backward products). Made in float64 and cast to ``dtype``; cached in
    the operator cache by sizes, modes, dtype and device."""
    from graphop.layers.sparse import operator_cache

    def build():
        d = len(n)
        fwd, inv = [], []
        for a in range(d):
            last = a == d - 1
            kappa = np.array(_wavenumbers(modes[a], half=last))
            x = np.arange(n[a])
            e = np.exp(-2j * np.pi * np.outer(kappa, x) / big[a]) / big[a]      # [K, n]
            f = np.exp(2j * np.pi * np.outer(x, kappa) / big[a])                 # [n, K]
            K = len(kappa)
            if a == 0:
                m = np.stack([e.real, e.imag], 1).reshape(2 * K, n[a])
            else:
                m = _complex_as_real(e)
            if last:
                c = np.where((kappa == 0) | (2 * kappa == big[a]), 1.0, 2.0)
                v = np.stack([c * f.real, -c * f.imag], 1).reshape(n[a], 2 * K)
            else:
                v = _complex_as_real(f)
            fwd.append(m)
            inv.append(v)

        def cast(mats, t=False):
            return tuple(torch.as_tensor(np.ascontiguousarray(m.T if t else m), dtype=dtype,
                                         device=device) for m in mats)

        return _Tables((cast(fwd), cast(fwd, True), cast(inv), cast(inv, True)))

    return operator_cache.get(("spectral_dft", n, big, modes, str(dtype), str(device)), build).value


class _TableMatmul(torch.autograd.Function):
    """``table @ z`` for a constant matrix ``table`` [P, Q] and ``z`` [batch, Q, R], broadcast
    over the batch, differentiated through the precomputed contiguous ``table_t`` = table^T
    (autograd's own backward multiplies by an expanded, strided transpose matrix by matrix:
    measured 2.5 ms against 0.3 ms for a [256, 14, 32] batch, one thread)."""

    @staticmethod
    def forward(ctx, table, table_t, z):
        ctx.tables = (table, table_t)
        return torch.matmul(table, z)

    @staticmethod
    def backward(ctx, g):
        table, table_t = ctx.tables
        if table_t.dtype != g.dtype:     # under autocast the output was made in lower precision
            table, table_t = table.to(g.dtype), table_t.to(g.dtype)
        return None, None, _TableMatmul.apply(table_t, table, g.contiguous())


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
        self.nbytes = sum(t.numel() * t.element_size() for group in value for t in group)


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

    def forward(self, x, periodic: bool = False, modes=None,
                channels_last: bool = False) -> torch.Tensor:
        d = self.dim
        if modes is None:
            modes = self.modes
        else:
            modes = tuple(int(m) for m in modes)
            if len(modes) != d or not all(1 <= m <= k for m, k in zip(modes, self.modes)):
                raise InputError(f"modes {modes} must be {d} integers in [1, {self.modes}]")
        parts = self._parts(x, channels_last)
        shape = tuple(parts[0].shape[1:-1])
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
            y = self._forward_dft(parts, shape, n, modes)             # [B, *shape, O]
            return y if channels_last else y.movedim(-1, 1)
        x = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        y = self._forward_fft(x.movedim(-1, 1), shape, pads, n, modes)
        return y.movedim(1, -1) if channels_last else y

    def _parts(self, x, channels_last: bool) -> list:
        """``x`` (a tensor or a tuple of tensors joined along the channels) as a list of
        channels-last views, checked against the layer's dimension and channels."""
        d = self.dim
        parts = list(x) if isinstance(x, (tuple, list)) else [x]
        layout = (f"[B, <{d} grid axes>, {self.in_channels}]" if channels_last
                  else f"[B, {self.in_channels}, <{d} grid axes>]")
        got = ", ".join(str(tuple(p.shape)) if isinstance(p, torch.Tensor) else type(p).__name__
                        for p in parts)
        if (not parts or not all(isinstance(p, torch.Tensor) and p.dim() == d + 2 for p in parts)):
            raise InputError(f"SpectralConv expects {layout}, got {got}")
        if not channels_last:
            parts = [p.movedim(1, -1) for p in parts]
        if (any(p.shape[:-1] != parts[0].shape[:-1] for p in parts)
                or sum(p.shape[-1] for p in parts) != self.in_channels):
            raise InputError(f"SpectralConv expects {layout}"
                             f"{' (joined along the channels)' if len(parts) > 1 else ''}, "
                             f"got {got}")
        return parts

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

    def _forward_dft(self, parts, shape, n, modes):
        """The truncated transform as real matrix products (:func:`_dft_tables`) on channels-last
        ``parts`` [B, *shape, C_i], each carried to the kept modes on its own and joined there;
        returns [B, *shape, O]."""
        d = self.dim
        B = parts[0].shape[0]
        fwd, fwd_t, inv, inv_t = _dft_tables(shape, n, modes, parts[0].dtype, parts[0].device)
        ks = [m.shape[0] // 2 for m in fwd]
        zs = []
        for x in parts:
            z, lead = x, B
            for a in range(d):           # axis a -> (k, Re/Im) rows: [B, K_1.., K_a, 2, ..., C]
                z = _TableMatmul.apply(fwd[a], fwd_t[a], z.reshape(lead, fwd[a].shape[1], -1))
                lead *= ks[a]
            zs.append(z.reshape(B, *ks, 2, x.shape[-1]))
        z = torch.cat(zs, -1) if len(zs) > 1 else zs[0]                  # [B, K_1.., K_d, 2, C]
        # mode-wise channel mixing as one batched complex GEMM [K, B, C] @ [K, C, O]
        zk = torch.view_as_complex(z.permute(*range(1, d + 1), 0, d + 2, d + 1).contiguous())
        w = self._weights(modes)
        wk = w.permute(*range(2, d + 2), 0, 1).reshape(-1, *w.shape[:2])
        y = _ModeMix.apply(zk.reshape(-1, B, self.in_channels), wk.to(zk.dtype))   # [K, B, O]
        O = self.out_channels
        z = torch.view_as_real(y).reshape(*ks, B, O, 2).permute(d, d + 2, *range(d), d + 1)
        lead = B                         # [B, 2, K_1.., K_d, O]: each (Re/Im, k) pair back to x
        for a in range(d):
            z = _TableMatmul.apply(inv[a], inv_t[a], z.reshape(lead, inv[a].shape[1], -1))
            lead *= shape[a]
        return z.reshape(B, *shape, O)

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
