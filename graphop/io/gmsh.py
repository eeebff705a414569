"""gmsh ``.msh`` files: a writer for MSH 2.2 and 4.1 (ASCII and binary) and a robust reader.

Reading goes through meshio. meshio 5.3.5's own gmsh *writer* formats data values with
``{!r}``, which under numpy >= 2 (NEP 51) prints ``np.float64(0.5)`` instead of ``0.5``; the
ASCII files it writes with point data then fail to read ("string or file could not be read to
its end due to unmatched data", from ``np.fromfile(sep=" ")`` in ``_read_data``). The reader in
meshio is correct for well-formed files, so :func:`read_msh` retries such a file once with the
numpy scalar reprs rewritten to plain numbers, and files are written here by :func:`write_msh`,
which never produces them. The writer also keeps physical groups: every (dimension, physical
tag) pair of the mesh's cells is one gmsh entity carrying that physical tag, and
``field_data`` (``name -> [tag, dim]``) becomes ``$PhysicalNames``.

Format reference: the gmsh manual, section "MSH file format" (versions 4.1 and 2.2).
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np

from graphop.geometry.cells import CELL_DIM
from graphop.io._common import PHYSICAL_KEY, physical_names, split_components
from graphop.errors import InputError

__all__ = ["read_msh", "write_msh", "GMSH_TYPE"]

#: gmsh element type numbers of the linear cell types (node order equals meshio's)
GMSH_TYPE = {"vertex": 15, "line": 1, "triangle": 2, "quad": 3, "tetra": 4, "hexahedron": 5,
             "wedge": 6, "pyramid": 7}

_NUMPY_REPR = re.compile(rb"np\.(?:float|int|uint|complex)\d*\(([^()]*)\)")


def read_msh(path: str):
    """Read a gmsh file with meshio (any version, ASCII or binary); returns a ``meshio.Mesh``.

    Files whose data values were written as numpy reprs (meshio's writer under numpy 2) are
    rewritten to plain numbers in a temporary copy and read again. The format module's
    ``read`` is called directly: ``meshio.read`` turns a ``ReadError`` into ``sys.exit(1)``.
    """
    import meshio

    try:
        return meshio.gmsh.read(path)
    except Exception:
        with open(path, "rb") as fh:
            raw = fh.read()
        if not _NUMPY_REPR.search(raw):
            raise
    fixed = _NUMPY_REPR.sub(rb"\1", raw)
    fd, tmp = tempfile.mkstemp(suffix=".msh")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(fixed)
        return meshio.gmsh.read(tmp)
    finally:
        os.unlink(tmp)


# ---------------------------------------------------------------------------------- writing
def _blocks(cells: dict, cell_data: dict):
    """Cell blocks (type, dim, physical tag, entity tag, connectivity), one per run of cells
    of one type and physical tag, and the entities: (dim, physical tag) -> entity tag."""
    tags = cell_data.get(PHYSICAL_KEY)
    if tags is not None and len(tags) != len(cells):
        tags = None
    blocks, entities = [], {}
    for i, (ctype, conn) in enumerate(cells.items()):
        if ctype not in GMSH_TYPE:
            raise InputError(f"cell type {ctype!r} has no gmsh element type")
        dim = CELL_DIM[ctype]
        phys = (np.asarray(tags[i], dtype=np.int64).ravel() if tags is not None
                else np.zeros(len(conn), dtype=np.int64))
        # one block per run of equal tags, so that the cell order survives a round trip
        starts = np.flatnonzero(np.diff(phys, prepend=phys[0] - 1))
        for a, b in zip(starts, np.append(starts[1:], len(phys))):
            key = (dim, int(phys[a]))
            if key not in entities:
                entities[key] = 1 + sum(1 for d, _ in entities if d == dim)
            blocks.append((ctype, dim, int(phys[a]), entities[key], conn[a:b]))
    return blocks, entities


class _Out:
    """Small helper writing ASCII lines or binary arrays to one file handle."""

    def __init__(self, fh, binary: bool):
        self.fh, self.binary = fh, binary

    def line(self, text: str) -> None:
        self.fh.write((text + "\n").encode())

    def arr(self, values, dtype) -> None:
        np.ascontiguousarray(values, dtype=dtype).tofile(self.fh)

    def rows(self, table: np.ndarray, int_cols: int = 0) -> None:
        """ASCII rows: the first ``int_cols`` columns as integers, the rest as %.17g."""
        fmt = " ".join(["%d"] * int_cols + ["%.17g"] * (table.shape[1] - int_cols))
        np.savetxt(self.fh, table, fmt=fmt)


def write_msh(path: str, mesh, version: str = "4.1", binary: bool = False) -> None:
    """Write ``mesh`` as a gmsh MSH file.

    Args:
        path: output path.
        mesh: a :class:`graphop.Mesh`; ``cell_data["gmsh:physical"]`` (one array per cell type)
            gives physical tags, ``field_data`` the physical names.
        version: ``"4.1"`` (default) or ``"2.2"``.
        binary: binary instead of ASCII.
    """
    version = str(version)
    if version not in ("4.1", "2.2"):
        raise InputError(f"gmsh version must be '4.1' or '2.2', got {version!r}")
    pts = np.zeros((mesh.n_points, 3))
    pts[:, : mesh.dim] = mesh.points
    cells, cell_data, point_data = mesh.cells, mesh.cell_data, dict(mesh.point_data)
    if not cells:  # a point cloud: one vertex element per point, weights as a node view
        cells, cell_data = {"vertex": np.arange(mesh.n_points)[:, None]}, {}
        point_data = {"weight": mesh.weights, **point_data}
    blocks, entities = _blocks(cells, cell_data)
    with open(path, "wb") as fh:
        out = _Out(fh, binary)
        out.line("$MeshFormat")
        out.line(f"{version} {int(binary)} 8")
        if binary:
            out.arr([1], "<i4")
            out.line("")
        out.line("$EndMeshFormat")
        phys_names = [(dim, tag, name) for name, tag, dim in physical_names(mesh.field_data)]
        if phys_names:
            out.line("$PhysicalNames")
            out.line(str(len(phys_names)))
            for dim, tag, name in sorted(phys_names):
                out.line(f'{dim} {tag} "{name}"')
            out.line("$EndPhysicalNames")
        if version == "4.1":
            _write41(out, pts, blocks, entities)
        else:
            _write22(out, pts, blocks)
        for name, value in point_data.items():
            for key, v in split_components(name, value, allowed=(1, 3, 9)).items():
                _write_node_data(out, key, np.asarray(v, dtype=np.float64))


def _write_numbered_rows(out: _Out, values: np.ndarray) -> None:
    """Rows ``k, values[k-1, :]`` (1-based int32 tag, float64 values): packed records in binary
    files, text lines in ASCII ones. Used by $Nodes (gmsh 2.2) and $NodeData."""
    n = len(values)
    if out.binary:
        rec = np.empty(n, dtype=[("i", "<i4"), ("v", "<f8", (values.shape[1],))])
        rec["i"], rec["v"] = np.arange(1, n + 1), values
        rec.tofile(out.fh)
        out.line("")
    else:
        out.rows(np.column_stack([np.arange(1, n + 1), values]), int_cols=1)


def _write22(out: _Out, pts, blocks) -> None:
    n = len(pts)
    out.line("$Nodes")
    out.line(str(n))
    _write_numbered_rows(out, pts)
    out.line("$EndNodes")
    out.line("$Elements")
    out.line(str(sum(len(b[4]) for b in blocks)))
    first = 1
    for ctype, _dim, phys, ent, conn in blocks:
        m = len(conn)
        ids = np.arange(first, first + m)
        first += m
        if out.binary:
            out.arr([GMSH_TYPE[ctype], m, 2], "<i4")
            out.arr(np.column_stack([ids, np.full(m, phys), np.full(m, ent), conn + 1]), "<i4")
        else:
            table = np.column_stack([ids, np.full(m, GMSH_TYPE[ctype]), np.full(m, 2),
                                     np.full(m, phys), np.full(m, ent), conn + 1])
            np.savetxt(out.fh, table, fmt="%d")
    if out.binary:
        out.line("")
    out.line("$EndElements")


def _write41(out: _Out, pts, blocks, entities) -> None:
    n = len(pts)
    ent_list = sorted(entities.items(), key=lambda kv: (kv[0][0], kv[1]))  # ((dim, phys), tag)
    # bounding box of every entity from the points of its cells
    boxes = {}
    for _ctype, dim, phys, _ent, conn in blocks:
        p = pts[np.unique(conn)]
        lo, hi = p.min(0), p.max(0)
        if (dim, phys) in boxes:
            lo, hi = np.minimum(lo, boxes[dim, phys][0]), np.maximum(hi, boxes[dim, phys][1])
        boxes[dim, phys] = (lo, hi)
    counts = [sum(1 for (d, _), _t in ent_list if d == k) for k in range(4)]
    out.line("$Entities")
    if out.binary:
        out.arr(counts, "<u8")
    else:
        out.line(" ".join(map(str, counts)))
    for (dim, phys), tag in ent_list:
        lo, hi = boxes[dim, phys]
        box = lo if dim == 0 else np.concatenate([lo, hi])
        nphys = 1 if phys else 0
        if out.binary:
            out.arr([tag], "<i4")
            out.arr(box, "<f8")
            out.arr([nphys], "<u8")
            if nphys:
                out.arr([phys], "<i4")
            if dim > 0:
                out.arr([0], "<u8")
        else:
            items = [str(tag)] + [repr(float(v)) for v in box] + [str(nphys)]
            items += [str(phys)] * nphys + (["0"] if dim > 0 else [])
            out.line(" ".join(items))
    if out.binary:
        out.line("")
    out.line("$EndEntities")
    # all nodes in one block, classified on the first entity of the top dimension
    top = max(d for d, _ in entities)
    node_ent = min(t for (d, _), t in ent_list if d == top)
    out.line("$Nodes")
    tags = np.arange(1, n + 1)
    if out.binary:
        out.arr([1, n, 1, n], "<u8")
        out.arr([top, node_ent, 0], "<i4")
        out.arr([n], "<u8")
        out.arr(tags, "<u8")
        out.arr(pts, "<f8")
        out.line("")
    else:
        out.line(f"1 {n} 1 {n}")
        out.line(f"{top} {node_ent} 0 {n}")
        np.savetxt(out.fh, tags, fmt="%d")
        out.rows(pts)
    out.line("$EndNodes")
    total = sum(len(b[4]) for b in blocks)
    out.line("$Elements")
    if out.binary:
        out.arr([len(blocks), total, 1, total], "<u8")
    else:
        out.line(f"{len(blocks)} {total} 1 {total}")
    first = 1
    for ctype, dim, _phys, ent, conn in blocks:
        m = len(conn)
        table = np.column_stack([np.arange(first, first + m), conn + 1])
        first += m
        if out.binary:
            out.arr([dim, ent, GMSH_TYPE[ctype]], "<i4")
            out.arr([m], "<u8")
            out.arr(table, "<u8")
        else:
            out.line(f"{dim} {ent} {GMSH_TYPE[ctype]} {m}")
            np.savetxt(out.fh, table, fmt="%d")
    if out.binary:
        out.line("")
    out.line("$EndElements")


def _write_node_data(out: _Out, name: str, values: np.ndarray) -> None:
    """One ``$NodeData`` view (same layout in MSH 2.2 and 4.1): 1 string tag (the name),
    1 real tag (time 0), 3 integer tags (time step 0, components, number of nodes)."""
    n = len(values)
    v = values.reshape(n, -1)
    out.line("$NodeData")
    for text in ("1", f'"{name}"', "1", "0.0", "3", "0", str(v.shape[1]), str(n)):
        out.line(text)
    _write_numbered_rows(out, v)
    out.line("$EndNodeData")
