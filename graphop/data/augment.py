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

or by its **uniform refinement** (``refine``), with probability ``probability`` per sample and
epoch: every cell is split into 2^d children at its edge midpoints (triangles into 4, quads into
4 about the midpoint of their 0-2 diagonal, tetrahedra into 8) and every per-point field is
extended to the new points by the piecewise-linear interpolant the coarse mesh defines,

    v(m_ab) = (v_a + v_b) / 2,   v(c_quad) = (v_0 + v_2) / 2,

which is exactly that interpolant (each child lies in one simplex of the coarse split, see
:func:`graphop.geometry.cells.simplices`). The model therefore sees *the same input function*
on a mesh with 4 (8 in 3D) times the points, and is asked for the same output function: by
default the loss is the refined mesh's quadrature of the error against the piecewise-linear
target (``loss_weight`` = the refined weights), the function the coarse mesh's own quadrature
weights already measure the error against; with ``target_weight = 0`` it counts the original
nodes only, with their original weights, and the interpolated targets are never used (on the
17 x 17 Darcy grids, 3 seeds of that left +17% at 33 x 33, while the default's one seed scored
0.024 there against 0.028 at 17 x 17: the new points are where a model trained on one grid has
never been told anything). What this removes is the part of a mesh model's output that
depends on the mesh for a fixed input function: pointwise nonlinearities applied to nodal
values do not commute with interpolation, so a model trained on one coarse mesh learns a
function of that mesh's nodal values (on the 17 x 17 FNO Darcy grid, fed the same
piecewise-linear coefficient on the 33 x 33 grid, the default model's error rose from 0.039 to
0.047). Cells are needed: a sample without any (a point cloud, a torus) is left as it is.

Jittering the positions is not offered: the field values given at the points are the solution
at *those* points, and moving a point without re-solving the PDE would pair a position with the
value of another position, i.e. falsify the data. Subsampling never does.

The draw of sample i in epoch e uses ``numpy.random.default_rng([seed, e, i])``, so a run is
reproducible, a resumed run sees the same meshes, and every process of a distributed run draws
the same subsample of a given sample.

Shapes:
    subsample: Data(pos [N, d], weight [N], x [N, c], y [N, o], boundary [N], ...) -> the same
    keys with M <= N points (cells removed).
    refine: the same keys with M > N points (the N original points first, then the new ones),
    refined cells, and ``loss_weight`` [M] (the refined weights; with ``target_weight = 0`` the
    original weights and 0 at the new points).
"""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch
from scipy.spatial import cKDTree

from graphop.errors import ConfigError, DataError
from graphop.geometry.cells import boundary_facets, cell_dim, cell_edges, lumped_mass

__all__ = ["AUGMENTATIONS", "subsample", "refine", "refinable", "AugmentedDataset",
           "augmented", "resolve_augment", "count_meshes"]

AUGMENTATIONS = ("auto", "none", "subsample", "refine")
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


# children of each refinable cell type, as local indices into the parent's vertices followed by
# its edge midpoints in the order of graphop.geometry.cells.cell_edges (then the quad's centre)
_CHILDREN = {
    "vertex": [[0]],
    "line": [[0, 2], [2, 1]],
    # m01 = 3, m12 = 4, m20 = 5
    "triangle": [[0, 3, 5], [3, 1, 4], [5, 4, 2], [3, 4, 5]],
    # m01 = 4, m12 = 5, m23 = 6, m30 = 7, centre (on the 0-2 diagonal) = 8
    "quad": [[0, 4, 8, 7], [4, 1, 5, 8], [8, 5, 2, 6], [7, 8, 6, 3]],
    # m01 = 4, m12 = 5, m20 = 6, m03 = 7, m13 = 8, m23 = 9; the inner octahedron split about
    # its m02-m13 diagonal
    "tetra": [[0, 4, 6, 7], [4, 1, 5, 8], [6, 5, 2, 9], [7, 8, 9, 3],
              [6, 8, 4, 5], [6, 8, 5, 9], [6, 8, 9, 7], [6, 8, 7, 4]],
}


def _sample_cells(data) -> dict:
    """``{type: [M, k] int64}`` of one sample (``face`` [3, M] is ``triangle``)."""
    out = {}
    for key in list(data.keys()):
        if key == "face":
            out["triangle"] = data.face.t().detach().cpu().long().numpy()
        elif key.startswith("cells_"):
            out[key[len("cells_"):]] = data[key].detach().cpu().long().numpy()
    return {t: c for t, c in out.items() if len(c)}


def _refinable_cells(data):
    """The cells of ``data`` (:func:`_sample_cells`) when :func:`refine` can refine it, else
    None."""
    if getattr(data, "periodic", None) is not None:
        return None
    cells = _sample_cells(data)
    if not cells or max(cell_dim(t) for t in cells) < 2:
        return None
    if max(cell_dim(t) for t in cells) < int(data.pos.shape[1]):
        return None                      # a surface: chord midpoints leave a curved manifold
    if "quad" in cells and max(cell_dim(t) for t in cells) == 3:
        return None                      # quad facets of a volume mesh (hexahedra, wedges)
    return cells if all(t in _CHILDREN for t in cells) else None


def refinable(data) -> bool:
    """Whether :func:`refine` can refine ``data``: cells of dimension >= 2 that fill the
    points' space (not a surface in 3D, where edge midpoints would leave a curved surface), all
    of a type it splits (triangles, quads, tetrahedra, with lines and vertices as boundary
    markers), and no periodic box (cells of a torus cross its seam)."""
    return _refinable_cells(data) is not None


def refine(data, cells: dict | None = None, target_weight: float = 1.0):
    """The uniform refinement of ``data`` carrying the same piecewise-linear fields (see the
    module docstring): a new ``Data`` with the original points first, the new points after
    them, every float per-point tensor interpolated, ``boundary`` true at midpoints of boundary
    edges, lumped-mass ``weight`` of the refined cells, ``loss_weight`` and ``mesh_hash``
    suffixed. ``cells``: the sample's cells when the caller has already read them
    (:func:`_refinable_cells`).

    ``loss_weight`` is ``(1 - t) w_orig + t w_refined`` with ``t = target_weight`` in [0, 1],
    ``w_orig`` the original weights at the original points (0 at the new ones) and
    ``w_refined`` the refined mesh's own weights: ``t = 1`` (default) measures the error
    against the piecewise-linear target function with the refined mesh's quadrature (the
    interpolated targets at the new points count), ``t = 0`` counts the original nodes only.

    Raises:
        DataError: ``data`` is not :func:`refinable` or has no ``weight``.
    """
    if not 0.0 <= float(target_weight) <= 1.0:
        raise ConfigError(f"augment_target_weight must be in [0, 1], got {target_weight!r}")
    if cells is None:
        cells = _refinable_cells(data)
    if cells is None:
        raise DataError("refine needs a sample with triangle, quad or tetrahedral cells that "
                        "fill its space (not a surface mesh) and no periodic box")
    weight = getattr(data, "weight", None)
    n = int(data.pos.shape[0])
    if weight is None or weight.shape[0] != n:
        raise DataError("refine needs quadrature weights 'weight' [N] on the sample")
    top = max(cell_dim(t) for t in cells)
    # every edge of every cell gets one midpoint, shared by the cells around it
    edges = np.sort(np.concatenate([cell_edges(t, c) for t, c in cells.items()]), axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    quads = cells.get("quad") if top == 2 else None
    n_quad = 0 if quads is None else len(quads)
    m = n + len(uniq) + n_quad
    # parent rows: new point k = average of the points parents[k] (2 of them)
    parents = np.concatenate([uniq, quads[:, [0, 2]] if n_quad else np.zeros((0, 2), np.int64)])

    new_cells, start = {}, 0
    for t, c in cells.items():
        k = len(cell_edges(t, c[:1]))
        mids = n + inverse[start:start + k * len(c)].reshape(k, len(c)).T
        start += k * len(c)
        local = np.concatenate([c, mids], axis=1)
        if t == "quad" and top == 2:
            local = np.concatenate([local, (n + len(uniq) + np.arange(len(c)))[:, None]], axis=1)
        new_cells[t] = np.concatenate([local[:, child] for child in _CHILDREN[t]])

    # boundary: a midpoint of an edge of a boundary facet (2D: the facet is the edge)
    on_boundary = np.zeros(m, dtype=bool)
    bound = getattr(data, "boundary", None)
    if bound is not None and bound.shape[0] == n:
        on_boundary[:n] = bound.detach().cpu().numpy().astype(bool).reshape(n)
        # the facets of triangles and quads are edges, those of tetrahedra triangles
        fe = [cell_edges("triangle", f) if f.shape[1] == 3 else f
              for f in boundary_facets({t: c for t, c in cells.items() if cell_dim(t) == top})
              if len(f)]
        if fe:
            fe = np.unique(np.sort(np.concatenate(fe), axis=1), axis=0)
            # edges of uniq that are boundary edges
            key = lambda e: e[:, 0] * np.int64(n) + e[:, 1]
            on_boundary[n:n + len(uniq)] = np.isin(key(uniq), key(fe))

    pos = data.pos
    idx = torch.as_tensor(parents, dtype=torch.long, device=pos.device)
    out = copy.copy(data)
    for key in list(data.keys()):
        if _is_cell_key(key):
            del out[key]
    for key in list(out.keys()):
        v = out[key]
        if key in ("weight", "weight_true", "boundary", "periodic") or not torch.is_tensor(v) \
                or v.dim() == 0 or v.shape[0] != n:
            continue
        if not torch.is_floating_point(v):
            raise DataError(f"refine cannot interpolate the per-point tensor {key!r} of dtype "
                            f"{v.dtype}")
        out[key] = torch.cat([v, 0.5 * (v[idx[:, 0]] + v[idx[:, 1]])])
    p_new = out.pos.detach().cpu().double().numpy()
    w_new = lumped_mass(p_new, {t: c for t, c in new_cells.items() if cell_dim(t) == top})
    wt = weight.dtype
    out.weight = torch.as_tensor(w_new, dtype=wt, device=weight.device)
    if getattr(data, "weight_true", None) is not None:
        out.weight_true = out.weight.clone()
    lw = torch.zeros(m, dtype=wt, device=weight.device)
    given = getattr(data, "loss_weight", None)
    lw[:n] = weight if given is None else given
    t = float(target_weight)
    out.loss_weight = lw if t == 0.0 else (1.0 - t) * lw + t * out.weight
    if bound is not None and bound.shape[0] == n:
        out.boundary = torch.as_tensor(on_boundary, device=bound.device)
    for t, c in new_cells.items():
        ct = torch.as_tensor(c, dtype=torch.long, device=pos.device)
        if t == "triangle":
            out.face = ct.t().contiguous()
        else:
            out[f"cells_{t}"] = ct
    h = getattr(data, "mesh_hash", None)
    if isinstance(h, str):
        out.mesh_hash = f"{h}:refine"
    return out


class AugmentedDataset(torch.utils.data.Dataset):
    """``base`` with every sample re-discretised afresh each epoch (training sets only).

    Args:
        base: the (normalised) training dataset.
        fraction: ``subsample``: share of interior points kept (default 0.75).
        seed: base seed; sample i of epoch e draws from ``default_rng([seed, e, i])``.
        mode: ``"subsample"`` or ``"refine"``.
        probability: ``refine``: chance that a sample is refined in an epoch (default 0.5);
            the others are given as they are (with ``loss_weight``, so that batches collate).
        target_weight: ``refine``: weight of the interpolated targets at the new points (see
            :func:`refine`; default 1: the refined mesh's quadrature of the whole error).

    Call :meth:`set_epoch` before each epoch (the trainer does).
    """

    def __init__(self, base, fraction: float = 0.75, seed: int = 0, mode: str = "subsample",
                 probability: float = 0.5, target_weight: float = 1.0):
        if not 0 < fraction <= 1:
            raise ConfigError(f"augment_fraction must be in (0, 1], got {fraction}")
        if not 0 <= probability <= 1:
            raise ConfigError(f"augment_probability must be in [0, 1], got {probability}")
        if mode not in ("subsample", "refine"):
            raise ConfigError(f"augmentation mode must be subsample or refine, got {mode!r}")
        self.base, self.fraction, self.seed, self.epoch = base, float(fraction), int(seed), 0
        if not 0 <= target_weight <= 1:
            raise ConfigError(f"augment_target_weight must be in [0, 1], got {target_weight}")
        self.mode, self.probability = mode, float(probability)
        self.target_weight = float(target_weight)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        data = self.base[i]
        if self.mode == "subsample":
            return subsample(data, rng, self.fraction)
        if rng.random() < self.probability:
            cells = _refinable_cells(data)
            if cells is not None:
                return refine(data, cells, self.target_weight)
        out = copy.copy(data)
        out.loss_weight = data.weight
        return out


def count_meshes(dataset, stop_at: int | None = None) -> int:
    """The number of distinct meshes (point sets and cells) among the samples of ``dataset``,
    by ``mesh_hash`` where a sample has one, else by a digest of its positions and cells;
    counting stops at ``stop_at``."""
    seen = set()
    for i in range(len(dataset)):
        d = dataset[i]
        key = getattr(d, "mesh_hash", None)
        if not isinstance(key, str):
            h = hashlib.blake2b(digest_size=16)
            h.update(d.pos.detach().cpu().contiguous().numpy().tobytes())
            for t, c in sorted(_sample_cells(d).items()):
                h.update(t.encode())
                h.update(np.ascontiguousarray(c).tobytes())
            key = h.hexdigest()
        seen.add(key)
        if stop_at is not None and len(seen) >= stop_at:
            break
    return len(seen)


#: the models ``augment: auto`` may refine for: the mesh operators, whose parameters define
#: one function on every mesh (the GNN baseline is not discretisation convergent and the grid
#: FNO reads one grid)
REFINE_MODELS = ("local_gno", "gino", "disco_only")


def resolve_augment(augment: str, dataset, model: str | None = None) -> tuple[str, str]:
    """``(mode, reason)``: ``augment`` itself unless it is ``"auto"``, which means ``"refine"``
    for a mesh operator (:data:`REFINE_MODELS`; ``model`` None counts as one) when every
    training sample shares one mesh with cells (a model that sees one
    discretisation only learns a function of that mesh's nodal values: on the 17 x 17 Darcy
    grids refinement cut the error at 33 x 33 from +47% to +17% of the training grid's, at no
    cost there) and ``"none"`` otherwise (samples on several meshes, where it was measured
    neutral at 2.8x the training time, or clouds and tori, which it cannot refine)."""
    if augment != "auto":
        return augment, "given"
    if model is not None and model not in REFINE_MODELS:
        return "none", f"model {model!r} is not a mesh operator"
    if len(dataset) == 0:
        return "none", "no training samples"
    n = count_meshes(dataset, stop_at=2)
    if n > 1:
        return "none", "the training samples lie on several meshes"
    if not refinable(dataset[0]):
        return "none", "the one training mesh has no cells to refine (a point cloud or a torus)"
    return "refine", f"all {len(dataset)} training samples share one mesh"


def augmented(dataset, augment: str = "none", fraction: float = 0.75, seed: int = 0,
              probability: float = 0.5, target_weight: float = 1.0):
    """``dataset`` itself for ``augment="none"``, an :class:`AugmentedDataset` for
    ``"subsample"`` and ``"refine"``; ``"auto"`` is first resolved by :func:`resolve_augment`."""
    if augment == "auto":
        augment = resolve_augment(augment, dataset)[0]
    if augment == "none":
        return dataset
    if augment in ("subsample", "refine"):
        return AugmentedDataset(dataset, fraction, seed, augment, probability, target_weight)
    raise ConfigError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
