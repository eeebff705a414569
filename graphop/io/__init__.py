"""Mesh file input/output: one registry from file extension to reader and writer.

``read_mesh(path)`` returns a :class:`graphop.Mesh` for every format listed by :func:`formats`;
``write_mesh(path, mesh)`` writes one. The format families live in their own modules:

* :mod:`graphop.io.volume` -- meshio (VTU, VTK, XDMF, Abaqus, MED, ...) and gmsh ``.msh`` 2.2/4.1
  (:mod:`graphop.io.gmsh`, ASCII and binary, physical groups kept),
* :mod:`graphop.io.surface` -- trimesh (STL, OBJ, OFF, PLY surfaces; loaded with
  ``process=False`` so point data stays aligned; STL corners are merged),
* :mod:`graphop.io.pointcloud` -- bare point clouds (PLY without faces, NPZ, CSV).

Every failure to read a file raises :class:`graphop.errors.MeshReadError` (or
:class:`graphop.MeshError` for invalid content) with a one-line message that names the file and
the problem; writing a field a format cannot store raises :class:`MeshWriteError` instead of
dropping it. Points are never dropped.

Example:
    >>> from graphop.io import read_mesh, write_mesh
    >>> mesh = read_mesh("meshes/lshape.msh")
    >>> write_mesh("lshape.vtu", mesh)
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from graphop.errors import GraphopError, InputTypeError, MeshReadError
from graphop.errors import MeshError
from graphop.geometry.mesh import Mesh

__all__ = ["Format", "MeshWriteError", "read_mesh", "write_mesh", "formats", "detect_format",
           "register_format"]


class MeshWriteError(GraphopError, ValueError):
    """A mesh that the chosen file format cannot store (fields, cell types)."""


@dataclass(frozen=True)
class Format:
    """One file format: its name, extensions, reader and writer, and what it can store.

    Args:
        name: short name shown by ``graphop info`` (e.g. ``"gmsh"``, ``"vtu"``).
        extensions: lower-case extensions with the dot, longest first (``".vol.gz"``).
        reader: ``reader(path: str, **kw) -> Mesh`` (may be None for write-only formats).
        writer: ``writer(path: str, mesh: Mesh, **kw) -> None`` (None for read-only formats).
        point_data: whether point_data fields survive a write/read round trip.
        family: ``"volume"``, ``"surface"`` or ``"pointcloud"``.
        description: one line for ``formats()`` listings.
    """

    name: str
    extensions: tuple
    reader: Callable | None
    writer: Callable | None
    point_data: bool = True
    family: str = "volume"
    description: str = ""
    aliases: tuple = field(default=())


_REGISTRY: dict[str, Format] = {}


def register_format(fmt: Format) -> None:
    """Add (or replace) a format; each extension maps to the last format registering it."""
    for ext in fmt.extensions:
        _REGISTRY[ext.lower()] = fmt


def _ensure_registered() -> None:
    if _REGISTRY:
        return
    from graphop.io import pointcloud, surface, volume

    for module in (volume, surface, pointcloud):
        for fmt in module.FORMATS:
            register_format(fmt)


def formats() -> list[Format]:
    """Every registered format (one entry per format, sorted by name)."""
    _ensure_registered()
    seen = {}
    for fmt in _REGISTRY.values():
        seen.setdefault(fmt.name, fmt)
    return [seen[k] for k in sorted(seen)]


def detect_format(path, format: str | None = None) -> Format:
    """The :class:`Format` for ``path`` from its extension (or the explicit ``format`` name)."""
    _ensure_registered()
    if format is not None:
        for fmt in formats():
            if format == fmt.name or format in fmt.aliases or format.lower() in fmt.extensions:
                return fmt
        names = ", ".join(f.name for f in formats())
        raise MeshReadError(f"{path}: unknown mesh format {format!r}; known: {names}")
    name = Path(path).name.lower()
    for ext in sorted(_REGISTRY, key=len, reverse=True):
        if name.endswith(ext):
            return _REGISTRY[ext]
    ext = "".join(Path(name).suffixes[-1:]) or "(none)"
    known = ", ".join(sorted(_REGISTRY))
    raise MeshReadError(f"{path}: unknown mesh file extension '{ext}'; known extensions: {known}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_mesh(path, format: str | None = None, **kwargs) -> Mesh:
    """Read a mesh or point cloud file into a :class:`graphop.Mesh`.

    Args:
        path: file path; the format comes from its extension unless ``format`` is given.
        format: a format name from :func:`formats` (optional).
        **kwargs: passed to the reader (point clouds accept ``measure=`` and ``k=`` for the
            k-nearest-neighbour quadrature weights).

    A surface mesh whose points lie on a sphere (within 1e-6 of its radius) is recognised: its
    weights become the spherical lumped mass (they sum to 4 pi R^2) and
    ``field_data["sphere"] = [cx, cy, cz, R]`` records the sphere.

    Raises:
        FileNotFoundError: the file does not exist.
        MeshReadError: unknown extension, empty, unreadable or truncated file.
        MeshError: invalid content (NaN/inf coordinates, bad connectivity, zero-measure cells,
            point_data of the wrong length, no points).
    """
    path = os.fspath(path)
    fmt = detect_format(path, format)
    if fmt.reader is None:
        raise MeshReadError(f"{path}: format {fmt.name!r} can be written but not read")
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a mesh file", path)
    if os.path.getsize(path) == 0:
        raise MeshReadError(f"{path}: the file is empty")
    try:
        mesh = fmt.reader(path, **kwargs)
    except GraphopError:
        raise
    except Exception as exc:  # any parser failure of a third-party reader is a bad file
        raise MeshReadError(
            f"{path}: cannot read as {fmt.name} ({type(exc).__name__}: "
            f"{_one_line(exc) or 'no details'}); the file may be truncated or not a "
            f"{fmt.name} file") from exc
    if mesh.n_points == 0:
        raise MeshError(f"{path}: the mesh has no points")
    if mesh.dim == 3 and mesh.is_surface and "sphere" not in mesh.field_data:
        from graphop.geometry.sphere import as_sphere_mesh, detect_sphere

        if detect_sphere(mesh.points) is not None:   # a sphere: spherical quadrature, R recorded
            mesh = as_sphere_mesh(mesh)
    return mesh


def write_mesh(path, mesh: Mesh, format: str | None = None, *, drop_fields: bool = False,
               **kwargs) -> None:
    """Write ``mesh`` to ``path``; the format comes from the extension unless given.

    Args:
        path: output file path (parent folders are created).
        mesh: the :class:`graphop.Mesh` to write.
        format: a format name from :func:`formats` (optional).
        drop_fields: allow writing a mesh with point_data to a format that cannot store it
            (default False: raise :class:`MeshWriteError` rather than lose data silently).
        **kwargs: passed to the writer, e.g. ``binary=True`` and ``version="2.2"`` for gmsh.
    """
    path = os.fspath(path)
    if not isinstance(mesh, Mesh):
        raise InputTypeError(f"write_mesh expects a graphop.Mesh, got {type(mesh).__name__}")
    fmt = detect_format(path, format)
    if fmt.writer is None:
        raise MeshWriteError(f"{path}: format {fmt.name!r} can be read but not written")
    if mesh.point_data and not fmt.point_data and not drop_fields:
        raise MeshWriteError(
            f"{path}: the {fmt.name} format cannot store point_data fields "
            f"{sorted(mesh.point_data)}; write another format (.vtu, .msh, .npz) or pass "
            "drop_fields=True")
    if not mesh.cells and not fmt.point_data:
        raise MeshWriteError(
            f"{path}: a point cloud needs a format that stores its quadrature weights "
            f"(.npz, .csv, .ply, .vtu, .msh); the {fmt.name} format cannot")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fmt.writer(path, mesh, **kwargs)
