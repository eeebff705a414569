"""``graphop generate darcy|ns|poisson3d --n N --points P --domains ... --seed S --out DIR``."""
from __future__ import annotations

NAME = "generate"
HELP = "generate a PDE dataset (Darcy, Navier-Stokes, 3D Poisson) as mesh files"
DESCRIPTION = (
    "Solve N instances of a PDE with graphop's verified solvers and write each sample as a .vtu "
    "file with point_data (inputs and targets) under OUT/train and OUT/test, plus "
    "OUT/manifest.json with the recipe. Deterministic by seed (sample i uses seed (S, i), "
    "whatever the number of workers) and resumable (valid files already written are kept). "
    "Problems and fields: darcy a -> u (domains square, disk, lshape, holes, star, airfoil); "
    "ns w0 -> w1 on the periodic unit torus (scattered points); poisson3d f -> u "
    "(shapes cube, ball, blob).")


def add_arguments(parser) -> None:
    parser.add_argument("problem", choices=["darcy", "ns", "poisson3d"], help="the PDE")
    parser.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    parser.add_argument("--points", default="2000", metavar="P[,P...]",
                        help="nodes per sample; a comma list cycles sizes (default 2000)")
    parser.add_argument("--domains", default=None, metavar="NAME[,NAME...]",
                        help="domain families, cycled over samples (default: the problem's "
                             "defaults: darcy square,disk,lshape; poisson3d ball,blob)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="fraction of samples written to OUT/test (default 0)")
    parser.add_argument("--remesh", action="store_true",
                        help="a new mesh for every sample of fixed-geometry families too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="solver parameter, e.g. --set nu=1e-5 --set grid=128 (ns: grid, "
                             "nu, t0, horizon, dt_max; darcy: high, low, f)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_sets(items):
    from graphop.errors import GraphopError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GraphopError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            num = float(value)
        except ValueError:
            raise GraphopError(f"--set {key}: {value!r} is not a number") from None
        out[key.strip()] = int(num) if num.is_integer() and "." not in value and "e" not in \
            value.lower() else num
    return out


def run(args) -> int:
    from graphop.data.generate import generate

    params = _parse_sets(args.set)
    command = ["graphop", "generate", args.problem, "--n", str(args.n), "--points",
               str(args.points), "--seed", str(args.seed), "--out", str(args.out),
               "--test-fraction", str(args.test_fraction)]
    if args.domains:
        command += ["--domains", args.domains]
    if args.remesh:
        command.append("--remesh")
    for item in args.set:
        command += ["--set", item]
    m = generate(args.problem, args.out, args.n, points=args.points, domains=args.domains,
                 seed=args.seed, workers=args.workers, test_fraction=args.test_fraction,
                 remesh=args.remesh, progress=not args.quiet, command=command, **params)
    st = m["_stats"]
    print(f"{args.out}: {m['n']} {args.problem} samples ({m['counts']['train']} train, "
          f"{m['counts']['test']} test; {st['made']} made, {st['skipped']} already there) "
          f"in {st['elapsed_s']:.1f} s; fields {', '.join(m['inputs'])} -> "
          f"{', '.join(m['targets'])}")
    return 0
