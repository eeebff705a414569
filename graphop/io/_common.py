"""Helpers shared by the format modules: cell-block merging, boundary sets, field components.

Conventions:

* Cells are stored by type (one array per meshio cell type), so several meshio cell blocks of
  one type are concatenated; ``cell_data`` keeps the meshio layout "one array per cell type, in
  the order of ``mesh.cells``".
* Lower-dimensional cells (lines in a 2D mesh, triangles in a 3D one, vertices) are boundary
  markers: every physical group becomes a named boundary set of point indices. Names come from
  gmsh physical names (``field_data[name] = [tag, dim]``), else ``"<dim>d:<tag>"``, else the
  cell type when there are no physical tags.
* Formats that store only scalar columns (CSV, gmsh views of 2 components, ...) store component
  ``k`` of a vector field ``u`` as ``u[k]``; :func:`group_components` puts them back together.
"""
from __future__ import annotations

import re

import numpy as np

from graphop.errors import MeshReadError
from graphop.geometry.cells import CELL_DIM

__all__ = ["merge_blocks", "boundary_sets_from_cells", "split_components", "group_components",
           "PHYSICAL_KEY"]

PHYSICAL_KEY = "gmsh:physical"
_COMPONENT = re.compile(r"^(?P<name>.+)\[(?P<k>\d+)\]$")


def merge_blocks(blocks, cell_data: dict, source: str):
    """Concatenate meshio cell blocks by type.

    Args:
        blocks: list of ``(cell_type, [M, k] array)``.
        cell_data: meshio cell data, name -> list with one array per block.
        source: file name for error messages.

    Returns:
        ``(cells, cell_data)``: dict type -> [M, k] int64, and dict name -> list of arrays in the
        order of ``cells`` (only names given for every block are kept).
    """
    cells: dict[str, list] = {}
    data: dict[str, dict[str, list]] = {name: {} for name in cell_data}
    for i, (ctype, conn) in enumerate(blocks):
        if ctype not in CELL_DIM:
            raise MeshReadError(
                f"{source}: unsupported cell type {ctype!r} ({len(conn)} cells); supported: "
                f"{', '.join(sorted(CELL_DIM))}")
        if len(conn) == 0:
            continue
        cells.setdefault(ctype, []).append(np.asarray(conn, dtype=np.int64))
        for name, per_block in cell_data.items():
            if i < len(per_block) and per_block[i] is not None and len(per_block[i]) == len(conn):
                data[name].setdefault(ctype, []).append(np.asarray(per_block[i]))
    merged = {t: np.concatenate(c) for t, c in cells.items()}
    out = {}
    for name, by_type in data.items():
        if all(sum(len(a) for a in by_type.get(t, [])) == len(c) for t, c in merged.items()):
            out[name] = [np.concatenate(by_type[t]) for t in merged]
    return merged, out


def physical_names(field_data) -> list[tuple[str, int, int]]:
    """The gmsh physical names among ``field_data``: ``(name, tag, dim)`` for every entry that
    is exactly two integers ``[tag, dim]`` with 0 <= dim <= 3 (other entries, such as
    ``"periodic"`` box lengths or a ``"sphere"`` centre and radius, are not names)."""
    out = []
    for name, value in (field_data or {}).items():
        v = np.asarray(value).ravel()
        if len(v) == 2 and np.all(np.isfinite(v)) and np.all(v == np.round(v)) \
                and 0 <= v[1] <= 3:
            out.append((str(name), int(v[0]), int(v[1])))
    return out


def boundary_sets_from_cells(cells: dict, cell_data: dict, field_data: dict) -> dict:
    """Named point sets from the cells of dimension below the top dimension.

    A physical group (tag ``t`` of dimension ``d``) becomes one set; its name is the gmsh
    physical name when ``field_data`` has one, else ``"<d>d:<t>"``. Without physical tags each
    lower-dimensional cell type becomes one set named after the type.
    """
    if not cells:
        return {}
    top = max(CELL_DIM[t] for t in cells)
    names = {(dim, tag): name for name, tag, dim in physical_names(field_data)}
    tags = cell_data.get(PHYSICAL_KEY)
    sets: dict[str, list] = {}
    for i, (ctype, conn) in enumerate(cells.items()):
        dim = CELL_DIM[ctype]
        if dim >= top:
            continue
        if tags is not None and np.any(np.asarray(tags[i]) != 0):
            t = np.asarray(tags[i]).astype(np.int64).ravel()
            for tag in np.unique(t):
                name = names.get((dim, int(tag)), f"{dim}d:{int(tag)}")
                sets.setdefault(name, []).append(conn[t == tag].ravel())
        else:
            sets.setdefault(ctype, []).append(conn.ravel())
    return {name: np.unique(np.concatenate(parts)) for name, parts in sets.items()}


def split_components(name: str, value: np.ndarray, allowed=None) -> dict:
    """``{name: value}`` if its component count is allowed (default: scalars only), else one
    scalar column per component, named ``name[k]``."""
    v = np.asarray(value)
    if v.ndim == 1:
        return {name: v}
    v = v.reshape(len(v), -1)
    if allowed is not None and v.shape[1] in allowed:
        return {name: v}
    return {f"{name}[{k}]": v[:, k] for k in range(v.shape[1])}


def group_components(fields: dict) -> dict:
    """Inverse of :func:`split_components`: columns ``u[0], u[1], ...`` become one [N, k] field
    ``u`` (only when the indices are exactly 0..k-1); every other field is kept as it is."""
    groups: dict[str, dict[int, np.ndarray]] = {}
    out: dict = {}
    for key, value in fields.items():
        m = _COMPONENT.match(key)
        if m:
            groups.setdefault(m["name"], {})[int(m["k"])] = np.asarray(value)
        else:
            out[key] = value
    for name, comps in groups.items():
        if sorted(comps) == list(range(len(comps))) and name not in out:
            out[name] = np.stack([comps[k] for k in range(len(comps))], axis=1)
        else:
            out.update({f"{name}[{k}]": v for k, v in comps.items()})
    return out
