"""The core data model: :class:`Mesh`, a point set with optional cells, fields and quadrature.

A ``Mesh`` is what every reader returns and every operator consumes. It holds

* ``points`` [N, d] (d = 2 or 3; a 3D mesh whose z coordinates are all zero is reduced to 2D),
* ``cells``: a dict from meshio cell type name to an integer array [M, k],
* ``point_data`` / ``cell_data`` / ``field_data`` as in meshio,
* quadrature ``weights`` [N] (lumped mass from the cells of the highest dimension, or a
  k-nearest-neighbour density estimate for a bare point cloud),
* a ``boundary`` point mask (points on facets used by one cell) and named ``boundary_sets``
  (from gmsh physical groups or lower-dimensional cell blocks).

All geometry is in the mesh's own physical units. :meth:`Mesh.normalized` gives the one affine
map to the unit box and records it, so outputs can be mapped back.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from graphop.errors import MeshError, MeshWarning
from graphop.geometry.cells import (boundary_facets, cell_dim, cell_measures, lumped_mass,
                                    unique_edges)
from graphop.geometry.neighbors import knn_distances

__all__ = ["Mesh", "AffineMap", "DERIVED_FIELDS"]

#: point fields graphop computes from the geometry when a file does not hold them, so that they
#: can be model inputs on any mesh (training files, test files, a user's own mesh at predict
#: time): ``boundary_distance``, the distance to the nearest boundary point.
DERIVED_FIELDS = ("boundary_distance",)


def _unit_ball_volume(d: int) -> float:
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1)


@dataclass(frozen=True)
class AffineMap:
    """x_normalised = (x - shift) / scale, with one isotropic ``scale`` (aspect ratio kept)."""

    shift: tuple
    scale: float

    def apply(self, x):
        return (np.asarray(x) - np.asarray(self.shift)) / self.scale

    def inverse(self, x):
        return np.asarray(x) * self.scale + np.asarray(self.shift)

    def to_dict(self) -> dict:
        return {"shift": [float(s) for s in self.shift], "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "AffineMap":
        return cls(tuple(float(s) for s in d["shift"]), float(d["scale"]))


@dataclass(eq=False)
class Mesh:
    """A mesh or point cloud with quadrature weights. See the module docstring.

    Args:
        points: [N, d] coordinates, d in (2, 3) (or [N, 3] with z == 0, reduced to d = 2).
        cells: dict cell type -> [M, k] connectivity (meshio names).
        point_data: dict name -> array with first dimension N.
        cell_data: dict name -> list of arrays, one per cell block (meshio layout).
        field_data: dict name -> array (gmsh physical names and tags).
        weights: [N] quadrature weights; computed from the cells (lumped mass) when omitted.
        boundary_sets: dict name -> point index array.
        source: where the mesh came from (file path or description), for messages.
        validate: check coordinates, connectivity and field lengths (raises :class:`MeshError`).
    """

    points: np.ndarray
    cells: dict = field(default_factory=dict)
    point_data: dict = field(default_factory=dict)
    cell_data: dict = field(default_factory=dict)
    field_data: dict = field(default_factory=dict)
    weights: np.ndarray | None = None
    boundary_sets: dict = field(default_factory=dict)
    source: str = "<memory>"
    validate: bool = True

    def __post_init__(self):
        pts = _writable(np.asarray(self.points, dtype=np.float64))
        if pts.ndim != 2 or pts.shape[1] not in (2, 3):
            raise MeshError(f"points must have shape [N, 2] or [N, 3], got {pts.shape}")
        if pts.shape[1] == 3 and len(pts) and np.all(pts[:, 2] == 0.0):
            pts = pts[:, :2]
        self.points = np.ascontiguousarray(pts)
        self.cells = {str(k): _writable(np.ascontiguousarray(np.asarray(v, dtype=np.int64)))
                      for k, v in self.cells.items() if len(v)}
        # readers may hand over read-only views of the file's buffer (meshio's PLY reader):
        # own writable copies, so torch.as_tensor never warns about non-writable arrays
        self.point_data = {str(k): _writable(np.asarray(v)) for k, v in self.point_data.items()}
        if self.validate:
            self.check()
        if self.weights is None:
            self.weights = lumped_mass(self.points, self.cells) if self.top_dim > 0 else None
            if self.weights is None:
                raise MeshError("a mesh without cells needs weights: use Mesh.from_points")
        self.weights = _writable(np.asarray(self.weights, dtype=np.float64))
        if self.weights.shape != (len(self.points),):
            raise MeshError(f"weights must have shape [{len(self.points)}], got {self.weights.shape}")
        self._cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_points(cls, points, weights=None, measure: float | None = None, k: int = 8,
                    point_data=None, source: str = "<points>") -> "Mesh":
        """A bare point cloud. Without ``weights``, estimate them from the k-NN density.

        The estimate is w_j = V_d r_k(j)^d / k, where r_k is the distance to the k-th nearest
        other point: for N uniform points in a domain of measure |D|, V_d r_k^d is Gamma(k)
        distributed with mean k |D| / N, so E[w_j] = |D| / N (unbiased; dividing by k - 1
        instead, the inverse of the unbiased density estimate, overestimates by k / (k - 1)).
        When the domain ``measure`` (area or volume) is known the weights are rescaled so that
        they sum to it exactly.
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 2 and pts.shape[1] == 3 and len(pts) and np.all(pts[:, 2] == 0):
            pts = pts[:, :2]
        _check_points(pts, source)
        if weights is None:
            kk = min(k, len(pts) - 1)
            if kk < 1:
                raise MeshError(f"{source}: need at least 2 points to estimate weights")
            rk = knn_distances(pts, kk)[:, -1]
            d = pts.shape[1]
            weights = _unit_ball_volume(d) * rk**d / kk
        weights = np.asarray(weights, dtype=np.float64)
        if measure is not None:
            if not measure > 0:
                raise MeshError(f"measure must be positive, got {measure}")
            weights = weights * (measure / weights.sum())
        return cls(pts, {}, point_data or {}, weights=weights, source=source)

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise :class:`MeshError` for NaN/inf points, bad indices, a mesh whose cells all
        have zero measure (so every quadrature weight is 0) or point_data of the wrong length.

        A few zero-measure cells in an otherwise good mesh (slivers of CAD and STL exports) are
        accepted with one :class:`graphop.errors.MeshWarning` line per cell type (count and
        first index): they add exactly 0 to every lumped-mass weight, so the quadrature is that
        of the other cells. Points are never dropped."""
        where = self.source
        _check_points(self.points, where)
        n = len(self.points)
        for ctype, conn in self.cells.items():
            cell_dim(ctype)
            if conn.ndim != 2:
                raise MeshError(f"{where}: {ctype} cells must be a 2D array, got shape {conn.shape}")
            if conn.min() < 0 or conn.max() >= n:
                raise MeshError(
                    f"{where}: {ctype} cells index point {int(conn.max() if conn.max() >= n else conn.min())}"
                    f" but the mesh has {n} points")
        degenerate = self._zero_measure_cells()
        if degenerate:
            n_top = sum(len(c) for t, c in self.cells.items() if cell_dim(t) == self.top_dim)
            if sum(len(b) for b in degenerate.values()) == n_top:
                raise MeshError(f"{where}: all {n_top} cell(s) have zero "
                                f"{_MEASURE_WORD[self.top_dim]}, so every quadrature weight is 0")
            for ctype, bad in degenerate.items():
                warnings.warn(f"{where}: {_zero_cells_text(ctype, bad, self.top_dim)}",
                              MeshWarning, stacklevel=3)
        for name, val in self.point_data.items():
            if len(val) != n:
                raise MeshError(f"{where}: point_data {name!r} has length {len(val)}, "
                                f"expected {n} (one value per point)")

    def _zero_measure_cells(self) -> dict:
        """{cell type: indices} of top-dimensional cells whose measure is 0 (to round-off:
        at most 1e-14 diameter^top_dim)."""
        top = self.top_dim
        out = {}
        if top == 0:
            return out
        tol = 1e-14 * max(self.bbox_diameter, 1e-300) ** top
        for ctype, conn in self.cells.items():
            if cell_dim(ctype) == top:
                bad = np.flatnonzero(cell_measures(self.points, ctype, conn) <= tol)
                if len(bad):
                    out[ctype] = bad
        return out

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.points.shape[1]

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def top_dim(self) -> int:
        """Topological dimension of the highest cells (0 for a point cloud)."""
        return max((cell_dim(t) for t in self.cells), default=0)

    @property
    def is_surface(self) -> bool:
        return self.dim == 3 and self.top_dim == 2

    @property
    def measure(self) -> float:
        """Total length/area/volume of the cells of the top dimension (sum of weights for
        a point cloud)."""
        top = self.top_dim
        if top == 0:
            return float(self.weights.sum())
        return float(sum(cell_measures(self.points, t, c).sum()
                         for t, c in self.cells.items() if cell_dim(t) == top))

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points.min(axis=0), self.points.max(axis=0)

    @property
    def bbox_diameter(self) -> float:
        lo, hi = self.bbox
        return float(np.linalg.norm(hi - lo))

    @property
    def boundary(self) -> np.ndarray:
        """[N] bool mask of points on the boundary (facets used by one top-dimensional cell,
        plus points of named boundary sets). All False for point clouds."""
        if "boundary" not in self._cache:
            mask = np.zeros(self.n_points, dtype=bool)
            if self.top_dim > 0:
                for f in boundary_facets(self.cells):
                    mask[f.ravel()] = True
            for idx in self.boundary_sets.values():
                mask[np.asarray(idx, dtype=np.int64)] = True
            self._cache["boundary"] = mask
        return self._cache["boundary"]

    def edges(self) -> np.ndarray:
        """Unique undirected mesh edges [E, 2]."""
        if "edges" not in self._cache:
            self._cache["edges"] = unique_edges(self.cells)
        return self._cache["edges"]

    def spacing(self) -> dict:
        """Edge length statistics (min/median/max/mean). For point clouds, nearest-neighbour
        distances stand in for edges."""
        e = self.edges()
        if len(e):
            lengths = np.linalg.norm(self.points[e[:, 1]] - self.points[e[:, 0]], axis=1)
        elif self.n_points > 1:
            lengths = knn_distances(self.points, 1)[:, 0]
        else:
            lengths = np.zeros(1)
        return {"min": float(lengths.min()), "median": float(np.median(lengths)),
                "max": float(lengths.max()), "mean": float(lengths.mean())}

    @property
    def hash(self) -> str:
        """Content hash (sha256 hex, 16 chars) of points, cells and weights; stable across runs,
        processes and machines (canonical little-endian bytes)."""
        if "hash" not in self._cache:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.points, dtype="<f8").tobytes())
            h.update(str(self.points.shape).encode())
            for t in sorted(self.cells):
                h.update(t.encode())
                h.update(np.ascontiguousarray(self.cells[t], dtype="<i8").tobytes())
            h.update(np.ascontiguousarray(self.weights, dtype="<f8").tobytes())
            self._cache["hash"] = h.hexdigest()[:16]
        return self._cache["hash"]

    def warnings(self) -> list[str]:
        """Human-readable problems that do not stop the mesh from being used."""
        out = []
        from scipy.spatial import cKDTree

        tol = 1e-12 * max(self.bbox_diameter, 1e-300)
        dup = cKDTree(self.points).query_pairs(tol, output_type="ndarray")
        if len(dup):
            out.append(f"{len(dup)} pair(s) of duplicate points")
        for ctype, bad in self._zero_measure_cells().items():
            out.append(_zero_cells_text(ctype, bad, self.top_dim))
        for name, val in self.point_data.items():
            v = np.asarray(val)
            if v.ndim == 0 or len(v) != self.n_points or not np.issubdtype(v.dtype, np.number):
                continue
            bad = ~np.isfinite(v.reshape(len(v), -1)).all(axis=1)
            if bad.any():
                out.append(f"field {name!r} has NaN or inf at {int(bad.sum())} point(s) "
                           f"(first: point {int(np.flatnonzero(bad)[0])})")
        if self.top_dim > 0:
            used = np.zeros(self.n_points, dtype=bool)
            for c in self.cells.values():
                used[c.ravel()] = True
            if (~used).sum():
                out.append(f"{int((~used).sum())} point(s) used by no cell (weight 0)")
            if self.dim == self.top_dim:
                for t, c in self.cells.items():
                    if cell_dim(t) == self.top_dim and t in ("triangle", "quad", "tetra"):
                        s = cell_measures(self.points, t, c, signed=True)
                        neg, pos = int((s < 0).sum()), int((s > 0).sum())
                        if neg and pos:
                            out.append(f"{min(neg, pos)} inverted {t} cell(s) "
                                       "(orientation differs from the majority)")
        return out

    # ------------------------------------------------------------------ transforms
    def normalized(self, affine: AffineMap | None = None) -> tuple["Mesh", AffineMap]:
        """This mesh mapped into the unit box by one isotropic affine map (returned), or by
        the given ``affine`` (fitted once on a training set). Weights scale by scale^-d."""
        if affine is None:
            lo, hi = self.bbox
            affine = AffineMap(tuple(float(v) for v in lo), float((hi - lo).max()) or 1.0)
        m = Mesh(affine.apply(self.points), self.cells, dict(self.point_data), dict(self.cell_data),
                 dict(self.field_data), weights=self.weights / affine.scale**self.top_or_dim,
                 boundary_sets=dict(self.boundary_sets), source=self.source, validate=False)
        return m, affine

    @property
    def top_or_dim(self) -> int:
        return self.top_dim or self.dim

    def boundary_distance(self) -> np.ndarray:
        """[N] distance from every point to the nearest boundary point (0 on the boundary), in
        the mesh's units: a geometry input that tells a model where the walls are (GINO feeds a
        signed distance for the same reason). It converges to the distance to the boundary
        with the boundary spacing.

        Raises:
            MeshError: the mesh has no boundary points (a bare point cloud, a closed surface).
        """
        from scipy.spatial import cKDTree

        b = self.boundary
        if not b.any():
            raise MeshError(f"{self.source}: no boundary points (a point cloud or a closed "
                            "surface), so 'boundary_distance' is undefined")
        return cKDTree(self.points[b]).query(self.points)[0]

    def with_derived_fields(self, names) -> "Mesh":
        """This mesh with every name of :data:`DERIVED_FIELDS` in ``names`` that is not already
        a point field computed and added (the mesh itself when there is none to add)."""
        new = {n: getattr(self, n)() for n in names
               if n in DERIVED_FIELDS and n not in self.point_data}
        return self.with_point_data(**new) if new else self

    def with_point_data(self, **fields) -> "Mesh":
        """A copy sharing geometry with extra/replaced point_data fields."""
        pd = dict(self.point_data)
        pd.update({k: np.asarray(v) for k, v in fields.items()})
        return Mesh(self.points, self.cells, pd, dict(self.cell_data), dict(self.field_data),
                    weights=self.weights, boundary_sets=dict(self.boundary_sets),
                    source=self.source)

    # ------------------------------------------------------------------ torch
    def to_data(self, fields=None, dtype=None):
        """A torch_geometric ``Data(pos, weight, boundary, face|cells, <fields>)``.

        ``face`` is [3, M] for triangle meshes (PyG convention); other cell types are stored as
        ``cells_<type>`` [M, k]. Every point_data field (or those named in ``fields``) becomes an
        attribute of shape [N, k] (scalars get k = 1). ``mesh_hash`` holds :attr:`hash`.
        """
        import torch
        from torch_geometric.data import Data

        dtype = dtype or torch.get_default_dtype()
        data = Data(pos=torch.as_tensor(self.points, dtype=dtype),
                    weight=torch.as_tensor(self.weights, dtype=dtype),
                    boundary=torch.as_tensor(self.boundary))
        for t, c in self.cells.items():
            ct = torch.as_tensor(c, dtype=torch.long)
            if t == "triangle":
                data.face = ct.t().contiguous()
            else:
                data[f"cells_{t}"] = ct
        names = self.point_data if fields is None else fields
        for name in names:
            if name not in self.point_data:
                raise MeshError(f"{self.source}: no point_data field {name!r}; "
                                f"available: {sorted(self.point_data)}")
            v = np.asarray(self.point_data[name], dtype=np.float64)
            v = v.reshape(len(v), -1)
            data[name] = torch.as_tensor(v, dtype=dtype)
        data.mesh_hash = self.hash
        return data

    def __repr__(self) -> str:
        cells = ", ".join(f"{t}: {len(c)}" for t, c in self.cells.items()) or "point cloud"
        return (f"Mesh(n_points={self.n_points}, dim={self.dim}, cells={{{cells}}}, "
                f"fields={sorted(self.point_data)}, measure={self.measure:.6g})")


_MEASURE_WORD = {1: "length", 2: "area", 3: "volume"}


def _zero_cells_text(ctype: str, bad: np.ndarray, top: int) -> str:
    return (f"{len(bad)} {ctype} cell(s) have zero {_MEASURE_WORD[top]} and carry no quadrature "
            f"weight (first: cell {int(bad[0])})")


def _writable(a: np.ndarray) -> np.ndarray:
    """``a`` itself, or a copy when it is a read-only view (e.g. of a file buffer)."""
    return a if a.flags.writeable else a.copy()


def _check_points(pts: np.ndarray, where: str) -> None:
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise MeshError(f"{where}: points must have shape [N, 2] or [N, 3], got {pts.shape}")
    if len(pts) == 0:
        raise MeshError(f"{where}: the mesh has no points")
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise MeshError(f"{where}: {int(bad.sum())} point(s) have NaN or inf coordinates "
                        f"(first: point {int(np.flatnonzero(bad)[0])})")
