"""``graphop generate darcy|ns|poisson3d|swe --n N --points P --domains ... --seed S --out DIR``,
or ``graphop generate RECIPE.yaml [flags]`` with a dataset recipe (``datasets/*.yaml``)."""
from __future__ import annotations

from pathlib import Path

NAME = "generate"
HELP = "generate a PDE dataset (Darcy, Navier-Stokes, 3D Poisson, shallow water) as mesh files"
DESCRIPTION = (
    "Solve N instances of a PDE with graphop's verified solvers and write each sample as a .vtu "
    "file with point_data (inputs and targets) under OUT/train and OUT/test, plus "
    "OUT/manifest.json with the recipe. Deterministic by seed (sample i uses seed (S, i), "
    "whatever the number of workers) and resumable (valid files already written are kept). "
    "Problems and fields: darcy a -> u (domains square, disk, lshape, holes, star, airfoil); "
    "ns w0 -> w1 on the periodic unit torus (scattered points); poisson3d f -> u "
    "(shapes cube, ball, blob); swe (h0, zeta0, delta0) -> (h1, zeta1, delta1), shallow water "
    "on the rotating sphere (point sets icosphere, gauss, equiangular, fibonacci, healpix, "
    "random; --set n_frames=K adds rollout frames h2.., zeta2.., ..., spaced horizon / K hours "
    "apart: for a model of the default 6-hour step use --set horizon=6K). "
    "PROBLEM may also be a YAML recipe (datasets/darcy.yaml, datasets/ns.yaml, "
    "datasets/poisson3d.yaml): its keys are the flags (problem, n, points, domains, seed, out, "
    "workers, test_fraction, remesh, and set: {KEY: VALUE}); flags given on the command line "
    "override them; a relative out is relative to the recipe's folder (default: the recipe's "
    "name beside it, e.g. datasets/darcy).")

#: flag dest -> default, for recipes and the command line alike
DEFAULTS = {"n": 100, "points": "2000", "domains": None, "seed": 0, "out": None, "workers": 2,
            "test_fraction": 0.0, "remesh": False}
RECIPE_KEYS = ("problem", *DEFAULTS, "set")
PROBLEM_NAMES = ("darcy", "ns", "poisson3d", "swe")


def add_arguments(parser) -> None:
    parser.add_argument("problem", metavar="PROBLEM|RECIPE.yaml",
                        help="the PDE (darcy, ns, poisson3d, swe) or a YAML recipe such as "
                             "datasets/darcy.yaml")
    parser.add_argument("--n", type=int, default=None, help="number of samples (default 100)")
    parser.add_argument("--points", default=None, metavar="P[,P...]",
                        help="nodes per sample; a comma list cycles sizes (default 2000)")
    parser.add_argument("--domains", default=None, metavar="NAME[,NAME...]",
                        help="domain families, cycled over samples (default: the problem's "
                             "defaults: darcy square,disk,lshape; poisson3d ball,blob)")
    parser.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (required without a recipe)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default 2)")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="fraction of samples written to OUT/test (default 0)")
    parser.add_argument("--remesh", action="store_true", default=None,
                        help="a new mesh for every sample of fixed-geometry families too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="solver parameter, e.g. --set nu=1e-5 --set grid=128 (ns: grid, "
                             "nu, t0, horizon, dt_max; darcy: high, low, f; swe: lmax, horizon and "
                             "spinup in hours, n_frames)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _number(text: str, where: str):
    from graphop.errors import ConfigError

    try:
        num = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    return int(num) if num.is_integer() and "." not in text and "e" not in text.lower() else num


def _parse_sets(items):
    from graphop.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _number(value, f"--set {key}")
    return out


def _csv(value, where: str) -> str:
    from graphop.errors import ConfigError

    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a name/number or a list of them, got {value!r}")
    return str(value)


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _typed(key: str, value, typ):
    """``value`` as ``typ`` (YAML already typed it; ints are accepted as floats)."""
    from graphop.errors import ConfigError

    ok = (isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))) or \
        (typ is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_EXPECTED[typ]}, got {value!r}")
    return typ(value)


def load_recipe(path) -> dict:
    """The keys of a dataset recipe (YAML), checked: unknown keys and values of the wrong type
    are a one-line :class:`graphop.errors.ConfigError` naming the file and the key. A relative
    ``out`` is resolved against the recipe's folder; without ``out`` the data goes to the
    recipe's name beside it (``datasets/darcy.yaml`` -> ``datasets/darcy``)."""
    from graphop.errors import ConfigError
    from graphop.training.config import read_yaml_mapping

    p = Path(path)
    raw = read_yaml_mapping(p, "recipe")
    rec = {}
    for key, value in raw.items():
        k = str(key).replace("-", "_")
        if k not in RECIPE_KEYS:
            raise ConfigError(f"{p}: unknown recipe key {key!r}; valid keys: "
                              f"{', '.join(RECIPE_KEYS)}")
        try:
            if k in ("n", "seed", "workers"):
                value = _typed(k, value, int)
            elif k == "test_fraction":
                value = _typed(k, value, float)
            elif k == "remesh":
                value = _typed(k, value, bool)
            elif k in ("points", "domains"):
                value = _csv(value, k)
            elif k in ("problem", "out"):
                value = _typed(k, value, str)
            elif k == "set":
                if not isinstance(value, dict):
                    raise ConfigError(f"set: expected a mapping of solver parameters, got "
                                      f"{value!r}")
                value = {str(a): _number(str(b), f"set.{a}") for a, b in value.items()}
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
        rec[k] = value
    if "problem" not in rec:
        raise ConfigError(f"{p}: the recipe has no 'problem' key ({', '.join(PROBLEM_NAMES)})")
    out = Path(rec.get("out") or p.stem)
    rec["out"] = str(out if out.is_absolute() else p.parent / out)
    return rec


def resolve(args) -> dict:
    """defaults < recipe (when PROBLEM is a YAML file) < flags: the keyword arguments of
    :func:`graphop.data.generate.generate` plus ``problem`` and ``params``."""
    from graphop.errors import ConfigError

    is_recipe = args.problem.lower().endswith((".yaml", ".yml"))
    if not is_recipe and args.problem not in PROBLEM_NAMES:
        raise ConfigError(f"unknown problem {args.problem!r}; choose from "
                          f"{', '.join(PROBLEM_NAMES)} or give a recipe file (.yaml)")
    rec = load_recipe(args.problem) if is_recipe else {"problem": args.problem}
    params = dict(rec.pop("set", {}))
    params.update(_parse_sets(args.set))
    opts = {**DEFAULTS, **rec}
    for key in DEFAULTS:
        v = getattr(args, key, None)
        if v is not None:
            opts[key] = v
    if not opts["out"]:
        raise ConfigError("--out DIR is required (or give a recipe: graphop generate "
                          "datasets/darcy.yaml)")
    if opts["problem"] not in PROBLEM_NAMES:
        raise ConfigError(f"{args.problem}: unknown problem {opts['problem']!r}; choose from "
                          f"{', '.join(PROBLEM_NAMES)}")
    opts["params"] = params
    return opts


def run(args) -> int:
    from graphop.data.generate import generate

    o = resolve(args)
    command = ["graphop", "generate", o["problem"], "--n", str(o["n"]), "--points",
               str(o["points"]), "--seed", str(o["seed"]), "--out", str(o["out"]),
               "--test-fraction", str(o["test_fraction"])]
    if o["domains"]:
        command += ["--domains", str(o["domains"])]
    if o["remesh"]:
        command.append("--remesh")
    for k, v in o["params"].items():
        command += ["--set", f"{k}={v}"]
    m = generate(o["problem"], o["out"], o["n"], points=o["points"], domains=o["domains"],
                 seed=o["seed"], workers=o["workers"], test_fraction=o["test_fraction"],
                 remesh=o["remesh"], progress=not args.quiet, command=command, **o["params"])
    st = m["_stats"]
    print(f"{o['out']}: {m['n']} {o['problem']} samples ({m['counts']['train']} train, "
          f"{m['counts']['test']} test; {st['made']} made, {st['skipped']} already there) "
          f"in {st['elapsed_s']:.1f} s; fields {', '.join(m['inputs'])} -> "
          f"{', '.join(m['targets'])}")
    return 0
