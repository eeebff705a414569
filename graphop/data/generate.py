"""The dataset generation driver: N samples of a PDE problem written as mesh files + a manifest.

    OUT/manifest.json          the recipe (problem, parameters, seed, counts) and one record
                               per sample (file, index, split, family, n_points)
    OUT/train/sample_000000.vtu
    OUT/test/sample_000950.vtu point_data: the problem's inputs and targets

Determinism: sample i draws everything (geometry, coefficients, points) from
``numpy.random.default_rng([seed, i])``, so its file does not depend on the number of workers
or on the order of completion; meshes of fixed-geometry families are seeded by
(seed, family, size) and shared by the samples of that family unless ``remesh`` is set.
Sample i has family ``domains[i % D]`` and size ``points[(i // D) % P]``; the last
round(test_fraction * N) samples form the test split.

Resumable: a sample whose file exists and reads back with the expected fields is skipped; files
are written to a temporary name and renamed, so an interrupted run never leaves a partial
sample. Samples are made in a ``spawn`` process pool (BLAS limited to one thread per worker)
with a progress bar (:mod:`graphop.data.progress`: plain lines when stderr is not a
terminal).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from graphop.errors import DataError

__all__ = ["PROBLEMS", "Problem", "generate", "MANIFEST", "sample_bytes"]

MANIFEST = "manifest.json"
FORMAT = "graphop-dataset/1"


@dataclass(frozen=True)
class Problem:
    """A generated problem: its fields, domain families and defaults."""

    name: str
    inputs: tuple
    targets: tuple
    domains: tuple
    default_domains: tuple
    dim: int
    periodic: list | None = None
    defaults: dict = field(default_factory=dict)


PROBLEMS = {
    "darcy": Problem("darcy", ("a",), ("u",),
                     ("square", "disk", "lshape", "holes", "star", "airfoil"),
                     ("square", "disk", "lshape"), 2,
                     defaults={"high": 12.0, "low": 3.0, "f": 1.0}),
    "ns": Problem("ns", ("w0",), ("w1",), ("torus",), ("torus",), 2, periodic=[[1.0, 1.0]],
                  defaults={"grid": 64, "nu": 1e-4, "t0": 2.0, "horizon": 2.0, "dt_max": 1e-2}),
    "poisson3d": Problem("poisson3d", ("f",), ("u",), ("cube", "ball", "blob"),
                         ("ball", "blob"), 3, defaults={}),
    # shallow water on the rotating sphere (graphop.data.swe); the "domains" are the point sets
    # of graphop.geometry.sphere; horizon and spinup in hours; rollout frames h2, zeta2, ...
    "swe": Problem("swe", ("h0", "zeta0", "delta0"), ("h1", "zeta1", "delta1"),
                   ("icosphere", "gauss", "equiangular", "fibonacci", "healpix", "random"),
                   ("icosphere",), 3,
                   defaults={"lmax": 63, "horizon": 6.0, "spinup": 6.0, "n_frames": 1}),
}


@lru_cache(maxsize=32)
def _fixed_mesh(problem: str, family: str, n_points: int, seed: int):
    tag = int.from_bytes(family.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, tag, n_points, 2**31])
    return _make_mesh(problem, family, n_points, rng)


def _make_mesh(problem, family, n_points, rng):
    if problem == "darcy":
        from graphop.data.domains_random import mesh_domain

        return mesh_domain(family, n_points, rng)
    from graphop.data.poisson3d import shape_mesh

    return shape_mesh(family, n_points, rng)


def _solve(task: dict):
    """Compute one sample: returns a Mesh with point_data (and the family)."""
    from graphop.geometry.mesh import Mesh

    problem, i, seed = task["problem"], task["index"], task["seed"]
    family, n_points, params = task["family"], task["n_points"], task["params"]
    rng = np.random.default_rng([seed, i])
    if problem == "ns":
        from graphop.data.navier_stokes import ns_sample

        s = ns_sample(rng, n_points, **params)
        # a point cloud: the writer stores the Monte Carlo weights 1/P as the field "weight"
        return Mesh.from_points(s["points"], weights=s["weight"],
                                point_data={"w0": s["w0"], "w1": s["w1"]})
    if problem == "swe":
        from graphop.data.swe import swe_sample
        from graphop.geometry.sphere import sphere_points

        # a fixed point set per (family, size) unless remesh: then sample i draws its own
        # random points (the other families are deterministic point sets)
        mesh = sphere_points(family, n_points, seed=int(rng.integers(2**31)) if task["remesh"]
                             else seed)
        p = dict(params)
        hours = {"horizon": 3600.0 * float(p.pop("horizon")),
                 "spinup": 3600.0 * float(p.pop("spinup"))}
        s = swe_sample(rng, mesh.points, n_frames=int(p.pop("n_frames")),
                       lmax=int(p.pop("lmax")), **hours, **p)
        fields = {k: v for k, v in s.items() if k not in ("points", "times")}
        return Mesh(mesh.points, mesh.cells, fields, field_data=mesh.field_data,
                    weights=mesh.weights, source=mesh.source, validate=False)
    fixed = family in ("square", "disk", "lshape", "cube", "ball")
    if fixed and not task["remesh"]:
        pts, cells = _fixed_mesh(problem, family, n_points, seed)
    else:
        pts, cells = _make_mesh(problem, family, n_points, rng)
    if problem == "darcy":
        from graphop.data.darcy import darcy_sample

        fields = darcy_sample(pts, cells, rng, **params)
        return Mesh(pts, {"triangle": cells}, fields, validate=False)
    from graphop.data.poisson3d import poisson3d_sample

    fields = poisson3d_sample(pts, cells, rng)
    return Mesh(pts, {"tetra": cells}, fields, validate=False)


def _valid(path: Path, names) -> int | None:
    """Number of points of a readable sample file holding every field in ``names``, else None."""
    from graphop.io import read_mesh

    try:
        m = read_mesh(path)
    except Exception:
        return None
    if not all(k in m.point_data for k in names):
        return None
    return m.n_points


def _work(task: dict) -> dict:
    path = Path(task["out"]) / task["file"]
    rec = {k: task[k] for k in ("file", "index", "split", "family")}
    if path.exists():
        n = _valid(path, task["fields"])
        if n is not None:
            return {**rec, "n_points": n, "skipped": True}
    mesh = _solve(task)
    from graphop.io import write_mesh

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write_mesh(tmp, mesh)
    os.replace(tmp, path)
    return {**rec, "n_points": mesh.n_points, "skipped": False}


# Peak memory of one sample, measured (peak RSS of one `generate` process minus the interpreter,
# workers=1): darcy 1.5 kB per point (4e4 points), poisson3d 7 kB per point (2e4 points; the
# SuperLU factor of a 3D stiffness matrix grows faster than N), ns 0.2 kB per point plus the
# s x s spectral fields. The coefficients below are twice the measured ones.
_BYTES_PER_POINT = {"darcy": 3000.0, "poisson3d": 15000.0, "ns": 1000.0, "swe": 1000.0}
_WORKER_BASE = 150e6  # a spawned worker interpreter with numpy, scipy, meshio


def sample_bytes(problem: str, n_points: int, params: dict | None = None) -> float:
    """Estimated peak bytes to make one sample of ``problem`` with ``n_points`` points.

    darcy: 3 kB per point, times ln(N) / ln(4e4) above 4e4 points (2D sparse LU fill);
    poisson3d: 15 kB per point, times (N / 2e4)^(1/3) above 2e4 points (3D fill);
    ns: 1 kB per point plus 640 B per node of the ``grid`` x ``grid`` spectral solver.
    """
    n = float(n_points)
    c = _BYTES_PER_POINT[problem]
    if problem == "darcy":
        return float(c * n * max(1.0, np.log(max(n, 2.0)) / np.log(4e4)))
    if problem == "poisson3d":
        return float(c * n * max(1.0, (n / 2e4) ** (1.0 / 3.0)))
    if problem == "swe":   # the Gauss grid of the spectral solver: ~40 fields of nlat x 2 nlat
        lmax = int((params or {}).get("lmax", PROBLEMS["swe"].defaults["lmax"]))
        nlat = (3 * lmax + 3) // 2
        return c * n + 40 * 16.0 * 2 * nlat * nlat
    grid = int((params or {}).get("grid", PROBLEMS["ns"].defaults["grid"]))
    return c * n + 640.0 * grid * grid


def _init_worker():
    os.environ["OMP_NUM_THREADS"] = "1"


def _as_list(v, name):
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    elif np.isscalar(v):
        v = [v]
    v = list(v)
    if not v:
        raise DataError(f"{name} must not be empty")
    return v


def _check_memory(problem: str, n: int, sizes: list, solver: dict, workers: int) -> None:
    """MemoryLimitError before anything is allocated when the largest samples, one per busy
    worker, cannot fit in the available memory."""
    from graphop.memory import available_memory, check_memory

    busy = max(1, min(int(workers), n))
    base = _WORKER_BASE if busy > 1 else 0.0
    big = max(sizes[:n])

    def need(points: int) -> float:
        return busy * (sample_bytes(problem, points, solver) + base)

    have, _ = available_memory()
    hint = ""
    if have is not None and need(big) > have:
        lo, hi = 10, big  # bisect for the largest --points that fits with these workers
        while hi - lo > max(1, lo // 100):
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if need(mid) <= have else (lo, mid)
        hint = f"use --points {lo} or fewer" + (", or fewer --workers" if busy > 1 else "")
    check_memory(need(big), f"generate {problem}: {busy} sample(s) of {big} points at a time "
                            f"({busy} worker{'s' if busy > 1 else ''})", hint)


def generate(problem: str, out, n: int, points=2000, domains=None, seed: int = 0,
             workers: int = 2, test_fraction: float = 0.0, remesh: bool = False,
             progress: bool = True, command: list | None = None, **params) -> dict:
    """Generate (or resume) a dataset; returns the manifest (also written to OUT/manifest.json).

    Args:
        problem: one of ``darcy``, ``ns``, ``poisson3d``, ``swe``.
        out: output folder.
        n: number of samples.
        points: nodes per sample, an int or a list (sizes are cycled, see the module docstring).
        domains: domain families (list or comma string); default: the problem's defaults.
        seed: base seed; sample i uses ``default_rng([seed, i])``.
        workers: processes (default 2; 1 runs in this process).
        test_fraction: fraction of samples written to ``test/`` (default 0: all in ``train/``).
        remesh: give every sample of a fixed-geometry family its own mesh (default False).
        progress: show a progress bar (default True; a line per ~10% when stderr is not a
            terminal).
        command: the command line, recorded in the manifest.
        **params: solver parameters overriding the problem's defaults.

    With ``workers > 1`` the pool uses the ``spawn`` start method (fresh interpreters, so BLAS
    runs one thread per worker): a script calling this must guard its entry point with
    ``if __name__ == "__main__":``, as usual for multiprocessing.
    """
    if problem not in PROBLEMS:
        raise DataError(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")
    spec = PROBLEMS[problem]
    if int(n) < 1:
        raise DataError(f"--n must be >= 1, got {n}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise DataError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    sizes = [int(p) for p in _as_list(points, "--points")]
    if min(sizes) < 10:
        raise DataError(f"--points must be >= 10, got {min(sizes)}")
    fams = _as_list(domains if domains is not None else list(spec.default_domains), "--domains")
    bad = [f for f in fams if f not in spec.domains]
    if bad:
        raise DataError(f"unknown domain(s) {', '.join(bad)} for {problem}; "
                        f"choose from {', '.join(spec.domains)}")
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise DataError(f"unknown parameter(s) for {problem}: {', '.join(unknown)}")
    solver = {**spec.defaults, **params}
    n = int(n)
    _check_memory(problem, n, sizes, solver, workers)
    out = Path(out)
    n_test = int(round(float(test_fraction) * n))
    recipe = {"problem": problem, "seed": int(seed), "points": sizes, "domains": fams,
              "remesh": bool(remesh), "params": solver}
    mpath = out / MANIFEST
    if mpath.exists():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{mpath}: unreadable manifest ({exc})") from exc
        old_recipe = {k: old.get(k) for k in recipe}
        if old_recipe != recipe:
            diff = [k for k in recipe if old_recipe[k] != recipe[k]]
            raise DataError(f"{mpath}: {out} holds a dataset made with a different recipe "
                            f"({', '.join(diff)} differ); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(n):
        split = "test" if i >= n - n_test else "train"
        tasks.append({"problem": problem, "index": i, "seed": int(seed), "out": str(out),
                      "file": f"{split}/sample_{i:06d}.vtu", "split": split,
                      "family": fams[i % len(fams)],
                      "n_points": sizes[(i // len(fams)) % len(sizes)],
                      "params": solver, "remesh": bool(remesh),
                      "fields": list(spec.inputs + spec.targets)})
    from graphop.data.progress import progress as _progress

    t0 = time.perf_counter()
    records = []
    bar = _progress(total=n, desc=f"generate {problem}", unit="sample", enabled=progress,
                    file=sys.stderr)
    if workers <= 1:
        for t in tasks:
            records.append(_work(t))
            bar.update()
    else:
        import multiprocessing as mp

        # BLAS threads per worker: read by numpy at import in the spawned children
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                 "MKL_NUM_THREADS")}
        os.environ.update({k: "1" for k in saved})
        try:
            ctx = mp.get_context("spawn")
            with ctx.Pool(int(workers), initializer=_init_worker) as pool:
                chunk = max(1, min(16, n // (8 * int(workers))))
                for rec in pool.imap_unordered(_work, tasks, chunksize=chunk):
                    records.append(rec)
                    bar.update()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    bar.close()
    elapsed = time.perf_counter() - t0
    records.sort(key=lambda r: r["index"])
    skipped = sum(r.pop("skipped") for r in records)
    from graphop import __version__

    manifest = {"format": FORMAT, **recipe, "n": n, "test_fraction": float(test_fraction),
                "dim": spec.dim, "inputs": list(spec.inputs), "targets": list(spec.targets),
                "periodic": spec.periodic, "command": command,
                "counts": {"train": n - n_test, "test": n_test},
                "graphop_version": __version__, "samples": records}
    tmp = mpath.with_name(f".{MANIFEST}.tmp{os.getpid()}")   # per process: two writers never share it
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mpath)
    manifest["_stats"] = {"elapsed_s": elapsed, "skipped": skipped, "made": n - skipped}
    return manifest
