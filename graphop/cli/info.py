"""``graphop info MESH [--json]``: what is in a mesh file, and whether it is usable.

Reports the format, dimension, points, cells by type, total measure (length/area/volume of the
top-dimensional cells), the sum of the quadrature weights (equal to the measure for a valid
mesh), the bounding box, edge length min/median/max, boundary points and named boundary sets,
point_data fields with their shapes, and warnings (duplicate points, unused points, inverted
cells, zero-measure cells, fields with NaN or inf values: name and count). ``--json`` prints one JSON object instead (keys ``path, format, n_points, dim,
top_dim, measure, weight_sum, cells, bbox, edge_length, n_boundary, boundary_sets, fields,
warnings, hash``).
"""
from __future__ import annotations

import json
import warnings

import numpy as np

NAME = "info"
HELP = "describe a mesh or point cloud file (points, cells, measure, fields, warnings)"

_MEASURE_NAME = {0: "weight sum", 1: "length", 2: "area", 3: "volume"}


def add_arguments(parser) -> None:
    parser.add_argument("mesh", metavar="MESH", help="mesh or point cloud file (any format of "
                        "`graphop.io.formats()`: .msh .vtu .vtk .xdmf .inp .stl .obj .ply .off "
                        ".npz .csv ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--format", default=None, help="format name, overriding the extension")


def mesh_summary(mesh, path: str, fmt: str) -> dict:
    """All the numbers of ``graphop info`` as a JSON-serialisable dict."""
    lo, hi = mesh.bbox
    sp = mesh.spacing()
    boundary = mesh.boundary
    return {
        "path": str(path),
        "format": fmt,
        "n_points": int(mesh.n_points),
        "dim": int(mesh.dim),
        "top_dim": int(mesh.top_dim),
        "measure": float(mesh.measure),
        "weight_sum": float(np.sum(mesh.weights)),
        "cells": {t: int(len(c)) for t, c in mesh.cells.items()},
        "bbox": {"min": [float(v) for v in lo], "max": [float(v) for v in hi]},
        "edge_length": {k: sp[k] for k in ("min", "median", "max")},
        "n_boundary": int(boundary.sum()),
        "boundary_sets": {k: int(len(v)) for k, v in mesh.boundary_sets.items()},
        "fields": {k: [int(s) for s in np.shape(v)] for k, v in mesh.point_data.items()},
        "warnings": mesh.warnings(),
        "hash": mesh.hash,
    }


def _g(x: float) -> str:
    return f"{x:.6g}"


def format_summary(s: dict) -> str:
    """The human-readable report of :func:`mesh_summary`."""
    kind = {0: "point cloud", 1: "curve", 2: "surface" if s["dim"] == 3 else "planar mesh",
            3: "volume mesh"}[s["top_dim"]]
    cells = ", ".join(f"{t} {n}" for t, n in s["cells"].items()) or "none (point cloud)"
    e = s["edge_length"]
    edge_label = "edge length" if s["cells"] else "nn distance"
    sets = ", ".join(f"{k} ({v})" for k, v in s["boundary_sets"].items())
    fields = ", ".join(f"{k} {v}" for k, v in s["fields"].items()) or "none"
    bbox = (f"[{', '.join(_g(v) for v in s['bbox']['min'])}] .. "
            f"[{', '.join(_g(v) for v in s['bbox']['max'])}]")
    lines = [
        ("file", s["path"]),
        ("format", s["format"]),
        ("dimension", f"{s['dim']} ({kind}, cells of dimension {s['top_dim']})"),
        ("points", str(s["n_points"])),
        ("cells", cells),
        (_MEASURE_NAME[s["top_dim"]] if s["top_dim"] else "measure", _g(s["measure"])),
        ("weight sum", _g(s["weight_sum"])),
        ("bounding box", bbox),
        (edge_label, f"min {_g(e['min'])}  median {_g(e['median'])}  max {_g(e['max'])}"),
        ("boundary", f"{s['n_boundary']} points" + (f"; sets: {sets}" if sets else "")),
        ("fields", fields),
        ("hash", s["hash"]),
        ("warnings", "; ".join(s["warnings"]) or "none"),
    ]
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in lines)


def run(args) -> int:
    from graphop.io import detect_format, read_mesh

    from graphop.errors import MeshWarning

    fmt = detect_format(args.mesh, args.format)
    with warnings.catch_warnings():  # listed under "warnings:" below, not twice
        warnings.simplefilter("ignore", MeshWarning)
        mesh = read_mesh(args.mesh, format=args.format)
    summary = mesh_summary(mesh, args.mesh, fmt.name)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0
