"""Radius and k-nearest-neighbour search with :class:`scipy.spatial.cKDTree`, returned as CSR.

All searches run in O(N log N) time and memory linear in the number of pairs found: there is
never a dense distance matrix, and no cap on the number of neighbours.

A :class:`Neighborhood` is the CSR of the bipartite relation "source point j lies within
``radius`` of query point i": row ``i`` holds ``indices[indptr[i]:indptr[i+1]]`` (sorted
ascending), with the matching ``distances`` and displacement vectors ``offsets = y_j - x_i``
(minimum-image displacements on a torus).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["Neighborhood", "radius_neighbors", "knn_distances", "box_size"]


@dataclass(frozen=True)
class Neighborhood:
    """CSR neighbour lists of ``n_query`` query points into ``n_source`` source points."""

    indptr: np.ndarray  # [n_query + 1] int64
    indices: np.ndarray  # [nnz] int64, source point indices
    distances: np.ndarray  # [nnz] float64
    offsets: np.ndarray  # [nnz, d] float64, y_j - x_i (minimum image when periodic)
    n_source: int

    @property
    def n_query(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def rows(self) -> np.ndarray:
        """Row (query) index of every stored pair, [nnz]."""
        return np.repeat(np.arange(self.n_query), np.diff(self.indptr))

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def _as_points(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (1, 2, 3):
        raise ValueError(f"{name} must have shape [N, d] with d in (1, 2, 3), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf coordinates")
    return x


def box_size(periodic, d: int):
    """The torus lengths [d] of ``periodic`` (a scalar or [d]; None for a non-periodic space)."""
    if periodic is None:
        return None
    box = np.broadcast_to(np.asarray(periodic, dtype=np.float64), (d,)).copy()
    if (box <= 0).any():
        raise ValueError(f"periodic box sizes must be positive, got {box}")
    return box


def radius_neighbors(query, source=None, radius: float = 1.0, *, periodic=None,
                     include_self: bool = True) -> Neighborhood:
    """All pairs (i, j) with ``|source[j] - query[i]| <= radius``, as CSR.

    Args:
        query: [M, d] query points x_i.
        source: [N, d] source points y_j (default: ``query``).
        radius: search radius in the points' units (> 0).
        periodic: box size (scalar or per axis) for a torus [0, L)^d; coordinates are wrapped
            into the box and distances use the minimum image.
        include_self: keep the pair (i, i) when ``source is query``.

    Returns:
        :class:`Neighborhood` with rows sorted by source index.
    """
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius}")
    same = source is None
    x = _as_points(query, "query")
    y = x if same else _as_points(source, "source")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"query has dimension {x.shape[1]} but source has {y.shape[1]}")
    d = x.shape[1]
    box = box_size(periodic, d)
    if box is not None:
        if np.any(radius >= box / 2):
            raise ValueError(f"radius {radius} must be below half the periodic box {box}")
        x = np.mod(x, box)
        y = x if same else np.mod(y, box)
    if same:
        # query_pairs finds each unordered pair once (i < j), the fastest search in cKDTree
        pairs = cKDTree(x, boxsize=box).query_pairs(radius, output_type="ndarray")
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int64)
        cols = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int64)
        if include_self:
            ar = np.arange(len(x), dtype=np.int64)
            rows, cols = np.concatenate([rows, ar]), np.concatenate([cols, ar])
    else:
        tree_x, tree_y = cKDTree(x, boxsize=box), cKDTree(y, boxsize=box)
        # every pair within the radius (zero distances included), in linear memory
        res = tree_x.sparse_distance_matrix(tree_y, radius, output_type="ndarray")
        rows, cols = res["i"].astype(np.int64), res["j"].astype(np.int64)
    # sort pairs by (row, col) through one packed int64 key: a single np.sort is about 2.5x
    # faster than np.lexsort on two arrays (offsets are recomputed below, so no permutation)
    key = rows * np.int64(len(y)) + cols
    key.sort()
    rows, cols = np.divmod(key, np.int64(len(y)))
    indptr = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(x)), out=indptr[1:])
    off = y[cols] - x[rows]
    if box is not None:
        off = off - box * np.round(off / box)
    dist = np.linalg.norm(off, axis=1)
    return Neighborhood(indptr, cols, dist, off, n_source=len(y))


def knn_distances(points, k: int, *, periodic=None) -> np.ndarray:
    """Distances from each point to its ``k`` nearest other points, [N, k] (ascending)."""
    x = _as_points(points, "points")
    if k < 1 or k >= len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}] for {len(x)} points, got {k}")
    box = box_size(periodic, x.shape[1])
    if box is not None:
        x = np.mod(x, box)
    dist, _ = cKDTree(x, boxsize=box).query(x, k=k + 1)
    return dist[:, 1:]
