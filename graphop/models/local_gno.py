"""LocalGNO: the localized neural operator of Liu-Schiaffini et al. (ICML 2024, arXiv 2402.16845)
on meshes, with a GINO-style global branch (Li et al., NeurIPS 2023, arXiv 2309.00583).

    h_0     = lift([x, p(pos)])                                 pointwise MLP
    h_{l+1} = act( W_l h_l + G_l(h_l) + K_l(h_l) + D_l(h_l) )   l = 0 .. n_layers - 1
    out     = project(h_L)                                      pointwise MLP

(no activation after the last block), where every branch can be switched off for ablation:

* ``"global"``: G(h) = Dec( SpectralConv( [Enc(h), occupancy] ) ) -- the mesh features are
  averaged onto a fixed latent grid (:class:`graphop.layers.latent.GridEncoder`), mixed by an FNO
  spectral convolution (zero-padded unless the domain is a torus) and interpolated back
  (:class:`graphop.layers.latent.GridDecoder`). The encoder/decoder operators are built once
  per geometry and shared by all blocks.
* ``"disco"``: K = :class:`graphop.layers.disco.DISCOConv` (local integral, fixed radius).
* ``"diff"``: D = :class:`graphop.layers.differential.DifferentialConv` (stencil / h).

p(pos) is pos itself, or [sin(2 pi pos / L), cos(2 pi pos / L)] on a torus (``periodic=True``,
``data.periodic`` = [1, d] box lengths), so that the model is smooth across the seam.

Coordinates are physical lengths: the latent box (default the unit box padded by 5%) and the
DISCO radius are model hyperparameters; the trainer maps coordinates into the unit box with one
affine map fitted on the training set.

Defaults are sized for training on a 2-core CPU in minutes (1.3M parameters in 2D, complex
spectral weights counted once; 3.8M in 3D):
width 32, 4 layers, latent grid 32 x 32 with 12 x 12 modes (3D: 16^3 grid, 6^3 modes), DISCO
kernel_shape (3, 4). The paper-scale setting is width=64, latent_shape=(64, 64), modes=(16, 16).

Supports: ``disco_radius``, ``encoder_radius`` and (when the installed DifferentialConv takes
it) ``diff_kwargs["smoothing_radius"]`` default to ``"auto"``: chosen from the coarsest
training mesh by :func:`graphop.models.supports.resolve_supports`, which the trainer calls
before it builds the model, so that the checkpoint stores numbers. A LocalGNO built with an
unresolved ``"auto"`` has all its parameters but raises :class:`graphop.errors.ConfigError`
when called. A number given by the user is used as is.

Args:
    in_channels: input field channels (``data.x``; 0 for coordinates only).
    out_channels: output channels.
    width: hidden channels (default 32).
    n_layers: number of blocks (default 4).
    branches: subset of ("global", "disco", "diff") (default all three).
    dim: spatial dimension when ``latent_shape`` is not given (default 2).
    latent_shape: latent grid nodes per axis (default (32, 32) / (16, 16, 16)).
    modes: Fourier modes per axis (default (12, 12) / (6, 6, 6)).
    latent_box: ((lo...), (hi...)) of the latent grid (default unit box padded by
        ``box_padding`` = 0.05).
    fft_padding: zero padding fraction of the FFT on non-periodic domains (default 0.25).
    encoder_radius: radius of the grid encoder in model coordinates; ``"auto"`` (default):
        max(1.5 latent spacings, 2 spacings of the coarsest training mesh); None: 1.5 latent
        spacings (the default before ``auto``).
    quadrature: how the integral operators (grid encoder, DISCO, the differential branch's
        mollifier) integrate: ``"cells"`` (default: on meshes with cells, the piecewise-linear
        function of the nodal values at interior points of every cell, planar point clouds
        over their filtered Delaunay triangles, on a torus too; 3D clouds and the sphere use
        the nodes), ``"points"`` (the nodes with their quadrature weights, as before
        checkpoint version 3) or ``"cells-except-torus"`` (nodes on a torus, as before
        version 4). See :mod:`graphop.layers.sparse`.
    encoder_floor: the grid encoder's averaging denominator is at least this fraction of its
        kernel mass (default 0.5; :class:`graphop.layers.latent.GridEncoder`). 0 is the plain
        local average of checkpoints before version 3, which is discontinuous in the mesh at
        latent nodes whose kernel barely reaches the domain.
    disco_radius: radius of the DISCO kernel in model coordinates; ``"auto"`` (default): the
        smallest radius holding >= 30 points per ball on the coarsest training mesh. It must
        cover several spacings of the coarsest mesh the model will meet: a kernel that holds
        only a handful of points is under-resolved, and a model trained there learns the
        discretisation instead of the operator and does not transfer across resolutions
        (measured: experiments/README.md). For ~1000-point meshes of a unit-size 2D domain
        ``auto`` gives ~0.1.
    kernel_shape: DISCO basis shape (default (3, 4)).
    disco_kwargs, diff_kwargs: extra keyword arguments of DISCOConv / DifferentialConv
        (DISCO and differential get ``bias=False``: the pointwise W carries the bias;
        ``diff_kwargs["smoothing_radius"]`` defaults to ``"auto"`` when DifferentialConv takes it).
    diff_scale: a fixed reference length multiplying the differential branch (default 0.02,
        the spacing of a ~2500-point mesh of the unit square). DifferentialConv divides by the
        local spacing h_i, so without it the branch grows like 1/h; the paper's code does the
        same by passing grid_width = (training resolution / resolution). The limit under
        refinement is unchanged (a constant factor).
    lifting_channels, projection_channels: hidden sizes of the lift/projection MLPs
        (default 2 * width and 4 * width).
    activation: "gelu" (default), "relu", "silu" or "tanh".
    periodic: the data lives on a torus (``data.periodic``), default False.
    manifold: ``"plane"`` (default) or ``"sphere"``: 3D points on a sphere about the origin
        (the trainer picks it for such data). Then the global branch is the spherical one
        (:class:`graphop.layers.spherical.SphericalGlobalBranch`: a Gauss latent grid
        ``latent_shape`` = (nlat, nlon), default (32, 64), degrees up to ``modes`` = (lmax,),
        default nlat // 2), DISCO is geodesic and the stencil lives in each point's tangent
        plane; ``disco_radius``, ``encoder_radius`` and the smoothing radius are geodesic
        angles in radians.
    checkpoint_blocks: recompute each block's intermediate activations in the backward pass
        instead of keeping them (``torch.utils.checkpoint``): about one [N, width] tensor per
        block is kept instead of the DISCO and stencil products ([N L, width] each, L = 9 and
        8 by default), for one extra forward pass. For very large meshes (default False).

Shapes:
    data.x [N, in_channels], data.pos [N, d], data.weight [N] (Data or Batch) -> [N, out_channels]
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from graphop.errors import ConfigError, InputError
from graphop.layers.disco import NORMALIZE, normalize_mode
from graphop.layers.latent import GridDecoder, GridEncoder
from graphop.layers.sparse import quadrature_mode
from graphop.layers.spectral import SpectralConv
from graphop.models.mlp import ACTIVATIONS, mlp, plain_config, point_features
from graphop.models.supports import AUTO, unresolved_supports

__all__ = ["LocalGNO", "GlobalBranch", "BRANCHES"]

BRANCHES = ("global", "disco", "diff")
class GlobalBranch(nn.Module):
    """G(h) = Dec(SpectralConv([Enc(h), occupancy])): [N, width] -> [N, width].

    The encoder/decoder operators come from ``latent`` = (encoder, decoder, enc_op, dec_op,
    periodic), built once per forward pass by :class:`LocalGNO`."""

    def __init__(self, width: int, modes, fft_padding: float = 0.25):
        super().__init__()
        self.spectral = SpectralConv(width + 1, width, modes, padding=fft_padding)

    def reset_parameters(self) -> None:
        self.spectral.reset_parameters()

    def forward(self, h: torch.Tensor, data, latent) -> torch.Tensor:
        encoder, decoder, enc_op, dec_op, periodic = latent
        # channels last throughout: the encoder's product viewed as grids, the occupancy joined
        # among the kept modes, the decoder reading the output as it is (no transposed copies)
        g, occ = encoder(h, data, op=enc_op, channels_last=True)
        y = self.spectral((g, occ), periodic=periodic, channels_last=True)
        return decoder(y, data, op=dec_op, channels_last=True)


class _Block(nn.Module):
    def __init__(self, width, branches, dim, modes, fft_padding, disco_radius, kernel_shape,
                 disco_kwargs, diff_kwargs, diff_scale, sphere=None):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.glob = None
        if "global" in branches and sphere is None:
            self.glob = GlobalBranch(width, modes, fft_padding)
        elif "global" in branches:
            from graphop.layers.spherical import SphericalGlobalBranch

            latent_shape, lmax, r_enc = sphere
            self.glob = SphericalGlobalBranch(width, width, latent_shape, lmax=lmax,
                                              radius=r_enc)
        if sphere is not None:   # geodesic DISCO and the tangent-plane stencil
            disco_kwargs = {**disco_kwargs, "manifold": "sphere"}
            diff_kwargs = {**diff_kwargs, "manifold": "sphere"}
            dim = 2
        self.disco = self.diff = None
        self.diff_scale = float(diff_scale)
        if "disco" in branches:
            from graphop.layers.disco import DISCOConv

            # the pointwise W carries the bias; an unresolved "auto" radius gets the parameters
            # now and NaN as radius (the weights do not depend on it; LocalGNO.forward refuses)
            auto = disco_radius == AUTO
            self.disco = DISCOConv(width, width, 1.0 if auto else disco_radius,
                                   kernel_shape=tuple(kernel_shape), **{"bias": False, **disco_kwargs})
            if auto:
                self.disco.radius = math.nan
        if "diff" in branches:
            from graphop.layers.differential import DifferentialConv

            kw = {k: v for k, v in diff_kwargs.items() if v != AUTO}
            self.diff = DifferentialConv(width, width, **{"dim": dim, "bias": False, **kw})

    def forward(self, h, data, latent):
        z = self.linear(h)
        if self.glob is not None and isinstance(self.glob, GlobalBranch):
            z = z + self.glob(h, data, latent)
        elif self.glob is not None:
            z = z + self.glob(h, data, ops=latent)
        if self.disco is not None:
            z = z + self.disco(h, data)
        if self.diff is not None:
            z = z + self.diff_scale * self.diff(h, data)
        return z


def _positive(v) -> bool:
    try:
        return not isinstance(v, bool) and math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False


class LocalGNO(nn.Module):
    """Lift -> blocks act(W h + global + disco + diff) -> project (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, n_layers: int = 4,
                 branches=BRANCHES, dim: int | None = None, latent_shape=None, modes=None,
                 latent_box=None, box_padding: float = 0.05, fft_padding: float = 0.25,
                 encoder_radius: float | str | None = AUTO, disco_radius: float | str = AUTO,
                 kernel_shape=(3, 4), disco_kwargs: dict | None = None,
                 diff_kwargs: dict | None = None, diff_scale: float = 0.02,
                 lifting_channels: int | None = None,
                 projection_channels: int | None = None, activation: str = "gelu",
                 periodic: bool = False, manifold: str = "plane",
                 checkpoint_blocks: bool = False, encoder_floor: float = 0.5,
                 quadrature: str = "cells"):
        super().__init__()
        branches = tuple(branches)
        if manifold not in ("plane", "sphere"):
            raise InputError(f"manifold must be 'plane' or 'sphere', got {manifold!r}")
        sphere = manifold == "sphere"
        if sphere and (periodic or (dim is not None and dim != 3)):
            raise InputError("manifold='sphere' takes 3D points on a sphere about the origin "
                             f"(dim 3, not periodic), got dim={dim}, periodic={periodic}")
        bad = [b for b in branches if b not in BRANCHES]
        if bad or len(set(branches)) != len(branches):
            raise InputError(f"branches must be distinct names from {BRANCHES}, got {branches}")
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if in_channels < 0 or out_channels < 1 or width < 1 or n_layers < 1:
            raise InputError(f"need in_channels >= 0, out_channels >= 1, width >= 1, n_layers >= 1; "
                             f"got {in_channels}, {out_channels}, {width}, {n_layers}")
        if sphere:
            # latent (nlat, nlon) Gauss grid; modes = (lmax,), the largest degree mixed
            dim = 3
            latent_shape = tuple(int(n) for n in (latent_shape or (32, 64)))
            if len(latent_shape) != 2:
                raise InputError(f"on the sphere latent_shape is (nlat, nlon), got {latent_shape}")
            modes = tuple(int(m) for m in np.atleast_1d(modes if modes is not None
                                                        else latent_shape[0] // 2))
            if len(modes) != 1:
                raise InputError(f"on the sphere modes is (lmax,), got {modes}")
        elif latent_shape is not None:
            latent_shape = tuple(int(n) for n in latent_shape)
            if dim is not None and dim != len(latent_shape):
                raise InputError(f"dim={dim} but latent_shape {latent_shape} has {len(latent_shape)} axes")
            dim = len(latent_shape)
        dim = 2 if dim is None else int(dim)
        if dim not in (2, 3):
            raise InputError(f"dim must be 2 or 3, got {dim}")
        latent_shape = latent_shape or ((32, 32) if dim == 2 else (16, 16, 16))
        modes = tuple(int(m) for m in (modes or ((12, 12) if dim == 2 else (6, 6, 6))))
        if len(modes) != dim and not sphere:
            raise InputError(f"modes {modes} must have one entry per axis of latent_shape {latent_shape}")
        lifting_channels = lifting_channels or 2 * width
        projection_channels = projection_channels or 4 * width
        disco_kwargs, diff_kwargs = dict(disco_kwargs or {}), dict(diff_kwargs or {})
        quadrature = quadrature_mode(quadrature)
        if "disco" in branches:
            # recorded in the config, so a checkpoint pins the DISCO normalisation it was trained with
            disco_kwargs["normalize"] = normalize_mode(disco_kwargs.get("normalize", NORMALIZE[0]))
        if not sphere:
            disco_kwargs.setdefault("quadrature", quadrature)
            diff_kwargs.setdefault("quadrature", quadrature)
            if "diff" in branches:
                diff_kwargs.setdefault("gradient", "kernel")
        for key, v, none_ok in (("disco_radius", disco_radius, False),
                                ("encoder_radius", encoder_radius, True)):
            if not (v == AUTO or (v is None and none_ok) or _positive(v)):
                raise InputError(f"{key} must be 'auto' or a positive number, got {v!r}")
        if "diff" in branches and diff_kwargs.get("smoothing_radius", AUTO) == AUTO:
            # the smoothing radius follows the DISCO radius (graphop.models.supports), so a
            # given disco_radius fixes it without data
            diff_kwargs["smoothing_radius"] = disco_radius if _positive(disco_radius) else AUTO
        self.config = plain_config(dict(
            name="local_gno", in_channels=in_channels, out_channels=out_channels, width=width,
            n_layers=n_layers, branches=branches, dim=dim, latent_shape=latent_shape, modes=modes,
            latent_box=latent_box, box_padding=box_padding, fft_padding=fft_padding,
            encoder_radius=encoder_radius, encoder_floor=float(encoder_floor), quadrature=quadrature,
            disco_radius=disco_radius, kernel_shape=kernel_shape,
            disco_kwargs=disco_kwargs, diff_kwargs=diff_kwargs, diff_scale=diff_scale,
            lifting_channels=lifting_channels,
            projection_channels=projection_channels, activation=activation, periodic=periodic,
            manifold=manifold, checkpoint_blocks=bool(checkpoint_blocks)))
        self.checkpoint_blocks = bool(checkpoint_blocks)
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.branches, self.dim, self.periodic = branches, dim, bool(periodic)
        self.act = ACTIVATIONS[activation]()
        n_pos = 2 * dim if periodic else dim
        self.lift = mlp([in_channels + n_pos, lifting_channels, width], activation)
        self.sphere = sphere
        # an unresolved "auto" encoder radius builds with the default and is refused in forward
        r_enc = encoder_radius if _positive(encoder_radius) else None
        sph = (latent_shape, modes[0], r_enc) if sphere else None
        self.blocks = nn.ModuleList(
            _Block(width, branches, dim, modes, fft_padding, disco_radius, kernel_shape, disco_kwargs,
                   diff_kwargs, diff_scale, sph) for _ in range(n_layers))
        self.project = mlp([width, projection_channels, out_channels], activation)
        if "global" in branches and not sphere:
            auto = encoder_radius == AUTO
            self.encoder = GridEncoder(latent_shape, latent_box, box_padding,
                                       radius=None if auto else encoder_radius,
                                       floor=encoder_floor, quadrature=quadrature)
            if auto:
                self.encoder.radius = math.nan   # unresolved (see the DISCO branch)
            self.decoder = GridDecoder(latent_shape, latent_box, box_padding)
        self.unresolved = unresolved_supports(self.config)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _features(self, data) -> torch.Tensor:
        return point_features(data, self.dim, self.in_channels, self.periodic, "LocalGNO")

    def forward(self, data) -> torch.Tensor:
        if self.unresolved:
            raise ConfigError(
                f"LocalGNO: {', '.join(self.unresolved)} {'is' if len(self.unresolved) == 1 else 'are'}"
                " still 'auto' (unresolved): choose from the training meshes with "
                "graphop.models.supports.resolve_supports(config, train_samples) before "
                "build_model (the trainer does), or give numbers")
        h = self.lift(self._features(data))
        latent = None
        if "global" in self.branches and self.sphere:
            glob = self.blocks[0].glob     # operators built once, shared by every block
            latent = (glob.encoder.operator(data), glob.decoder.operator(data))
        elif "global" in self.branches:
            enc_op = self.encoder.operator(data)
            dec_op = self.decoder.operator(data)
            latent = (self.encoder, self.decoder, enc_op, dec_op, self.periodic)
        for i, block in enumerate(self.blocks):
            if self.checkpoint_blocks and torch.is_grad_enabled() and h.requires_grad:
                # recompute the block in the backward pass: keeps only its input [N, width]
                h = torch.utils.checkpoint.checkpoint(block, h, data, latent, use_reentrant=False)
            else:
                h = block(h, data, latent)
            if i < len(self.blocks) - 1:
                h = self.act(h)
        return self.project(h)

    def extra_repr(self) -> str:
        c = self.config
        return (f"in={c['in_channels']}, out={c['out_channels']}, width={c['width']}, "
                f"n_layers={c['n_layers']}, branches={tuple(c['branches'])}, "
                f"latent_shape={tuple(c['latent_shape'])}, modes={tuple(c['modes'])}, "
                f"periodic={c['periodic']}")
