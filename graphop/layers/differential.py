"""The differential layer: a centred, well-posed stencil divided by the local spacing, applied to
the input or to the input mollified over a fixed physical radius.

    (D f)_o(x_i) = sum_l sum_c theta[l, c, o] * (1 / h_i) * sum_{j in N(i)} a_l(i, j) (g_c(y_j) - g_c(x_i))
                   (+ bias_o),      g = f  (smoothing_radius None)  or  g = M_rho f

**The stencil** (:mod:`graphop.layers.stencil`). ``h_i`` is ``scale`` times a robust local
spacing (the mean distance to the 3^d - 1 nearest neighbours over its grid value, or the
``spacing_neighbours``-th neighbour distance), grown by at most 8x where the neighbourhood does
not span all d directions, so h -> 0 under refinement. Stencil function l belongs to the grid
offset s_l in {-m..m}^d without the centre (m = (kernel_size - 1) / 2, L = kernel_size^d - 1);
its coefficients interpolate s_l from the neighbours and are corrected per node by weighted
least squares so that ``sum_j a_l(i, j) (y_j - x_i) / h_i = s_l`` exactly, with
``sum_j |a_l(i, j)| <= C`` (C = 41 in 2D, 61 in 3D for kernel_size 3) at every point. For fixed
theta:

* constants map to 0 (to rounding), the paper's centring;
* linear f map to exactly ``sum_l theta[l] s_l . grad f``, at every point of any mesh;
* smooth f converge to that first-order operator at O(h);
* any f: ``|D f(x_i)| <= 2 C |theta| ||f||_inf / h_i``.

**Why mollify, and what it converges to.** The last bound is sharp: on an input with a jump,
``(f(y_j) - f(x_i)) / h_i`` is of size |jump| / h at the points next to the jump, so the
paper's operator has no limit on L-infinity inputs (the output spikes grow like 1/h under
refinement, and through the pointwise path every block sees the jump). With
``smoothing_radius = rho`` the layer differentiates ``M_rho f`` instead, the quadrature-weighted
local average of :func:`graphop.layers.stencil.mollifier_matrix`,

    (M_rho f)(x_i) = sum_j phi((y_j - x_i) / rho) w_j f(y_j) / sum_j phi((y_j - x_i) / rho) w_j,
    phi(z) = (1 - |z|^2)^3 on |z| < 1    (C^2, |grad phi| <= 2, rows sum to one),

with the mesh's quadrature weights w_j (``data.weight``). Derivation of the two limits:

1. *Bounded on L-infinity, for every h.* Two rows i, i' of M_rho differ in l1 by at most
   ``K |x_i - x_i'| / rho`` with K depending on phi and d only (phi is Lipschitz with constant
   2 / rho and the normaliser is bounded below by the quadrature of phi over the part of the
   ball inside the domain, comparable to rho^d while the ball holds enough points). So
   ``|M f(y_j) - M f(x_i)| <= K ||f||_inf |y_j - x_i| / rho``, and with ``|y_j - x_i| <= 2 sqrt d
   h_i`` on the stencil's support, ``|D M f(x_i)| <= 4 sqrt(d) C K |theta| ||f||_inf / rho``:
   independent of h.
2. *Convergent as h -> 0 for fixed rho, for f in L-infinity (jumps included).* D M_rho f is
   the stencil applied to the function ``x -> sum_j phi((y_j - x) / rho) w_j f_j / (...)``,
   which is C^2 in x with second derivatives O(||f||_inf / rho^2), so (stencil consistency)
   ``D M_rho f(x_i) = sum_l theta_l s_l . grad_x (M_rho f)(x_i) + O(h ||f||_inf / rho^2)``;
   and ``grad M_rho f`` is a quadrature of the bounded, Lipschitz kernel grad phi against f,
   which converges to the integral as the mesh is refined (the cells cut by a jump have total
   measure O(h)). The limit is ``sum_l theta_l s_l . grad (phi_rho * f / phi_rho * 1)``, the
   learned first-order operator applied to the mollified field.
3. *The paper's operator as rho -> 0, for smooth f.* Inside the domain ``M_rho f = f + O(rho^2)``
   with ``grad M_rho f = grad f + O(rho^2)`` (phi is even), so the limit above tends to
   ``sum_l theta_l s_l . grad f`` as rho -> 0; within one rho of the boundary the one-sided
   average gives O(rho).

**The gradient of the mollified field, exactly** (``gradient="kernel"``, the default with a
smoothing radius): step 2's limit is ``sum_l theta_l s_l . grad M_rho f``, and ``grad M_rho f``
has a closed form, the quadrature of grad phi (:func:`graphop.layers.stencil.
mollifier_gradient_matrix`). The layer then applies that operator, d rows per point, and
contracts it with the learned directions ``G[k] = sum_l theta_l s_l[k]``
(:meth:`DifferentialConv.limit_directions`), which is the limit operator itself rather than a
stencil's O(h / rho)-accurate approximation of it. Measured with rho = 0.0696 on meshes of the
L-shape (a smooth input, output at the 2000-point mesh's nodes against 32,000 points): the
stencil on ``M_rho f`` is 4.6% / 1.5% off at 2000 / 8000 points, DISCO with the same radius
0.14%; the exact gradient is as mesh-independent as the mollifier. It keeps the properties
above: constants to 0, ``|D f| <= 4 sqrt(d) |theta| ||f||_inf / rho``, convergence for
L-infinity inputs; ``gradient="stencil"`` keeps the stencil on ``M_rho f`` (checkpoints before
version 3).

So rho is a fixed physical length, like the DISCO radius, and must be resolved by the coarsest
mesh the model sees (tens of points per ball); ``None`` (the default) means no mollification:
the paper's operator, exact on regular grids, bounded on smooth inputs but not on inputs with
jumps. (For LocalGNO, the radius is chosen from the training meshes and passed in
``diff_kwargs["smoothing_radius"]``.) The mollifier is a cached per-geometry operator like the
stencil and DISCO's Psi, never in the ``state_dict``.

Relation to the paper (Liu-Schiaffini et al., ICML 2024, arXiv 2402.16845): without smoothing,
on a regular grid of width h the layer *equals* the paper's finite-difference convolution
``(1/h) conv(f, K - mean(K))`` with a conv kernel K [O, C, k, ..., k] (cross-correlation),
under ``theta[l, c, o] = (K - mean K)[o, c, m + s_l]``: because sum(K - mean K) = 0, the paper's
kernel applied to f equals the same kernel applied to f - f(x_i), whose centre tap is zero.
Every theta arises from some K (take K's centre tap so that mean K = 0), so the two
parametrisations span the same operators; the paper's has one redundant entry per (c, o).
:meth:`DifferentialConv.theta_from_kernel` implements the map. (On a grid, h_i is the grid width
at interior points; at boundary rows the robust spacing is larger than the grid width, where
the paper's convolution has no valid output anyway.)
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from graphop.errors import ConfigError, GraphopWarning, InputError
from graphop.layers.sparse import (apply_operator, cached_operator, check_features, fold_matmul,
                                   graph_set, n_points, point_number, quadrature_mode,
                                   uses_cells)
from graphop.layers.stencil import (MAX_GROWTH, mollifier_gradient_matrix, mollifier_matrix,
                                    stencil_info, stencil_offsets)

__all__ = ["DifferentialConv"]


class DifferentialConv(nn.Module):
    """Learned first-order differential operator on meshes (formula in the module docstring).

    Args:
        in_channels: C.
        out_channels: O.
        kernel_size: odd stencil width k >= 3 (default 3), L = k^d - 1 stencil functions.
        dim: spatial dimension d of the points (default 2); fixes L.
        scale: factor on the local spacing h_i before growth (default 1.0).
        bias: learned bias per output channel (default True).
        spacing_neighbours: None (default): h_i from the mean distance to the 3^d - 1 nearest
            neighbours (the grid width on a regular grid, robust on clouds); an integer k:
            from the distance to the k-th nearest neighbour (the former option, kept for
            configs that set it). Either way the neighbourhood then grows until well-posed.
        smoothing_radius: rho, a physical length: differentiate ``M_rho f`` (module docstring),
            bounded and convergent on inputs with jumps. None (default): no mollification.
            On the sphere a geodesic angle in radians (geodesic balls).
        manifold: ``"plane"`` (default) or ``"sphere"``: 3D points on a sphere about the origin
            (radius = their median norm, within 1e-6 relative), the 2D stencil in each point's
            east/north tangent plane (:mod:`graphop.layers.stencil_sphere`); ``dim`` must then
            be 2 (the sphere's dimension) and D f converges to ``sum_l theta_l s_l . (grad_S f .
            east, grad_S f . north)``.
        gradient: with ``smoothing_radius``: ``"kernel"`` (default: the exact gradient of the
            mollified field, d rows per point, contracted with :meth:`limit_directions`) or
            ``"stencil"`` (the stencil applied to the mollified field); see the module
            docstring. Without smoothing, and on the sphere, the stencil is used.
        quadrature: how the mollifier integrates: ``"cells"`` (default: on a mesh with cells,
            the piecewise-linear function of the nodal values at interior points of every
            cell, a planar cloud over its filtered Delaunay triangles, on a torus too; 3D
            clouds and the sphere use the nodes), ``"points"`` (the nodes with
            ``data.weight``, before checkpoint version 3) or ``"cells-except-torus"`` (nodes
            on a torus, before version 4); see :mod:`graphop.layers.sparse`.

    Call: ``conv(x, data)`` with ``data`` a ``Data``/``Batch`` holding ``pos`` [N, d]
    (``periodic`` [1, d] for tori), and ``weight`` [N] when ``smoothing_radius`` is set.

    Shapes:
        x: [N, C] -> [N, O]. theta: [L, C, O]; ``offsets`` buffer-free attribute s_l [L, d].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dim: int = 2,
                 scale: float = 1.0, bias: bool = True, spacing_neighbours: int | None = None,
                 smoothing_radius: float | None = None, manifold: str = "plane",
                 quadrature: str = "cells", gradient: str = "kernel"):
        super().__init__()
        self.quadrature = quadrature_mode(quadrature)
        if gradient not in ("kernel", "stencil"):
            raise InputError(f"DifferentialConv: gradient must be 'kernel' or 'stencil', got "
                             f"{gradient!r}")
        self.gradient = gradient
        if manifold not in ("plane", "sphere"):
            raise InputError(f"DifferentialConv: manifold must be 'plane' or 'sphere', got "
                             f"{manifold!r}")
        if manifold == "sphere" and dim != 2:
            raise InputError(f"DifferentialConv(manifold='sphere'): dim is the stencil's "
                             f"dimension, 2 on the sphere (its tangent planes), got {dim}")
        self.manifold = manifold
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"DifferentialConv: channel counts must be >= 1, got "
                             f"{in_channels} -> {out_channels}")
        if dim not in (1, 2, 3):
            raise InputError(f"DifferentialConv: dim must be 1, 2 or 3, got {dim}")
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"DifferentialConv: scale must be positive, got {scale}")
        rho = smoothing_radius
        if rho is not None:
            try:
                rho = float(rho)
            except (TypeError, ValueError):
                rho = math.nan
            if not (math.isfinite(rho) and rho > 0):
                raise ConfigError(f"DifferentialConv: smoothing_radius must be a positive length "
                                 f"or None, got {smoothing_radius!r}")
        self.smoothing_radius = rho
        self.offsets = stencil_offsets(kernel_size, dim)       # validates kernel_size
        self._offsets_on = {}        # the offsets as a tensor per (device, dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        if spacing_neighbours is not None and int(spacing_neighbours) < 1:
            raise InputError(f"DifferentialConv: spacing_neighbours must be >= 1, got "
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
        if self.manifold == "sphere":
            return self._sphere_operator(g)
        if g.pos.shape[1] != self.dim:
            raise InputError(f"DifferentialConv: data.pos is {g.pos.shape[1]}D but the layer was "
                             f"built with dim={self.dim} (dimension mismatch)")
        k, s, nb = self.kernel_size, self.scale, self.spacing_neighbours

        def build(p_out, p_in, w_in, periodic, same):
            m, info, _ = stencil_info(p_in, k, s, periodic, nb)
            if len(info.degenerate):
                i = int(info.degenerate[0])      # named by the user's number
                warnings.warn(
                    f"DifferentialConv: {len(info.degenerate)} of {len(p_in)} points have "
                    f"neighbourhoods spanning fewer than {self.dim} directions even at "
                    f"{MAX_GROWTH:g}x their spacing (e.g. point {point_number(i)} at "
                    f"{p_in[i].tolist()}; points on "
                    f"a curve or surface?); their stencils are exact only along the spanned "
                    f"directions", GraphopWarning, stacklevel=6)
            return m, len(self.offsets)

        return cached_operator("stencil", (k, s, nb, "plane"), g, None, build)

    def _sphere_operator(self, g):
        from graphop.layers.stencil_sphere import sphere_stencil_info
        if g.pos.shape[1] != 3:
            raise InputError(f"DifferentialConv(manifold='sphere'): data.pos must be 3D points "
                             f"on a sphere, got {g.pos.shape[1]}D")
        k, s, nb = self.kernel_size, self.scale, self.spacing_neighbours

        def build(p_out, p_in, w_in, periodic, same):
            if periodic is not None:
                raise InputError("DifferentialConv(manifold='sphere'): data.periodic makes no "
                                 "sense on a sphere")
            return sphere_stencil_info(p_in, k, s, nb)[0], len(self.offsets)

        return cached_operator("stencil", (k, s, nb, "sphere"), g, None, build)

    def mollifier(self, data):
        """``(SparseOperator, fold)`` of M_rho [N, N] for this geometry (cached), or None."""
        rho = self.smoothing_radius
        if rho is None:
            return None
        cells = uses_cells(self.quadrature) and self.manifold == "plane"
        g = graph_set(data, need_weight=True, what="data", cells=cells)

        def build(p_out, p_in, w_in, periodic, same, interp=None):
            if self.manifold == "sphere":
                from graphop.layers.stencil_sphere import sphere_mollifier_matrix
                if p_in.shape[1] != 3 or periodic is not None:
                    raise InputError("DifferentialConv(manifold='sphere'): data.pos must be 3D "
                                     "points on a sphere (and not periodic)")
                return sphere_mollifier_matrix(p_in, w_in, rho), 1
            m = mollifier_matrix(p_in, w_in, rho, periodic, pos_out=None if same else p_out)
            if interp is not None:
                m = (m @ interp[0]).tocsr()
                m.sort_indices()
            return m, 1

        return cached_operator("mollifier", (rho, self.manifold), g, None, build,
                               quadrature=self.quadrature if cells else "points")

    @property
    def kernel_gradient(self) -> bool:
        """True when the layer applies the exact gradient of the mollified field."""
        return (self.gradient == "kernel" and self.smoothing_radius is not None
                and self.manifold == "plane")

    def gradient_operator(self, data):
        """``(SparseOperator, fold)`` of grad M_rho [N d, N] (d rows per point) for this
        geometry, from the cache; see :func:`graphop.layers.stencil.mollifier_gradient_matrix`."""
        rho = self.smoothing_radius
        cells = uses_cells(self.quadrature)
        g = graph_set(data, need_weight=True, what="data", cells=cells)
        if g.pos.shape[1] != self.dim:
            raise InputError(f"DifferentialConv: data.pos is {g.pos.shape[1]}D but the layer was "
                             f"built with dim={self.dim} (dimension mismatch)")

        def build(p_out, p_in, w_in, periodic, same, interp=None):
            return mollifier_gradient_matrix(p_in, w_in, rho, periodic,
                                             pos_out=None if same else p_out,
                                             interp=None if interp is None else interp[0]
                                             ), self.dim

        return cached_operator("mollifier_gradient", (rho,), g, None, build,
                               quadrature=self.quadrature)

    def smooth(self, x: torch.Tensor, data) -> torch.Tensor:
        """``M_rho x`` [N, C] (x itself when ``smoothing_radius`` is None)."""
        mol = self.mollifier(data)
        if mol is None:
            return x
        return fold_matmul(*mol, x)

    def forward(self, x: torch.Tensor, data) -> torch.Tensor:
        check_features(x, n_points(data), self.in_channels, "DifferentialConv")
        if x.dtype != self.weight.dtype:
            raise InputError(f"DifferentialConv: x is {x.dtype} but the layer is "
                             f"{self.weight.dtype}; convert one of them (e.g. layer.double())")
        if self.kernel_gradient:
            op, fold = self.gradient_operator(data)
            y = apply_operator(op, fold, x, self.limit_directions())
        else:
            x = self.smooth(x, data)
            op, fold = self.operator(data)
            y = apply_operator(op, fold, x, self.weight)
        return y if self.bias is None else y + self.bias

    def limit_directions(self) -> torch.Tensor:
        """The limit operator as [d, C, O]: D f -> sum_k G[k] d f / d x_k with
        ``G[k, c, o] = sum_l theta[l, c, o] s_l[k]``."""
        key = (self.weight.device, self.weight.dtype)
        s = self._offsets_on.get(key)
        if s is None:        # copied once per device: on a GPU a copy per step is a sync
            s = self._offsets_on[key] = torch.as_tensor(np.asarray(self.offsets), dtype=key[1],
                                                        device=key[0])
        return torch.einsum("lk,lco->kco", s, self.weight)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"dim={self.dim}, scale={self.scale:g}, spacing_neighbours="
                f"{self.spacing_neighbours or 'mean'}, smoothing_radius={self.smoothing_radius}, "
                f"n_basis={self.n_basis}, manifold={self.manifold!r}, "
                f"quadrature={self.quadrature!r}, gradient={self.gradient!r}, "
                f"bias={self.bias is not None}")
