"""DISCO convolution: a local integral operator with a learned kernel on any mesh or point cloud.

    (K f)_o(x_i) = sum_l sum_c theta[l, c, o] * sum_{j : |y_j - x_i| <= r} psi_l((y_j - x_i) / r) f_c(y_j) w_j
                   (+ bias_o)

with quadrature weights w_j (``data.weight``), a fixed physical radius r that does not shrink
under refinement, and the kernel basis psi_l of :mod:`graphop.layers.basis` (L = 1 + (n_r - 1) n_a
functions for ``kernel_shape = (n_r, n_a)``). With ``normalize=True`` (default) each psi_l is
divided by ``r^d ||psi_l||_1`` so that outputs stay O(|f|) for any radius; the operator is
still the discretisation of a fixed integral operator, so it converges under refinement.

The paper: Liu-Schiaffini et al., "Neural Operators with Localized Integral and Differential
Kernels", ICML 2024 (arXiv 2402.16845), section on DISCO convolutions.

Computation: one cached sparse CSR product ``Y = Psi @ X`` (Psi [N_out L, N_in], values
psi_l * w_j) and one dense GEMM ``Y.view(N_out, L C) @ theta.view(L C, O)`` (see
:mod:`graphop.layers.sparse`); never per-edge message tensors. A batch sharing one mesh is one
product with the batch in the columns of X; a batch of different meshes uses a block-diagonal
Psi. The backward pass is ``grad_X = Psi^T grad_Y`` with a precomputed transposed CSR.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from graphop.layers.basis import KernelBasis, make_basis
from graphop.layers.sparse import apply_operator, cached_operator, disco_matrix, graph_set

__all__ = ["DISCOConv", "check_features"]


def check_features(x, n: int, channels: int, layer: str) -> None:
    """ValueError unless ``x`` is a floating tensor [n, channels]."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"{layer}: x must be a tensor [N, {channels}], "
                         f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if x.shape[1] != channels:
        raise ValueError(f"{layer}: expected x with {channels} input channels, got {x.shape[1]}")
    if x.shape[0] != n:
        raise ValueError(f"{layer}: x has {x.shape[0]} rows but data.pos has {n} points")
    if not x.is_floating_point():
        raise ValueError(f"{layer}: x must be floating point, got {x.dtype}")


def _n_points(data) -> int:
    pos = getattr(data, "pos", None)
    if not torch.is_tensor(pos) or pos.dim() != 2:
        raise ValueError("data has no 'pos' tensor [N, d] (point coordinates)")
    return pos.shape[0]


class DISCOConv(nn.Module):
    """Discrete-continuous convolution on meshes (formula in the module docstring).

    Args:
        in_channels: C, channels of ``x``.
        out_channels: O.
        radius: kernel support r in physical units (> 0).
        kernel_shape: ``(n_r, n_a)`` radial rings x direction functions (default (3, 4), L = 9).
        basis: "piecewise_linear" (default) or "isotropic", or a :class:`KernelBasis`.
        bias: add a learned bias per output channel (default True).
        normalize: divide each basis function by ``r^d ||psi_l||_1`` (default True).

    Call: ``conv(x, data, out=None)``; ``data`` is a ``Data``/``Batch`` with ``pos`` [N, d] and
    ``weight`` [N] (and ``periodic`` [1, d] for tori); ``out`` (optional) another Data/Batch
    with the output points ``pos`` [M, d] (same number of graphs).

    Shapes:
        x: [N, C] -> [N, O], or [M, O] with ``out``. theta: [L, C, O].
    """

    def __init__(self, in_channels: int, out_channels: int, radius: float,
                 kernel_shape=(3, 4), basis="piecewise_linear", bias: bool = True,
                 normalize: bool = True):
        super().__init__()
        try:
            r = float(radius)
        except (TypeError, ValueError):
            r = math.nan
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"DISCOConv: radius must be a positive number, got {radius}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"DISCOConv: channel counts must be >= 1, got "
                             f"{in_channels} -> {out_channels}")
        if isinstance(basis, KernelBasis):
            kernel_shape, basis_name = basis.kernel_shape, basis.name
        else:
            basis_name = basis
        probe = KernelBasis(kernel_shape, 2, basis_name)     # validates the shape and name
        self.in_channels, self.out_channels = in_channels, out_channels
        self.radius, self.normalize = r, bool(normalize)
        self.kernel_shape, self.basis_name = probe.kernel_shape, basis_name
        self.n_basis = probe.n_basis
        self.weight = nn.Parameter(torch.empty(self.n_basis, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """theta, bias ~ U(-1/sqrt(L C), 1/sqrt(L C)) (the fan-in of the contraction)."""
        bound = 1.0 / math.sqrt(self.n_basis * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def basis(self, dim: int) -> KernelBasis:
        return make_basis(self.basis_name, self.kernel_shape, dim)

    def operator(self, data, out=None):
        """``(SparseOperator, fold)`` for this geometry, from the process-wide cache."""
        g_in = graph_set(data, need_weight=True, what="data")
        g_out = None if out is None else graph_set(out, need_weight=False, what="out")
        d = g_in.pos.shape[1]
        if g_out is not None and g_out.pos.shape[1] != d:
            raise ValueError(f"DISCOConv: out.pos is {g_out.pos.shape[1]}D but data.pos is {d}D "
                             "(dimension mismatch)")
        basis = self.basis(d)
        r, norm = self.radius, self.normalize

        def build(p_out, p_in, w_in, periodic, same):
            return disco_matrix(p_out, p_in, w_in, r, basis, periodic=periodic,
                                normalize=norm, same=same), basis.n_basis

        return cached_operator("disco", (r, basis.key, norm), g_in, g_out, build)

    def forward(self, x: torch.Tensor, data, out=None) -> torch.Tensor:
        check_features(x, _n_points(data), self.in_channels, "DISCOConv")
        if x.dtype != self.weight.dtype:
            raise ValueError(f"DISCOConv: x is {x.dtype} but the layer is {self.weight.dtype}; "
                             "convert one of them (e.g. layer.double())")
        op, fold = self.operator(data, out)
        y = apply_operator(op, fold, x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, radius={self.radius:g}, "
                f"kernel_shape={self.kernel_shape}, basis={self.basis_name!r}, "
                f"n_basis={self.n_basis}, normalize={self.normalize}, bias={self.bias is not None}")
