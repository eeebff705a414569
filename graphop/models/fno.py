"""A grid Fourier neural operator baseline applied directly on structured-grid data.

Li et al., "Fourier Neural Operator for Parametric Partial Differential Equations" (ICLR 2021):

    h_0     = lift([x, p(pos)])                              pointwise MLP on the grid nodes
    h_{l+1} = act( W_l h_l + K_l h_l )                       l = 0 .. n_layers - 1
    out     = project(h_L)                                   pointwise MLP
    (K h)_o = IRFFT( sum_c R[c, o, k] RFFT(h_c)[k] )         kept modes k, zero elsewhere

(no activation after the last block), with :class:`graphop.layers.spectral.SpectralConv` as K
and the FFT over the data's own grid: there is no encoder or decoder. Every sample must be a
full tensor grid: its points take n_1 distinct values on axis 1, n_2 on axis 2, ..., equally
spaced, and n_1 * n_2 * ... = N (a structured ``quad`` or ``tri`` grid of a box). The model
finds each sample's grid from its coordinates, gathers the points into grid order, and returns
the outputs in the order of the input points (so the output follows any permutation of them).
A batch may mix grid shapes; samples of one shape go through the FFT together.

Zero padding (non-periodic domains, as in Li et al.'s code): after the lift each axis is padded
at its end with round((1 + padding) (n_a - 1)) - n_a zero nodes, so the FFT's period is
(1 + padding) times the box side at *every* resolution: mode k is the same physical frequency
on a 17 x 17 and a 65 x 65 grid, which is what zero-shot evaluation at another resolution
needs (exact when padding * (n_a - 1) is an integer, e.g. padding 0.25 on 2^k + 1 nodes). The
output is cropped back before the projection. A torus (``periodic=True``, ``data.periodic``) is
not padded and sees p(pos) = [sin(2 pi pos / L), cos(2 pi pos / L)]; otherwise p(pos) = pos.

Modes: the weights hold ``modes``; a grid that cannot hold them (after padding: n_a >= 2 m_a on
the leading axes, n_d // 2 + 1 >= m_d on the last) uses the lowest modes it holds. In training
mode that truncation is kept (the buffer ``active_modes``, saved with the weights), so a model
trained on a 17 x 17 grid evaluates a 33 x 33 grid with the modes it was trained with, as an FNO
does, and never with untrained weights. Evaluation on a grid coarser than training truncates
for that call only.

Defaults follow the small Darcy FNO (neuraloperator): width 32, 4 layers, modes (12, 12)
(1D: (16,), 3D: (6, 6, 6)), padding 0.25, lifting 2 * width, projection 4 * width (Li et al.
project through 128 = 4 * 32 channels).

Args:
    in_channels: input field channels (``data.x``; 0 for coordinates only).
    out_channels: output channels.
    width: hidden channels (default 32).
    n_layers: number of Fourier blocks (default 4).
    modes: Fourier modes per axis (default (12, 12) in 2D).
    dim: number of grid axes, 1 to 3 (default 2, or ``len(modes)``).
    padding: zero padding as a fraction of the box side (default 0.25; ignored on a torus).
    lifting_channels, projection_channels: hidden sizes of the lift/projection MLPs
        (default 2 * width and 4 * width).
    activation: "gelu" (default), "relu", "silu" or "tanh".
    periodic: the data lives on a torus (``data.periodic``), default False.

Shapes:
    data.x [N, in_channels], data.pos [N, d] (Data or Batch of tensor grids) -> [N, out_channels]
"""
from __future__ import annotations

import math

import torch
from torch import nn

from graphop.errors import DataError, InputError
from graphop.layers.spectral import SpectralConv
from graphop.models.mlp import ACTIVATIONS, mlp, plain_config, point_features

__all__ = ["FNO", "grid_order"]

_DEFAULT_MODES = {1: (16,), 2: (12, 12), 3: (6, 6, 6)}


def grid_order(pos: torch.Tensor, what: str = "sample") -> tuple[tuple[int, ...], torch.Tensor]:
    """The tensor grid of the points ``pos`` [n, d]: ``(shape, order)``.

    ``shape`` = (n_1, ..., n_d), the number of distinct coordinates per axis; ``order`` [n]
    lists the point indices in C order over the grid (axis 1 slowest), so ``f[order]`` reshaped
    to ``shape`` is the grid of a field f. Raises :class:`DataError` (one line, naming ``what``)
    unless the points are exactly the n_1 x ... x n_d nodes of an equally spaced grid.
    """
    n, d = pos.shape
    shape, coords, index = [], [], []
    for a in range(d):
        u, inv = torch.unique(pos[:, a], return_inverse=True)
        if len(u) < 2:
            raise DataError(f"{what}: FNO needs a grid with at least 2 nodes per axis; axis {a} "
                            f"has {len(u)} distinct coordinate(s)")
        shape.append(len(u))
        coords.append(u)
        index.append(inv)
    total = math.prod(shape)
    flat = torch.zeros_like(index[0])
    for a in range(d):
        flat = flat * shape[a] + index[a]
    if total != n or bool((torch.bincount(flat, minlength=total) != 1).any()):
        dims = " x ".join(str(s) for s in shape)
        raise DataError(f"{what}: FNO needs the points on a full tensor grid, but its {n} points "
                        f"have {dims} distinct coordinates ({total} grid nodes, "
                        f"{int(torch.unique(flat).numel())} of them occupied); use a mesh model "
                        f"(local_gno, gino) for unstructured data")
    for a, u in enumerate(coords):
        du = torch.diff(u.double())
        if float(du.max() - du.min()) > 1e-3 * float(du.mean()):
            raise DataError(f"{what}: FNO needs an equally spaced grid; the {len(u)} distinct "
                            f"coordinates of axis {a} have spacings {float(du.min()):.4g} to "
                            f"{float(du.max()):.4g}")
    order = torch.empty_like(flat)
    order[flat] = torch.arange(n, device=flat.device)
    return tuple(shape), order


class FNO(nn.Module):
    """Grid FNO: lift -> blocks act(W h + K h) -> project, on each sample's own grid (see the
    module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, n_layers: int = 4,
                 modes=None, dim: int | None = None, padding: float = 0.25,
                 lifting_channels: int | None = None, projection_channels: int | None = None,
                 activation: str = "gelu", periodic: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if in_channels < 0 or out_channels < 1 or width < 1 or n_layers < 1:
            raise InputError(f"need in_channels >= 0, out_channels >= 1, width >= 1, n_layers >= 1; "
                             f"got {in_channels}, {out_channels}, {width}, {n_layers}")
        if modes is not None:
            modes = tuple(int(m) for m in modes)
            if dim is not None and int(dim) != len(modes):
                raise InputError(f"dim={dim} but modes {modes} has {len(modes)} entries")
            dim = len(modes)
        dim = 2 if dim is None else int(dim)
        if dim not in (1, 2, 3):
            raise InputError(f"dim must be 1, 2 or 3, got {dim}")
        modes = modes or _DEFAULT_MODES[dim]
        if min(modes) < 1:
            raise InputError(f"modes must be positive, got {modes}")
        if padding < 0:
            raise InputError(f"padding must be >= 0, got {padding}")
        lifting_channels = lifting_channels or 2 * width
        projection_channels = projection_channels or 4 * width
        self.config = plain_config(dict(
            name="fno", in_channels=in_channels, out_channels=out_channels, width=width,
            n_layers=n_layers, modes=modes, dim=dim, padding=padding,
            lifting_channels=lifting_channels, projection_channels=projection_channels,
            activation=activation, periodic=periodic))
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.dim, self.modes, self.padding = dim, modes, float(padding)
        self.periodic = bool(periodic)
        self.act = ACTIVATIONS[activation]()
        n_pos = 2 * dim if periodic else dim
        self.lift = mlp([in_channels + n_pos, lifting_channels, width], activation)
        self.spectral = nn.ModuleList(SpectralConv(width, width, modes, padding=0.0)
                                      for _ in range(n_layers))
        self.linear = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))
        self.project = mlp([width, projection_channels, out_channels], activation)
        # the modes in use (<= modes): shrunk to what the training grids hold, saved with the model
        self.register_buffer("active_modes", torch.tensor(modes, dtype=torch.long))

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.active_modes.copy_(torch.tensor(self.modes, dtype=torch.long))

    # ------------------------------------------------------------------ geometry
    def pad_amount(self, shape) -> tuple[int, ...]:
        """Zero nodes appended per axis: round((1 + padding) (n_a - 1)) - n_a (>= 0); 0 on a torus."""
        if self.periodic:
            return (0,) * len(shape)
        return tuple(max(0, int(round((1 + self.padding) * (n - 1))) - n) for n in shape)

    def grid_modes(self, shape) -> tuple[int, ...]:
        """The modes used on a grid of ``shape`` (before padding): ``active_modes`` cut to what
        the padded grid holds."""
        n = [s + p for s, p in zip(shape, self.pad_amount(shape))]
        fits = [s // 2 for s in n[:-1]] + [n[-1] // 2 + 1]
        return tuple(min(int(m), f) for m, f in zip(self.active_modes.tolist(), fits))

    def _features(self, data) -> torch.Tensor:
        return point_features(data, self.dim, self.in_channels, self.periodic, "FNO")

    @staticmethod
    def _ptr(data) -> list[int]:
        n = int(data.pos.shape[0])
        ptr = getattr(data, "ptr", None)
        if ptr is not None:
            return [int(v) for v in ptr.tolist()]
        b = getattr(data, "batch", None)
        if b is None or not len(b):
            return [0, n]
        if bool((b[1:] < b[:-1]).any()):
            raise InputError("data.batch must be sorted (samples stored contiguously)")
        return [0] + torch.bincount(b.cpu()).cumsum(0).tolist()

    def _groups(self, data) -> dict:
        """{grid shape: point indices [B_s * n] in grid order, sample after sample}."""
        ptr = self._ptr(data)
        groups: dict = {}
        for b, (lo, hi) in enumerate(zip(ptr[:-1], ptr[1:])):
            what = "sample" if len(ptr) == 2 else f"sample {b} of the batch"
            shape, order = grid_order(data.pos[lo:hi].detach(), what)
            groups.setdefault(shape, []).append(order + lo)
        return {s: torch.cat(v) for s, v in groups.items()}

    # ------------------------------------------------------------------ forward
    def _blocks(self, h: torch.Tensor, shape) -> torch.Tensor:
        """h [B, *shape, width] -> [B, *shape, width] through the Fourier blocks."""
        d = self.dim
        if self.training:   # keep the truncation: never use modes the training grids lack
            self.active_modes.copy_(torch.as_tensor(self.grid_modes(shape)))
        modes = self.grid_modes(shape)
        pads = self.pad_amount(shape)
        if any(pads):              # channels last throughout: the grid axes precede the channels
            pad_arg = [0, 0]
            for p in reversed(pads):
                pad_arg += [0, p]
            h = torch.nn.functional.pad(h, pad_arg)
        for i, (spec, lin) in enumerate(zip(self.spectral, self.linear)):
            z = spec(h, periodic=True, modes=modes, channels_last=True) + lin(h)
            h = self.act(z) if i < len(self.spectral) - 1 else z
        if any(pads):
            h = h[(slice(None), *[slice(0, s) for s in shape])]
        return h

    def forward(self, data) -> torch.Tensor:
        f = self.lift(self._features(data))                    # [N, width]
        out = f.new_zeros(f.shape)
        for shape, idx in self._groups(data).items():
            g = f[idx].view(-1, *shape, self.width)
            out = out.index_copy(0, idx, self._blocks(g, shape).reshape(-1, self.width))
        return self.project(out)

    def extra_repr(self) -> str:
        c = self.config
        return (f"in={c['in_channels']}, out={c['out_channels']}, width={c['width']}, "
                f"n_layers={c['n_layers']}, modes={tuple(c['modes'])}, "
                f"active_modes={tuple(self.active_modes.tolist())}, padding={c['padding']}, "
                f"periodic={c['periodic']}")
