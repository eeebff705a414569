"""``graphop predict``: run a trained model on a mesh file or point cloud, write the prediction."""
from __future__ import annotations

import json

NAME = "predict"
HELP = "predict the target fields on a new mesh file or point cloud"
DESCRIPTION = """Predict with a trained model on MESH_FILE (any format graphop reads, any
resolution, or a bare point cloud .npz/.csv/.ply) and write the mesh with the predicted fields
as point_data to --out (default <stem>_pred.vtu). When the file already holds a target field u,
the output gets u_pred and u_error and the relative L2 error is printed."""


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("mesh", metavar="MESH_FILE")
    p.add_argument("--out", help="output mesh file (default <stem>_pred.vtu)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--measure", type=float,
                   help="area/volume of the domain, to scale point-cloud quadrature weights")
    p.add_argument("--periodic", help="box lengths L1,L2[,L3] for models trained on a torus")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to be the input file itself (replaced by the mesh with the "
                        "predicted fields); refused otherwise")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from graphop.errors import ConfigError
    from graphop.inference.predict import predict_file

    periodic = None
    if args.periodic:
        try:
            periodic = [float(v) for v in args.periodic.split(",")]
        except ValueError:
            raise ConfigError(f"--periodic expects numbers like 1,1, got {args.periodic!r}") from None
    info = predict_file(args.checkpoint, args.mesh, args.out, args.device, args.measure, periodic,
                        overwrite=args.overwrite)
    if args.json:
        print(json.dumps(info))
    else:
        kind = "point cloud" if info["point_cloud"] else "mesh"
        msg = (f"predicted {', '.join(info['fields'])} on {info['n_points']} points ({kind}) -> "
               f"{info['out']}")
        if info["rel_l2"] is not None:
            msg += f"; relative L2 error against the file's fields: {info['rel_l2']:.4g}"
        print(msg)
    return 0
