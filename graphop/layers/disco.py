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

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree
from torch import nn

from graphop.geometry.neighbors import box_size, check_radius_operator, radius_neighbors
from graphop.layers.basis import KernelBasis, make_basis
from graphop.layers.sparse import (apply_operator, cached_operator, check_features, csr_from_coo,
                                   graph_set, n_points, stack_rows)
from graphop.errors import InputError

__all__ = ["DISCOConv", "disco_matrix"]

#: most neighbour pairs one chunk of a DISCO build holds. The build's scratch arrays take about
#: 100 bytes a pair, so this bounds them near 0.5 GB however large the mesh; the finished CSR
#: keeps about 12 bytes a non-zero.
BUILD_CHUNK_PAIRS = 5_000_000


def _mean_neighbours(pos_out, pos_in, radius, periodic, sample: int = 256) -> float:
    """Neighbours within ``radius`` per output point, estimated on a random sample of them."""
    box = box_size(periodic, pos_in.shape[1])
    src = pos_in if box is None else np.mod(pos_in, box)
    q = pos_out[np.random.default_rng(0).choice(len(pos_out), min(sample, len(pos_out)),
                                                replace=False)]
    q = q if box is None else np.mod(q, box)
    return float(cKDTree(src, boxsize=box).query_ball_point(q, radius, return_length=True).mean())


def _disco_rows(nb, w, radius: float, basis: KernelBasis, normalize: bool) -> sp.csr_matrix:
    e, l, v = basis.evaluate(nb.offsets / radius)
    rows = np.repeat(np.arange(nb.n_query, dtype=np.int64), nb.counts())[e]
    cols = nb.indices[e]
    vals = v * w[cols]
    if normalize:
        vals = vals / (radius ** basis.dim * basis.l1_norms())[l]
    L = basis.n_basis
    return csr_from_coo(rows * L + l, cols, vals, (nb.n_query * L, len(w)))


def disco_matrix(pos_out, pos_in, weight_in, radius: float, basis: KernelBasis, *,
                 periodic=None, normalize: bool = True, same: bool = False) -> sp.csr_matrix:
    """The DISCO operator Psi (see the module docstring) as scipy CSR [N_out * L, N_in].

    ``same=True`` means pos_out is pos_in (uses the faster symmetric pair search). Large
    operators are built in chunks of output rows holding about :data:`BUILD_CHUNK_PAIRS`
    neighbour pairs each, so the scratch memory stays bounded (the result is identical).
    """
    pos_in = np.asarray(pos_in, dtype=np.float64)
    pos_out = pos_in if same else np.asarray(pos_out, dtype=np.float64)
    # refuse an operator that cannot fit before building it; warn on a nearly dense one.
    # Measured: 12 B/nonzero in scipy CSR (x2 while chunks are stacked) + 24 B for the torch
    # A and A^T; about 250 B per neighbour pair of scratch, for one chunk at a time
    check_radius_operator(pos_out, pos_in, radius, periodic=periodic,
                          entries_per_pair=basis.entries_per_offset(), bytes_per_entry=48,
                          scratch_per_pair=250, max_scratch_pairs=BUILD_CHUNK_PAIRS, what="DISCO")
    w = np.asarray(weight_in, dtype=np.float64)
    n_out = len(pos_out)
    chunk = n_out
    if n_out * len(pos_in) > BUILD_CHUNK_PAIRS:
        per_row = _mean_neighbours(pos_out, pos_in, radius, periodic)
        chunk = max(1, int(BUILD_CHUNK_PAIRS / max(per_row, 1.0)))
    if chunk >= n_out:
        nb = radius_neighbors(pos_out, None if same else pos_in, radius, periodic=periodic)
        return _disco_rows(nb, w, radius, basis, normalize)
    return stack_rows([_disco_rows(radius_neighbors(pos_out[a:a + chunk], pos_in, radius,
                                                    periodic=periodic), w, radius, basis,
                                   normalize)
                       for a in range(0, n_out, chunk)])


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
            raise InputError(f"DISCOConv: radius must be a positive number, got {radius}")
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"DISCOConv: channel counts must be >= 1, got "
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
            raise InputError(f"DISCOConv: out.pos is {g_out.pos.shape[1]}D but data.pos is {d}D "
                             "(dimension mismatch)")
        basis = self.basis(d)
        r, norm = self.radius, self.normalize

        def build(p_out, p_in, w_in, periodic, same):
            return disco_matrix(p_out, p_in, w_in, r, basis, periodic=periodic,
                                normalize=norm, same=same), basis.n_basis

        return cached_operator("disco", (r, basis.key, norm), g_in, g_out, build)

    def forward(self, x: torch.Tensor, data, out=None) -> torch.Tensor:
        check_features(x, n_points(data), self.in_channels, "DISCOConv")
        if x.dtype != self.weight.dtype:
            raise InputError(f"DISCOConv: x is {x.dtype} but the layer is {self.weight.dtype}; "
                             "convert one of them (e.g. layer.double())")
        op, fold = self.operator(data, out)
        y = apply_operator(op, fold, x, self.weight)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, radius={self.radius:g}, "
                f"kernel_shape={self.kernel_shape}, basis={self.basis_name!r}, "
                f"n_basis={self.n_basis}, normalize={self.normalize}, bias={self.bias is not None}")
