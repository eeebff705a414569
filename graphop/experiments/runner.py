"""The experiment runner: ``graphop experiment NAME [--quick]``.

An experiment is a folder ``experiments/<name>/`` holding ``config.yaml``::

    description: what the experiment measures
    problem: darcy                      # darcy | ns | poisson3d
    inputs: [a]
    targets: [u]
    params: {}                          # solver parameters of graphop.data.generate
    seeds: [0, 1]                       # one training run per variant and seed
    train: {n: 64, points: 2000, domains: [square, disk, lshape], seed: 0}
    tests:                              # name -> set spec (graphop.experiments.sets)
      in_distribution: {n: 16, points: 2000, seed: 1000}
      cloud: {from: in_distribution, point_cloud: true}
    training: {epochs: 30, batch_size: 4, lr: 1.0e-3}   # TrainConfig keys
    budget: {reference: full, tolerance: 0.1}           # equal parameter counts (optional)
    variants:
      full: {model: {name: local_gno, width: 32}}
      global: {model: {name: local_gno, branches: [global]}, tune: width}
      gnn: {model: {name: gnn}, tune: hidden, uniform_weights: false}
      full_aug: {model: {name: local_gno, width: 32}, training: {augment: subsample}}
    compare: global                     # report the change of every variant against this one
    figures: {resolution: [test names in order], sample: in_distribution}
    quick: {...}                        # deep-merged over the above for --quick

For every variant and seed the runner trains with :class:`graphop.training.Trainer` (the final
model, no checkpoint selection on test data), evaluates the quadrature-weighted relative L2
error on every test set, and aggregates mean +- std over seeds (std with ddof=1 when there are
two or more seeds). Parameter budgets: a variant with ``tune: KEY`` gets the integer value of
``model.KEY`` whose parameter count is closest to the reference variant's
(:func:`match_parameters`); the run stops with a ConfigError when the best count is more than
``tolerance`` away. Outputs (``results-quick.*`` for ``--quick``): ``results.md``,
``results.json`` (commit, config, per-run numbers, parameter counts, wall times) and
``errors.png``, ``error_vs_resolution.png``, ``sample_prediction.png``.
"""
from __future__ import annotations

import copy
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from graphop.errors import ConfigError, GraphopError
from graphop.layers.sparse import to_device

__all__ = ["load_experiment", "validate_experiment", "match_parameters", "count_parameters",
           "run_experiment", "list_experiments", "experiment_data", "EXPERIMENT_KEYS",
           "VARIANT_KEYS"]

EXPERIMENT_KEYS = {"description", "problem", "inputs", "targets", "params", "seeds", "train",
                   "tests", "training", "budget", "variants", "compare", "figures", "quick"}
VARIANT_KEYS = {"model", "tune", "uniform_weights", "training"}
BUDGET_KEYS = {"reference", "target", "tolerance"}
FIGURE_KEYS = {"resolution", "sample"}
TRAINING_RESERVED = {"data", "inputs", "targets", "model", "seed", "out"}


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: dicts merge recursively, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _keys(where: str, d, valid) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    bad = sorted(set(d) - set(valid))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}")


def _mesh_spec(where: str, spec: dict) -> None:
    """The ``mesh`` option of a set spec: known keys; a nested grid (``solve_points``) that nests."""
    from graphop.experiments.sets import MESH_KEYS, nested_grid_sizes

    if "mesh" not in spec:
        return
    _keys(f"{where}.mesh", spec["mesh"], MESH_KEYS)
    if spec["mesh"].get("solve_points") is not None:
        nested_grid_sizes(spec.get("points"), spec["mesh"], f"{where}.mesh")


def validate_experiment(cfg: dict, where: str = "experiment") -> dict:
    """Check an experiment config (after the quick merge); returns it. Unknown keys, missing
    sections and dangling references raise :class:`ConfigError` naming them."""
    from graphop.training.config import TrainConfig
    from graphop.data.generate import PROBLEMS
    from graphop.experiments.sets import TEST_KEYS

    _keys(where, cfg, EXPERIMENT_KEYS)
    for k in ("problem", "targets", "train", "tests", "variants", "seeds"):
        if k not in cfg:
            raise ConfigError(f"{where}: missing key {k!r}")
    if cfg["problem"] not in PROBLEMS:
        raise ConfigError(f"{where}: unknown problem {cfg['problem']!r}; choose from {', '.join(PROBLEMS)}")
    seeds = cfg["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    _keys(f"{where}: train", cfg["train"], TEST_KEYS - {"from", "point_cloud"})
    _mesh_spec(f"{where}: train", cfg["train"])
    tests = cfg["tests"]
    _keys(f"{where}: tests", tests, tests.keys() if isinstance(tests, dict) else ())
    if not tests:
        raise ConfigError(f"{where}: tests must name at least one test set")
    for name, spec in tests.items():
        _keys(f"{where}: tests.{name}", spec, TEST_KEYS)
        if "from" in spec:
            if spec["from"] not in tests or "from" in tests[spec["from"]]:
                raise ConfigError(f"{where}: tests.{name}.from must name a generated test set, "
                                  f"got {spec['from']!r}")
        elif "n" not in spec or "points" not in spec:
            raise ConfigError(f"{where}: tests.{name} needs n and points (or from)")
        _mesh_spec(f"{where}: tests.{name}", spec)
    training = cfg.get("training") or {}
    _keys(f"{where}: training", training, set(TrainConfig.keys()) - TRAINING_RESERVED)
    variants = cfg["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{where}: variants must map names to {{model: ...}}")
    for name, v in variants.items():
        _keys(f"{where}: variants.{name}", v, VARIANT_KEYS)
        if not isinstance(v.get("model"), dict) or "name" not in v["model"]:
            raise ConfigError(f"{where}: variants.{name}.model must be a dict with a 'name'")
        # a variant's own training keys (e.g. augment) override the experiment's
        _keys(f"{where}: variants.{name}.training", v.get("training") or {},
              set(TrainConfig.keys()) - TRAINING_RESERVED)
    budget = cfg.get("budget")
    if budget is not None:
        _keys(f"{where}: budget", budget, BUDGET_KEYS)
        ref = budget.get("reference")
        if ref is not None and ref not in variants:
            raise ConfigError(f"{where}: budget.reference {ref!r} is not a variant")
        if ref is None and "target" not in budget:
            raise ConfigError(f"{where}: budget needs a reference variant or a target count")
    if cfg.get("compare") is not None and cfg["compare"] not in variants:
        raise ConfigError(f"{where}: compare {cfg['compare']!r} is not a variant")
    figures = cfg.get("figures") or {}
    _keys(f"{where}: figures", figures, FIGURE_KEYS)
    for t in list(figures.get("resolution") or []) + [figures.get("sample")]:
        if t is not None and t not in tests:
            raise ConfigError(f"{where}: figures refer to unknown test set {t!r}")
    return cfg


def load_experiment(path, quick: bool = False, variants=None) -> dict:
    """Read ``config.yaml`` (a file or an experiment folder), apply ``quick`` and validate.

    ``variants`` (names) keeps only those variants, in the config's order; the parameter budget's
    reference must stay among them, and a dropped ``compare`` variant drops the comparison. The
    config's full list is kept under ``"variants_in_config"`` so the report can say what ran."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: experiment config not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from exc
    validate_experiment(raw, str(path))
    if quick:
        if "quick" not in raw:
            raise ConfigError(f"{path}: no 'quick' section")
        cfg = _merge({k: v for k, v in raw.items() if k != "quick"}, raw["quick"])
        validate_experiment(cfg, f"{path} (quick)")
    else:
        cfg = {k: v for k, v in raw.items() if k != "quick"}
    if variants:
        names = [str(v) for v in variants]
        unknown = [v for v in names if v not in cfg["variants"]]
        if unknown:
            raise ConfigError(f"{path}: no variant {', '.join(map(repr, unknown))} (variants: "
                              f"{', '.join(cfg['variants'])})")
        ref = (cfg.get("budget") or {}).get("reference")
        if ref is not None and "target" not in cfg["budget"] and ref not in names:
            raise ConfigError(f"{path}: the selected variants must include {ref!r}, the reference "
                              f"of the parameter budget")
        cfg["variants_in_config"] = list(cfg["variants"])
        cfg["variants"] = {k: v for k, v in cfg["variants"].items() if k in names}
        if cfg.get("compare") not in cfg["variants"]:
            cfg.pop("compare", None)
    return cfg


def list_experiments(root) -> list[tuple[str, str]]:
    """(name, description) of every ``root/<name>/config.yaml``."""
    out = []
    for p in sorted(Path(root).glob("*/config.yaml")):
        try:
            desc = (yaml.safe_load(p.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(invalid YAML)"
        out.append((p.parent.name, " ".join(str(desc).split())))
    return out


# ---------------------------------------------------------------------------- parameter budget
def count_parameters(model_cfg: dict) -> int:
    """Number of parameters of ``build_model(model_cfg)`` (a complex entry counts once)."""
    from graphop.models import build_model

    return int(sum(p.numel() for p in build_model(model_cfg).parameters()))


def match_parameters(model_cfg: dict, key: str, target: int, tolerance: float = 0.1,
                     lo: int = 1, hi: int = 1024) -> tuple[dict, int]:
    """The integer ``model_cfg[key]`` in [lo, hi] whose parameter count is closest to
    ``target`` (doubling, then bisection; counts grow with ``key``). Returns (config, count); raises
    ConfigError when the closest count misses ``target`` by more than ``tolerance``."""
    def count(v):
        return count_parameters({**model_cfg, key: int(v)})

    top = max(lo, 2)  # doubling first: never build a model far larger than the target
    while top < hi and count(top) < target:
        top = min(hi, 2 * top)
    if count(top) < target:
        best = top
    else:
        a, b = lo, top  # invariant: count(b) >= target
        while b - a > 1:
            m = (a + b) // 2
            if count(m) >= target:
                b = m
            else:
                a = m
        best = min((a, b), key=lambda v: (abs(count(v) - target), v))
    n = count(best)
    if abs(n - target) > tolerance * target:
        raise ConfigError(f"cannot match {target:,} parameters with {model_cfg.get('name')}.{key} "
                          f"in [{lo}, {hi}]: closest is {key}={best} with {n:,} "
                          f"({100 * (n - target) / target:+.1f}%, tolerance {100 * tolerance:.0f}%)")
    return {**model_cfg, key: int(best)}, n


def _model_config(variant: dict, sample) -> dict:
    """The variant's model config with channels, dim and periodic filled in from the data (as
    the Trainer does)."""
    from graphop.models import MODELS, model_arguments

    mc = dict(variant["model"])
    x = getattr(sample, "x", None)
    mc["in_channels"] = 0 if x is None else int(x.reshape(x.shape[0], -1).shape[1])
    mc["out_channels"] = int(sample.y.reshape(sample.y.shape[0], -1).shape[1])
    if mc["name"] not in MODELS:
        raise ConfigError(f"unknown model {mc['name']!r}; available: {', '.join(sorted(MODELS))}")
    acc = model_arguments(mc["name"])
    if "dim" in acc and "dim" not in mc and "latent_shape" not in mc:
        mc["dim"] = int(sample.pos.shape[1])
    if "periodic" in acc and "periodic" not in mc:
        mc["periodic"] = getattr(sample, "periodic", None) is not None
    return mc


def resolve_models(cfg: dict, sample) -> dict:
    """{variant: (model config, parameter count)} with budgets matched."""
    out = {name: _model_config(v, sample) for name, v in cfg["variants"].items()}
    budget = cfg.get("budget")
    counts = {name: count_parameters(mc) for name, mc in out.items()}
    if budget:
        tol = float(budget.get("tolerance", 0.1))
        target = int(budget["target"]) if "target" in budget else counts[budget["reference"]]
        for name, v in cfg["variants"].items():
            if v.get("tune"):
                out[name], counts[name] = match_parameters(out[name], v["tune"], target, tol)
            elif abs(counts[name] - target) > tol * target:
                raise ConfigError(f"variant {name!r} has {counts[name]:,} parameters, more than "
                                  f"{100 * tol:.0f}% from the budget {target:,}; give it 'tune: width'")
    return {name: (out[name], counts[name]) for name in out}


# ---------------------------------------------------------------------------- running
def git_commit(cwd=None) -> str | None:
    """HEAD of the repository at ``cwd``, with ``-dirty`` appended when tracked files differ
    from it (so results never claim a commit that does not hold the code that made them)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        r = git("rev-parse", "HEAD")
        if r.returncode != 0 or not r.stdout.strip():
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() + ("-dirty" if dirty else "")


def evaluate_sets(model, normalizer, sets: dict, wrap=lambda ds: ds) -> dict:
    """A run's record of every test set: ``{name: {rel_l2 (mean), median, max, n_samples,
    per_sample}}`` from :func:`evaluate_errors` on ``wrap(set)``, with the operator cache
    cleared before each set (test meshes never repeat across sets)."""
    from graphop.layers.sparse import operator_cache

    tests = {}
    for tname, ds in sets.items():
        operator_cache.clear()
        e = evaluate_errors(model, normalizer, wrap(ds))
        tests[tname] = {"rel_l2": float(e.mean()), "median": float(np.median(e)),
                        "max": float(e.max()), "n_samples": int(len(e)),
                        "per_sample": [float(x) for x in e]}
    return tests


@torch.no_grad()
def evaluate_errors(model, normalizer, dataset, max_points: int = 16384) -> np.ndarray:
    """Relative L2 error of every sample, with the true quadrature weights (``weight_true``
    when the dataset is wrapped by UniformWeights). Samples go through the model in batches of
    at most ``max_points`` points (one sample when it alone is larger), so the operators of a
    batch of large meshes are never built at once."""
    from torch_geometric.data import Batch

    from graphop.training.metrics import relative_l2

    model.eval()
    dev = next(model.parameters()).device
    errs, group, count = [], [], 0

    def flush():
        batch = to_device(Batch.from_data_list(group), dev)
        pred = normalizer.decode(model(normalizer.encode(batch)))
        w = getattr(batch, "weight_true", None)
        w = batch.weight if w is None else w
        errs.append(relative_l2(pred, batch.y.to(pred.dtype), w, batch.batch,
                                batch.num_graphs).double().cpu())

    for i in range(len(dataset)):
        data = dataset[i]
        n = int(data.pos.shape[0])
        if group and count + n > max_points:
            flush()
            group, count = [], 0
        group.append(data)
        count += n
    if group:
        flush()
    return torch.cat(errs).numpy()


def _split(n: int, fraction: float, seed: int):
    n_val = max(1, int(round(fraction * n)))
    if n - n_val < 1:
        raise ConfigError(f"{n} training samples cannot be split with val_fraction={fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n_seeds": int(len(v)), "values": [float(x) for x in v]}


def _load_data(cfg: dict, datasets_dir: Path, workers: int = 2, progress: bool = False):
    """Generate (or reuse) and load the experiment's sets: ``(train root, train set, tests,
    info)`` where ``tests`` maps test name -> dataset and ``info`` test name -> root and spec."""
    from graphop.experiments.sets import PointCloudView, build_set, load_set

    problem, params = cfg["problem"], dict(cfg.get("params") or {})
    inputs, targets = list(cfg.get("inputs") or []), list(cfg["targets"])
    train_root = build_set(problem, cfg["train"], params, datasets_dir, workers, progress)
    train_all = load_set(train_root, inputs, targets)
    sets, info = {}, {}
    for tname, spec in cfg["tests"].items():
        if "from" not in spec:
            root = build_set(problem, spec, params, datasets_dir, workers, progress)
            sets[tname] = load_set(root, inputs, targets)
            info[tname] = {"root": str(root), "spec": spec}
    for tname, spec in cfg["tests"].items():
        if "from" in spec:
            sets[tname] = PointCloudView(sets[spec["from"]])
            info[tname] = {"root": info[spec["from"]]["root"], "spec": spec}
    return train_root, train_all, sets, info


# data loaded once per process and reused by every run it trains (key: config + datasets dir)
_DATA_CACHE: dict = {}


def experiment_data(cfg: dict, datasets_dir: Path, workers: int = 2, progress: bool = False):
    """An experiment's data sets, generated on the first call (or reused from
    ``datasets_dir``) and kept for the process: ``(train root, train set, tests, info)``,
    ``tests`` mapping each test name to its dataset and ``info`` each to its root and spec.
    ``cfg``: :func:`load_experiment`'s dict. The runner trains from it, and analysis scripts
    that evaluate finished runs on an experiment's test sets load them with it."""
    key = (yaml.safe_dump(cfg, sort_keys=True), str(datasets_dir))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = _load_data(cfg, datasets_dir, workers, progress)
    return _DATA_CACHE[key]


def _weights_wrapper(variant: dict):
    """UniformWeights for a ``uniform_weights`` variant, else the identity."""
    from graphop.experiments.sets import UniformWeights

    return UniformWeights if variant.get("uniform_weights", False) else (lambda d: d)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(int(threads))
    try:  # Linux: die with the parent, so a killed experiment leaves no training orphans
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _train_run(job: dict):
    """Train one (variant, seed) and evaluate it on every test set. Runs in the calling process
    (``jobs=1``) or in a spawned worker, where the trainer's output goes to ``RUN_DIR.log``.
    Returns ``(run record, (model state, normalizer, model config) or None)``."""
    import contextlib

    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    cfg, vname, seed = job["cfg"], job["variant"], int(job["seed"])
    train_root, train_all, sets, _ = experiment_data(cfg, Path(job["datasets_dir"]))
    variant, mc, n_par = cfg["variants"][vname], job["model"], job["n_parameters"]
    uniform = bool(variant.get("uniform_weights", False))
    wrap = _weights_wrapper(variant)
    training = {**(cfg.get("training") or {}), **(variant.get("training") or {})}
    val_fraction = float(training.pop("val_fraction", 0.1))
    tr_idx, va_idx = _split(len(train_all), val_fraction, seed)
    train = wrap(torch.utils.data.Subset(train_all, tr_idx))
    val = wrap(torch.utils.data.Subset(train_all, va_idx))
    out = Path(job["runs_dir"]) / f"{vname}-s{seed}"
    tc = TrainConfig.from_dict({**training, "data": str(train_root),
                                "inputs": list(cfg.get("inputs") or []),
                                "targets": list(cfg["targets"]), "model": mc, "seed": seed,
                                "out": str(out), "device": job["device"],
                                "progress": job["progress"], "val_fraction": val_fraction})
    with contextlib.ExitStack() as stack:
        if job["log_file"]:
            out.parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(f"{out}.log", "w"))
            stack.enter_context(contextlib.redirect_stdout(fh))
            stack.enter_context(contextlib.redirect_stderr(fh))
        t1 = time.perf_counter()
        # the trainer seeds with ``seed``, chooses the 'auto' supports from the training meshes
        # and builds the model from ``mc``
        trainer = Trainer(tc, datasets=(train, val), overwrite=True)
        summary = trainer.fit()
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        tests = evaluate_sets(trainer.module, trainer.normalizer, sets, wrap)
        eval_s = time.perf_counter() - t2
    run = {"variant": vname, "seed": seed, "n_parameters": n_par, "uniform_weights": uniform,
           "epochs": summary["epochs_completed"], "final_train_loss": summary["final_train_loss"],
           "final_val_rel_l2": summary["final_val_rel_l2"], "train_wall_s": train_s,
           "eval_wall_s": eval_s, "tests": tests}
    kept = None
    if job["keep"]:
        state = {k: v.detach().cpu() for k, v in trainer.module.state_dict().items()}
        kept = (state, trainer.normalizer, trainer.model_config)
    return run, kept


def default_jobs() -> int:
    """Training processes run at once by default: the CPU cores this process may use, at most 4
    (each process trains with one torch thread unless told otherwise)."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def run_experiment(folder, quick: bool = False, datasets_dir=None, runs_dir=None,
                   workers: int = 2, device: str = "cpu", progress: bool = True,
                   log=print, jobs: int = 1, variants=None) -> dict:
    """Run the experiment in ``folder`` (see the module docstring); returns the results dict
    (also written to ``folder/results[-quick].json`` with the markdown and figures).

    ``jobs`` > 1 trains that many (variant, seed) runs at once in spawned processes, each with
    this process's torch thread count; every run is seeded the same way as with ``jobs=1``, and
    each worker's training log goes to ``RUNS_DIR/<variant>-s<seed>.log``. ``variants`` runs only
    those variants (see :func:`load_experiment`)."""
    import concurrent.futures
    import multiprocessing

    from graphop.experiments.report import write_report
    from graphop.models import build_model

    if int(jobs) < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    folder = Path(folder)
    cfg = load_experiment(folder, quick=quick, variants=variants)
    name = folder.name + ("-quick" if quick else "")
    repo = folder.resolve().parent.parent
    datasets_dir = Path(datasets_dir) if datasets_dir else repo / "datasets" / "experiments"
    runs_dir = Path(runs_dir) if runs_dir else repo / "runs" / "experiments" / name
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    commit = git_commit(repo)  # the code this run starts with

    log(f"[{name}] data")
    t0 = time.perf_counter()
    _DATA_CACHE.clear()   # load afresh; spawned workers load the same sets by the same key
    train_root, train_all, sets, info = experiment_data(cfg, datasets_dir, workers, progress)
    for tname, ds in sets.items():
        npts = [int(ds[i].pos.shape[0]) for i in range(len(ds))]
        info[tname].update(n_samples=len(ds), mean_points=float(np.mean(npts)),
                           min_points=int(min(npts)), max_points=int(max(npts)))
    data_s = time.perf_counter() - t0
    train_pts = [int(train_all[i].pos.shape[0]) for i in range(len(train_all))]

    models = resolve_models(cfg, train_all[0])
    order = [(v, int(s)) for v in cfg["variants"] for s in cfg["seeds"]]
    jobs = min(int(jobs), len(order))
    base = {"cfg": cfg, "datasets_dir": str(datasets_dir), "runs_dir": str(runs_dir),
            "device": device, "progress": progress and jobs == 1, "log_file": jobs > 1}
    todo = [{**base, "variant": v, "seed": s, "model": models[v][0],
             "n_parameters": models[v][1], "keep": s == int(cfg["seeds"][0])} for v, s in order]
    done = {}

    def finished(job, result):
        run = result[0]
        done[(job["variant"], job["seed"])] = result
        log(f"[{name}] {job['variant']} seed {job['seed']}: "
            + ", ".join(f"{t}: {r['rel_l2']:.4f}" for t, r in run["tests"].items())
            + f"  (train {run['train_wall_s']:.0f} s)")

    if jobs == 1:
        for job in todo:
            log(f"[{name}] train {job['variant']} seed {job['seed']} "
                f"({job['n_parameters']:,} parameters)")
            finished(job, _train_run(job))
    else:
        log(f"[{name}] {len(todo)} runs, {jobs} at a time; training logs in {runs_dir}/*.log")
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                                    initargs=(torch.get_num_threads(),)) as ex:
            futs = {ex.submit(_train_run, job): job for job in todo}
            try:
                for fut in concurrent.futures.as_completed(futs):
                    finished(futs[fut], fut.result())
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise GraphopError(
                    f"a training process of {name} died without a Python error (most often the "
                    f"system ran out of memory; the kernel log says so). {len(done)} of "
                    f"{len(todo)} runs had finished. Rerun with fewer runs at once "
                    f"(--jobs {max(1, jobs - 1)})") from exc
    runs = [done[k][0] for k in order]
    keep = {}
    for (vname, seed) in order:
        kept = done[(vname, seed)][1]
        if kept is not None:
            model = build_model(kept[2])   # the config with the supports the run chose
            model.load_state_dict(kept[0])
            keep[vname] = (model, kept[1], _weights_wrapper(cfg["variants"][vname]))

    summary = {v: {t: _stats([r["tests"][t]["rel_l2"] for r in runs if r["variant"] == v])
                   for t in sets} for v in cfg["variants"]}
    results = {"experiment": folder.name, "quick": bool(quick), "commit": commit,
               "started": started, "wall_s": time.perf_counter() - t_start, "data_wall_s": data_s,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "jobs": jobs,
               "config": cfg,
               "train_set": {"root": str(train_root), "n_samples": len(train_all),
                             "mean_points": float(np.mean(train_pts))},
               "test_sets": info,
               "variants": {v: {"model": models[v][0], "n_parameters": models[v][1],
                                "uniform_weights": bool(cfg["variants"][v].get("uniform_weights", False))}
                            for v in cfg["variants"]},
               "runs": runs, "summary": summary}
    write_report(folder, results, sets, keep)
    return results
