"""Bare point clouds: NumPy ``.npz`` and ``.csv`` (PLY without faces: :mod:`.surface`).

A point cloud has no cells, so its quadrature weights are either stored in the file or
estimated from the k-nearest-neighbour density (:meth:`graphop.Mesh.from_points`,
w_j = V_d r_k(j)^d / (k - 1), rescaled to sum to ``measure`` when it is given).

* ``.npz``: array ``points`` [N, d] (required), ``weights`` [N] (optional), ``measure``
  (optional scalar), and every other array of first dimension N as a field. Arrays of another
  length are an error (never dropped).
* ``.csv``: one header line; coordinate columns ``x, y`` and optionally ``z``; an optional
  ``weight`` column; every other column is a field. Vector fields are stored as columns
  ``u[0], u[1], ...`` and grouped back into one [N, k] field on reading.

Writing a mesh with cells to these formats stores its points, lumped-mass weights and fields
(the cells are not part of the format).
"""
from __future__ import annotations

import csv

import numpy as np

from graphop.errors import MeshReadError
from graphop.errors import MeshError
from graphop.geometry.mesh import Mesh
from graphop.io import Format
from graphop.io._common import group_components, split_components

__all__ = ["read_npz", "write_npz", "read_csv", "write_csv", "FORMATS"]

_COORDS = ("x", "y", "z")


def read_npz(path: str, measure: float | None = None, k: int = 8) -> Mesh:
    """Read a point cloud from ``.npz`` (see the module docstring for the layout)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    if "points" not in arrays:
        raise MeshReadError(f"{path}: no 'points' array in the .npz file; "
                            f"found {sorted(arrays) or 'no arrays'}")
    points = np.asarray(arrays.pop("points"), dtype=np.float64)
    weights = arrays.pop("weights", None)
    stored_measure = arrays.pop("measure", None)
    if measure is None and stored_measure is not None:
        measure = float(np.asarray(stored_measure).ravel()[0])
    if points.ndim != 2:
        raise MeshError(f"{path}: 'points' must have shape [N, d], got {points.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(points),):
            raise MeshError(f"{path}: 'weights' has shape {weights.shape}, expected "
                            f"[{len(points)}] (one weight per point)")
    return Mesh.from_points(points, weights=weights, measure=measure, k=k,
                            point_data=arrays, source=path)


def write_npz(path: str, mesh: Mesh, compressed: bool = True) -> None:
    """Write points, weights and every point_data field to ``.npz``."""
    reserved = {"points", "weights", "measure"} & set(mesh.point_data)
    if reserved:
        raise MeshError(f"{path}: point_data names {sorted(reserved)} are reserved in .npz")
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as fh:
        save(fh, points=mesh.points, weights=mesh.weights, **mesh.point_data)


def read_csv(path: str, measure: float | None = None, k: int = 8) -> Mesh:
    """Read a point cloud from ``.csv`` with a header line (see the module docstring)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise MeshReadError(f"{path}: the CSV file is empty") from None
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    coords = [c for c in _COORDS if c in header]
    if coords not in (["x", "y"], ["x", "y", "z"]):
        raise MeshReadError(f"{path}: CSV needs coordinate columns x,y or x,y,z in its header; "
                            f"found columns {header}")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise MeshReadError(f"{path}: line {bad[0]} has a different number of columns than the "
                            f"header ({len(header)}); the file may be truncated")
    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as exc:
        raise MeshReadError(f"{path}: non-numeric value in the CSV data ({exc})") from None
    col = {name: table[:, i] for i, name in enumerate(header)}
    points = np.column_stack([col.pop(c) for c in coords]) if len(rows) else np.zeros((0, 2))
    weights = col.pop("weight", None)
    return Mesh.from_points(points, weights=weights, measure=measure, k=k,
                            point_data=group_components(col), source=path)


def write_csv(path: str, mesh: Mesh) -> None:
    """Write points (x, y[, z]), the ``weight`` column and fields (``u[k]`` for vectors)."""
    cols = {c: mesh.points[:, i] for i, c in enumerate(_COORDS[: mesh.dim])}
    cols["weight"] = mesh.weights
    for name, value in mesh.point_data.items():
        clash = set(split_components(name, value)) & set(cols)
        if clash:
            raise MeshError(f"{path}: point_data name {sorted(clash)} clashes with a CSV column")
        cols.update(split_components(name, value))
    table = np.column_stack([np.asarray(v, dtype=np.float64) for v in cols.values()])
    with open(path, "wb") as fh:
        np.savetxt(fh, table, fmt="%.17g", delimiter=",", header=",".join(cols), comments="")


FORMATS = [
    Format("npz", (".npz",), read_npz, write_npz, True, "pointcloud",
           "NumPy archive: points, optional weights/measure, fields"),
    Format("csv", (".csv",), read_csv, write_csv, True, "pointcloud",
           "CSV with header: x,y[,z], optional weight, field columns"),
]
