"""The differential layer: a centred, moment-corrected stencil divided by the local spacing.

    (D f)_o(x_i) = sum_l sum_c theta[l, c, o] * (1 / h_i) * sum_{j in N(i)} a_l(i, j) (f_c(y_j) - f_c(x_i))
                   (+ bias_o)

``h_i`` is ``scale`` times the distance from x_i to its k-th nearest neighbour (k = d by
default: the grid width on a regular grid; ``spacing_neighbours`` sets k), so h -> 0 under
refinement. Stencil function l belongs to the grid offset
s_l in {-m..m}^d without the centre (m = (kernel_size - 1) / 2, L = kernel_size^d - 1); its
coefficients a_l(i, j) interpolate s_l from the neighbours and are corrected per node by
weighted least squares so that ``sum_j a_l(i, j) (y_j - x_i) / h_i = s_l`` exactly
(:mod:`graphop.layers.stencil`). Consequences, for fixed theta:

* constants map to 0 (to rounding), the paper's centring;
* linear f map to exactly ``sum_l theta[l] s_l . grad f``, on any mesh;
* smooth f converge to that first-order operator at O(h).

Relation to the paper (Liu-Schiaffini et al., ICML 2024, arXiv 2402.16845): on a regular grid
of width h the layer *equals* the paper's finite-difference convolution
``(1/h) conv(f, K - mean(K))`` with a conv kernel K [O, C, k, ..., k] (cross-correlation),
under ``theta[l, c, o] = (K - mean K)[o, c, m + s_l]``: because sum(K - mean K) = 0, the paper's
kernel applied to f equals the same kernel applied to f - f(x_i), whose centre tap is zero.
Every theta arises from some K (take K's centre tap so that mean K = 0), so the two
parametrisations span the same operators; the paper's has one redundant entry per (c, o).
:meth:`DifferentialConv.theta_from_kernel` implements the map.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from graphop.layers.sparse import (apply_operator, cached_operator, check_features, csr_from_coo,
                                   graph_set, n_points)
from graphop.layers.stencil import stencil_matrix, stencil_offsets

__all__ = ["DifferentialConv"]


class DifferentialConv(nn.Module):
    """Learned first-order differential operator on meshes (formula in the module docstring).

    Args:
        in_channels: C.
        out_channels: O.
        kernel_size: odd stencil width k >= 3 (default 3), L = k^d - 1 stencil functions.
        dim: spatial dimension d of the points (default 2); fixes L.
        scale: h_i = scale x (distance to the k-th nearest neighbour) (default 1.0).
        bias: learned bias per output channel (default True).
        spacing_neighbours: k (default None = d, the grid width on a regular grid). On
            scattered points (Monte Carlo clouds) the d-th neighbour is sometimes very close and
            1/h_i explodes; ``spacing_neighbours=3**d - 1, scale=0.5`` keeps the coefficients
            bounded (measured in experiments/README.md).

    Call: ``conv(x, data)`` with ``data`` a ``Data``/``Batch`` holding ``pos`` [N, d]
    (``periodic`` [1, d] for tori). Weights are not needed.

    Shapes:
        x: [N, C] -> [N, O]. theta: [L, C, O]; ``offsets`` buffer-free attribute s_l [L, d].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dim: int = 2,
                 scale: float = 1.0, bias: bool = True, spacing_neighbours: int | None = None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"DifferentialConv: channel counts must be >= 1, got "
                             f"{in_channels} -> {out_channels}")
        if dim not in (1, 2, 3):
            raise ValueError(f"DifferentialConv: dim must be 1, 2 or 3, got {dim}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"DifferentialConv: scale must be positive, got {scale}")
        self.offsets = stencil_offsets(kernel_size, dim)       # validates kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        if spacing_neighbours is not None and int(spacing_neighbours) < 1:
            raise ValueError(f"DifferentialConv: spacing_neighbours must be >= 1, got "
                             f"{spacing_neighbours}")
        self.kernel_size, self.dim, self.scale = int(kernel_size), int(dim), float(scale)
        self.spacing_neighbours = None if spacing_neighbours is None else int(spacing_neighbours)
        self.n_basis = len(self.offsets)
        self.weight = nn.Parameter(torch.empty(self.n_basis, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """theta, bias ~ U(-1/sqrt(L C), 1/sqrt(L C))."""
        bound = 1.0 / math.sqrt(self.n_basis * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def theta_from_kernel(kernel: torch.Tensor) -> torch.Tensor:
        """theta [L, C, O] equal to the paper's finite-difference kernel ``kernel``
        [O, C, k, ..., k] on a grid: ``theta[l, c, o] = (K - mean K)[o, c, m + s_l]``."""
        O, C = kernel.shape[:2]
        flat = kernel.reshape(O, C, -1)
        flat = flat - flat.mean(dim=-1, keepdim=True)
        k_total = flat.shape[-1]
        keep = [i for i in range(k_total) if i != k_total // 2]   # drop the centre tap
        return flat[:, :, keep].permute(2, 1, 0).contiguous()

    def operator(self, data):
        """``(SparseOperator, fold)`` for this geometry, from the process-wide cache."""
        g = graph_set(data, need_weight=False, what="data")
        if g.pos.shape[1] != self.dim:
            raise ValueError(f"DifferentialConv: data.pos is {g.pos.shape[1]}D but the layer was "
                             f"built with dim={self.dim} (dimension mismatch)")
        k, s, nb = self.kernel_size, self.scale, self.spacing_neighbours

        def build(p_out, p_in, w_in, periodic, same):
            rows, cols, vals, L = stencil_matrix(p_in, k, s, periodic, nb)
            return csr_from_coo(rows, cols, vals, (L * len(p_in), len(p_in))), L

        return cached_operator("stencil", (k, s, nb), g, None, build)

    def forward(self, x: torch.Tensor, data) -> torch.Tensor:
        check_features(x, n_points(data), self.in_channels, "DifferentialConv")
        if x.dtype != self.weight.dtype:
            raise ValueError(f"DifferentialConv: x is {x.dtype} but the layer is "
                             f"{self.weight.dtype}; convert one of them (e.g. layer.double())")
        op, fold = self.operator(data)
        y = apply_operator(op, fold, x, self.weight)
        return y if self.bias is None else y + self.bias

    def limit_directions(self) -> torch.Tensor:
        """The limit operator as [d, C, O]: D f -> sum_k G[k] d f / d x_k with
        ``G[k, c, o] = sum_l theta[l, c, o] s_l[k]``."""
        s = torch.as_tensor(np.asarray(self.offsets), dtype=self.weight.dtype,
                            device=self.weight.device)
        return torch.einsum("lk,lco->kco", s, self.weight)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"dim={self.dim}, scale={self.scale:g}, spacing_neighbours="
                f"{self.spacing_neighbours or self.dim}, n_basis={self.n_basis}, "
                f"bias={self.bias is not None}")
