"""Triangle surface meshes through trimesh: STL, OBJ, OFF and PLY.

Files are loaded with ``trimesh.load(..., process=False)``, which keeps the vertex order of the
file, so per-vertex data stays aligned with the points. An STL file stores the three corners of
every facet separately and no point data; its exactly coincident corners are merged here (in
order of first appearance) so that the result is a connected mesh with lumped-mass weights.

PLY is read with meshio (trimesh mistakes vertex properties named ``u``/``v`` for texture
coordinates). Writing: OBJ, OFF and PLY are written here with full double precision (PLY binary
little endian, every point_data field as ``double`` vertex properties, component k of a vector
field ``u`` as ``u[k]``); STL goes through trimesh (float32 by the format). PLY files without
faces are point clouds, with their quadrature weights in a ``weight`` property.
"""
from __future__ import annotations

import numpy as np

from graphop.errors import MeshReadError
from graphop.geometry.mesh import Mesh
from graphop.io import Format, MeshWriteError
from graphop.io._common import split_components

__all__ = ["read_surface", "read_ply", "write_ply", "write_obj", "write_off", "write_stl",
           "merge_coincident", "FORMATS"]


def merge_coincident(points: np.ndarray, faces: np.ndarray):
    """Merge exactly equal points, keeping the order of first appearance.

    Returns:
        ``(points [P, d], faces [M, k])`` with faces renumbered.
    """
    uniq, first, inv = np.unique(points, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inv.ravel()][faces]


def _load(path: str):
    import trimesh

    obj = trimesh.load(path, process=False)
    if isinstance(obj, trimesh.Scene):
        geoms = list(obj.geometry.values())
        if not geoms:
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
        if len(geoms) == 1:
            obj = geoms[0]
        else:
            obj = trimesh.util.concatenate(geoms)
    points = np.asarray(obj.vertices, dtype=np.float64)
    faces = np.asarray(getattr(obj, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    return points, faces


def read_surface(path: str, measure: float | None = None, k: int = 8) -> Mesh:
    """Read an STL/OBJ/OFF file with trimesh. A file without faces is a point cloud (k-NN
    weights scaled to ``measure``)."""
    points, faces = _load(path)
    if len(points) == 0:
        raise MeshReadError(f"{path}: no vertices found (an empty mesh, or not a valid "
                            f"{path.rsplit('.', 1)[-1].upper()} file)")
    if len(faces) == 0:
        return Mesh.from_points(points, measure=measure, k=k, source=path)
    if path.lower().endswith(".stl"):
        points, faces = merge_coincident(points, faces)
    return Mesh(points, {"triangle": faces}, source=path)


def read_ply(path: str, measure: float | None = None, k: int = 8) -> Mesh:
    """Read a PLY surface or point cloud (ASCII or binary) with every vertex property.

    PLY goes through meshio's reader rather than trimesh: trimesh takes vertex properties
    named ``u`` and ``v`` (common field names) for texture coordinates and fails on them.
    Without faces the file is a point cloud; a ``weight`` property gives its weights.
    """
    import meshio

    from graphop.io.volume import mesh_from_meshio

    return mesh_from_meshio(meshio.ply.read(path), path, measure=measure, k=k)


def _pad3(mesh: Mesh) -> np.ndarray:
    pts = np.zeros((mesh.n_points, 3))
    pts[:, : mesh.dim] = mesh.points
    return pts


def _triangles(path: str, mesh: Mesh, allow_none: bool = False) -> np.ndarray:
    """The triangle cells of a surface mesh; other top-dimensional cells cannot be stored."""
    other = [t for t in mesh.cells if t not in ("triangle", "line", "vertex")]
    if other:
        raise MeshWriteError(f"{path}: surface formats store triangles only; the mesh has "
                             f"{', '.join(other)} cells (write .vtu or .msh instead)")
    if "triangle" not in mesh.cells and not allow_none:
        raise MeshWriteError(f"{path}: the mesh has no triangle cells to write as a surface")
    return mesh.cells.get("triangle", np.zeros((0, 3), dtype=np.int64))


def write_ply(path: str, mesh: Mesh, weights: bool | None = None) -> None:
    """Binary little-endian PLY with double coordinates, faces (if any) and point_data.

    Args:
        weights: store the quadrature weights as a ``weight`` property (default: only for
            point clouds, whose weights cannot be recomputed from cells).
    """
    faces = _triangles(path, mesh, allow_none=True)
    pts = _pad3(mesh)
    n = len(pts)
    props = dict(mesh.point_data)
    if weights if weights is not None else not mesh.cells:
        props = {"weight": mesh.weights, **props}
    header = ["ply", "format binary_little_endian 1.0", "comment written by graphop",
              f"element vertex {n}", "property double x", "property double y",
              "property double z"]
    dtype = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    for name, value in list(props.items()):
        props.pop(name)
        props.update(split_components(name, value))
    for name in props:
        if any(c.isspace() for c in name):
            raise MeshWriteError(f"{path}: PLY property names cannot contain spaces: {name!r}")
        header.append(f"property double {name}")
        dtype.append((name, "<f8"))
    if len(faces):
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    rec = np.empty(n, dtype=dtype)
    rec["x"], rec["y"], rec["z"] = pts.T
    for name, value in props.items():
        rec[name] = value
    frec = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    frec["n"], frec["v"] = 3, faces
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode())
        rec.tofile(fh)
        frec.tofile(fh)


def write_obj(path: str, mesh: Mesh) -> None:
    """Wavefront OBJ: ``v x y z`` lines (%.17g) and 1-based ``f i j k`` lines."""
    faces = _triangles(path, mesh)
    with open(path, "wb") as fh:
        fh.write(b"# written by graphop\n")
        np.savetxt(fh, _pad3(mesh), fmt="v %.17g %.17g %.17g")
        np.savetxt(fh, faces + 1, fmt="f %d %d %d")


def write_off(path: str, mesh: Mesh) -> None:
    """Object File Format: counts, vertices (%.17g), faces as ``3 i j k`` (0-based)."""
    faces = _triangles(path, mesh)
    with open(path, "wb") as fh:
        fh.write(f"OFF\n{mesh.n_points} {len(faces)} 0\n".encode())
        np.savetxt(fh, _pad3(mesh), fmt="%.17g")
        np.savetxt(fh, faces, fmt="3 %d %d %d")


def write_stl(path: str, mesh: Mesh, binary: bool = True) -> None:
    """STL through trimesh (float32 corners per facet; no point data by the format)."""
    import trimesh

    faces = _triangles(path, mesh)
    tm = trimesh.Trimesh(_pad3(mesh), faces, process=False)
    tm.export(path, file_type="stl" if binary else "stl_ascii")


FORMATS = [
    Format("stl", (".stl",), read_surface, write_stl, False, "surface",
           "STL triangle surface (coincident corners merged; float32)"),
    Format("obj", (".obj",), read_surface, write_obj, False, "surface", "Wavefront OBJ"),
    Format("off", (".off",), read_surface, write_off, False, "surface", "Object File Format"),
    Format("ply", (".ply",), read_ply, write_ply, True, "surface",
           "PLY surface or point cloud (vertex properties are point_data)"),
]
