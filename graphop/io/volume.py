"""Volume (and general cell) meshes through meshio, and gmsh ``.msh`` through :mod:`.gmsh`.

Conversion rules (meshio -> :class:`graphop.Mesh`):

* cell blocks of one type are concatenated; unsupported (e.g. high-order) cell types raise
  :class:`MeshReadError` rather than being linearised silently;
* the cells of the highest dimension give the lumped-mass quadrature; lower-dimensional cells
  stay in ``mesh.cells`` (so they are written back) and become named ``boundary_sets``
  (gmsh physical names when present);
* a file with points but no cells of dimension >= 1 is a point cloud
  (:meth:`Mesh.from_points`, k-NN weights, ``measure=`` rescales them);
* bookkeeping arrays of particular writers (``gmsh:dim_tags``, ``GLOBAL_ID``, ``medit:ref``)
  are not fields and are left out of ``point_data``.

Formats whose round trip of a mixed triangle + line mesh with fields was verified with meshio
5.3.5 are registered (see ``FORMATS``). Not registered: tetgen (its reader hangs), su2, ugrid,
cgns, flac3d, h5m, hmf (fail to round trip), tecplot and dolfin-xml (one cell type only;
dolfin-xml also writes numpy reprs under numpy 2), exodus (needs netCDF4).
"""
from __future__ import annotations

import warnings

import numpy as np

from graphop.geometry.cells import CELL_DIM
from graphop.geometry.mesh import Mesh
from graphop.io import Format
from graphop.io._common import boundary_sets_from_cells, group_components, merge_blocks, split_components
from graphop.io.gmsh import read_msh, write_msh

__all__ = ["mesh_from_meshio", "mesh_to_meshio", "read_meshio", "write_meshio", "FORMATS"]

_BOOKKEEPING = {"gmsh:dim_tags", "GLOBAL_ID", "medit:ref"}


def mesh_from_meshio(mm, source: str, measure: float | None = None, k: int = 8) -> Mesh:
    """Convert a ``meshio.Mesh`` (as read from ``source``) to a :class:`graphop.Mesh`."""
    points = np.asarray(mm.points, dtype=np.float64)
    point_data = {str(k_): np.asarray(v) for k_, v in mm.point_data.items()
                  if k_ not in _BOOKKEEPING}
    point_data = group_components(point_data)
    blocks = [(b.type, b.data) for b in mm.cells]
    cells, cell_data = merge_blocks(blocks, dict(mm.cell_data), source)
    field_data = {str(k_): np.asarray(v) for k_, v in (mm.field_data or {}).items()}
    if not cells or max(CELL_DIM[t] for t in cells) == 0:
        weights = point_data.pop("weight", None)
        return Mesh.from_points(points, weights=weights, measure=measure, k=k,
                                point_data=point_data, source=source)
    sets = boundary_sets_from_cells(cells, cell_data, field_data)
    return Mesh(points, cells, point_data, cell_data, field_data, boundary_sets=sets,
                source=source)


def mesh_to_meshio(mesh: Mesh):
    """Convert a :class:`graphop.Mesh` to a ``meshio.Mesh`` (points padded to 3D)."""
    import meshio

    pts = np.zeros((mesh.n_points, 3))
    pts[:, : mesh.dim] = mesh.points
    cells = [(t, np.asarray(c)) for t, c in mesh.cells.items()]
    cell_data = {k: [np.asarray(a) for a in v] for k, v in mesh.cell_data.items()
                 if len(v) == len(cells) and all(len(a) == len(c) for a, (_, c) in zip(v, cells))}
    return meshio.Mesh(pts, cells, point_data=dict(mesh.point_data), cell_data=cell_data,
                       field_data=dict(mesh.field_data))


def read_meshio(path: str, file_format: str, **kw) -> Mesh:
    """Read ``path`` with meshio's reader module ``meshio.<file_format>`` (called directly:
    ``meshio.read`` turns a parse error into ``sys.exit(1)``)."""
    import meshio

    module = getattr(meshio, file_format.replace("-", "_"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm = module.read(path)
    return mesh_from_meshio(mm, path, **kw)


def write_meshio(path: str, mesh: Mesh, file_format: str, components=None, **kw) -> None:
    """Write ``mesh`` with meshio's ``file_format`` writer.

    Args:
        components: component counts the format stores as one field (others are written as
            scalar fields ``u[k]``, grouped back on reading); None keeps every field whole.
    """
    import meshio

    mm = mesh_to_meshio(mesh)
    if components is not None:
        pd = {}
        for name, value in mm.point_data.items():
            pd.update(split_components(name, value, allowed=components))
        mm.point_data = pd
    if not mesh.cells:  # a point cloud: vertex cells, weights as a field
        mm.cells = [meshio.CellBlock("vertex", np.arange(mesh.n_points)[:, None])]
        mm.cell_data = {}
        mm.point_data = {"weight": mesh.weights, **mm.point_data}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meshio.write(path, mm, file_format=file_format, **kw)


def read_gmsh(path: str, **kw) -> Mesh:
    """Read a gmsh ``.msh`` file (2.2 or 4.1, ASCII or binary)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm = read_msh(path)
    return mesh_from_meshio(mm, path, **kw)


def _meshio_format(name, exts, file_format, point_data, description, writer_kw=None):
    def reader(path, **kw):
        return read_meshio(path, file_format, **kw)

    def writer(path, mesh, **kw):
        write_meshio(path, mesh, file_format, **{**(writer_kw or {}), **kw})

    return Format(name, tuple(exts), reader, writer, point_data, "volume", description,
                  aliases=(file_format,))


FORMATS = [
    Format("gmsh", (".msh",), read_gmsh, write_msh, True, "volume",
           "gmsh MSH 2.2 / 4.1, ASCII or binary (write: version='4.1'|'2.2', binary=False)",
           aliases=("gmsh22", "gmsh41", "msh")),
    _meshio_format("vtu", [".vtu"], "vtu", True, "VTK XML unstructured grid"),
    _meshio_format("vtk", [".vtk"], "vtk", True, "legacy VTK", {"components": (1, 3)}),
    _meshio_format("xdmf", [".xdmf", ".xmf"], "xdmf", True, "XDMF3 with HDF5 heavy data"),
    _meshio_format("abaqus", [".inp"], "abaqus", False, "Abaqus input file"),
    _meshio_format("med", [".med"], "med", True, "Salome MED (HDF5)"),
    _meshio_format("avsucd", [".avs"], "avsucd", True, "AVS-UCD"),
    _meshio_format("medit", [".mesh", ".meshb"], "medit", False, "Medit / INRIA mesh"),
    # meshio's Nastran writer asserts on many coordinates (16-character field overflow)
    Format("nastran", (".bdf", ".fem", ".nas"),
           lambda path, **kw: read_meshio(path, "nastran", **kw),
           None, False, "volume", "Nastran bulk data (read only)", aliases=("nastran",)),
    _meshio_format("mdpa", [".mdpa"], "mdpa", False, "Kratos MDPA"),
    _meshio_format("netgen", [".vol", ".vol.gz"], "netgen", False, "Netgen volume mesh"),
    _meshio_format("permas", [".post", ".post.gz", ".dato", ".dato.gz"], "permas", False,
                   "PERMAS"),
]
