"""Mesh augmentation: train on a different discretisation of each function every epoch.

A model trained on one mesh per function can learn that mesh instead of the operator (on 16 x 16
Darcy grids the default run reached training error 0.005 against validation error 0.089). The
augmentation shows it many discretisations of the same function: every epoch each training
sample is replaced by a random **subsample** of its points,

    keep K = boundary points  +  a uniformly drawn ``fraction`` of the interior points,
    x'_k = x(y_k), y'_k = y(y_k)                                     (exact values, k in K)
    w'_k = sum of w_j over the points j whose nearest kept point is k  (sum w' = sum w)

so the fields are the exact data at the kept points and the quadrature weights are the mesh's
own weights gathered onto the kept points (a discrete Voronoi quadrature of the kept set: the
total measure is kept exactly, and a kept point near a removed cluster carries its area).
Boundary points are always kept, so the domain, its boundary values and the coordinate range
do not change. Cells (``face``, ``cells_<type>``) are dropped: the kept points are a point cloud,
which every operator of the model handles (DISCO and the grid encoder use the weights, the
differential stencil the positions).

Jittering the positions is not offered: the field values given at the points are the solution
at *those* points, and moving a point without re-solving the PDE would pair a position with the
value of another position, i.e. falsify the data. Subsampling never does.

The draw of sample i in epoch e uses ``numpy.random.default_rng([seed, e, i])``, so a run is
reproducible, a resumed run sees the same meshes, and every process of a distributed run draws
the same subsample of a given sample.

Shapes:
    Data(pos [N, d], weight [N], x [N, c], y [N, o], boundary [N], ...) -> the same keys with
    M <= N points (cells removed).
"""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch
from scipy.spatial import cKDTree

from graphop.errors import ConfigError, DataError

__all__ = ["AUGMENTATIONS", "subsample", "AugmentedDataset", "augmented"]

AUGMENTATIONS = ("none", "subsample")
_CELL_KEYS = ("face", "edge_index")


def _is_cell_key(key: str) -> bool:
    return key in _CELL_KEYS or key.startswith("cells_")


def subsample(data, rng: np.random.Generator, fraction: float = 0.75, keep_boundary: bool = True):
    """A random subsample of ``data`` (see the module docstring).

    Args:
        data: a sample ``Data`` with ``pos`` [N, d] and ``weight`` [N]; optional ``boundary``
            [N] bool, ``periodic`` [1, d] and any other per-point tensors [N, ...].
        rng: the numpy generator that draws the kept points.
        fraction: share of the interior points kept, in (0, 1] (default 0.75).
        keep_boundary: always keep ``data.boundary`` points (default True).

    Returns:
        A new ``Data``: every per-point tensor restricted to the kept points (in their original
        order), ``weight`` gathered onto them, cells removed, ``mesh_hash`` suffixed.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"augment_fraction must be in (0, 1], got {fraction}")
    pos_t = data.pos
    n = int(pos_t.shape[0])
    weight = getattr(data, "weight", None)
    if weight is None or weight.shape[0] != n:
        raise DataError("subsampling needs quadrature weights 'weight' [N] on the sample")
    boundary = getattr(data, "boundary", None)
    fixed = np.zeros(n, dtype=bool)
    if keep_boundary and boundary is not None and boundary.shape[0] == n:
        fixed = boundary.detach().cpu().numpy().astype(bool).reshape(n)
    free = np.flatnonzero(~fixed)
    m = int(round(fraction * len(free)))
    if fixed.sum() + m < 2:
        m = min(len(free), 2)
    chosen = rng.choice(free, size=m, replace=False) if m < len(free) else free
    keep = np.sort(np.concatenate([np.flatnonzero(fixed), chosen]))
    out = copy.copy(data)
    for key in list(data.keys()):
        if _is_cell_key(key):
            del out[key]
    if len(keep) == n:
        return out
    pos = pos_t.detach().cpu().double().numpy()
    per = getattr(data, "periodic", None)
    box = None if per is None else per.detach().cpu().double().numpy().reshape(-1)[:pos.shape[1]]
    wrap = (lambda p: np.mod(p, box)) if box is not None else (lambda p: p)
    _, nearest = cKDTree(wrap(pos[keep]), boxsize=box).query(wrap(pos), k=1)
    idx = torch.as_tensor(keep, dtype=torch.long, device=pos_t.device)
    for key in list(out.keys()):
        v = out[key]
        if key == "weight" or key == "weight_true":
            w = v.detach().cpu().double().numpy().reshape(n)
            gathered = np.bincount(nearest, weights=w, minlength=len(keep))
            out[key] = torch.as_tensor(gathered, dtype=v.dtype, device=v.device)
        elif torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == n and key != "periodic":
            out[key] = v.index_select(0, idx)
    h = getattr(data, "mesh_hash", None)
    if isinstance(h, str):
        out.mesh_hash = f"{h}:sub-{hashlib.blake2b(keep.tobytes(), digest_size=6).hexdigest()}"
    return out


class AugmentedDataset(torch.utils.data.Dataset):
    """``base`` with every sample subsampled afresh each epoch (training sets only).

    Args:
        base: the (normalised) training dataset.
        fraction: share of interior points kept (default 0.75).
        seed: base seed; sample i of epoch e draws from ``default_rng([seed, e, i])``.

    Call :meth:`set_epoch` before each epoch (the trainer does).
    """

    def __init__(self, base, fraction: float = 0.75, seed: int = 0):
        if not 0 < fraction <= 1:
            raise ConfigError(f"augment_fraction must be in (0, 1], got {fraction}")
        self.base, self.fraction, self.seed, self.epoch = base, float(fraction), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        return subsample(self.base[i], rng, self.fraction)


def augmented(dataset, augment: str = "none", fraction: float = 0.75, seed: int = 0):
    """``dataset`` itself for ``augment="none"``, an :class:`AugmentedDataset` for
    ``"subsample"``."""
    if augment == "none":
        return dataset
    if augment == "subsample":
        return AugmentedDataset(dataset, fraction, seed)
    raise ConfigError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
