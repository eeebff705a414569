"""``graphop plot FILE [--field NAME] [--out PNG]``: draw the fields of a sample on its mesh."""
from __future__ import annotations

from pathlib import Path

NAME = "plot"
HELP = "draw the point_data fields of a mesh file (PNG)"
DESCRIPTION = ("Draw every point_data field of a mesh file (or the one named by --field) on its "
               "mesh: tripcolor in 2D, the coloured boundary surface or a 3D scatter in 3D. "
               "Writes FILE's name with .png unless --out is given.")


def add_arguments(parser) -> None:
    parser.add_argument("file", help="mesh file (any format graphop reads)")
    parser.add_argument("--field", action="append", default=None, metavar="NAME",
                        help="field to draw (repeatable; default: all)")
    parser.add_argument("--out", default=None, metavar="PNG", help="output image")
    parser.add_argument("--dpi", type=int, default=120, help="resolution (default 120)")


def run(args) -> int:
    from graphop.io import read_mesh
    from graphop.inference.plot import save_field_plot

    mesh = read_mesh(args.file)
    out = args.out or str(Path(args.file).with_suffix(".png"))
    save_field_plot(mesh, out, fields=args.field, dpi=args.dpi, title=Path(args.file).name)
    print(out)
    return 0
