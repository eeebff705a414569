"""``graphop experiment NAME [--quick] [--list]``: run an experiment of ``experiments/``."""
from __future__ import annotations

from pathlib import Path

NAME = "experiment"
HELP = "run an experiment of experiments/<NAME>/config.yaml (train, evaluate, tables, figures)"
DESCRIPTION = """Generate the datasets an experiment needs (under datasets/experiments/, reused
when the recipe is unchanged), train every variant for every seed, evaluate on every test set and
write experiments/NAME/results.md, results.json and PNG figures. --quick runs the config's small
'quick' section (minutes on a laptop CPU) and writes results-quick.* instead. Training uses one
torch thread unless the global --threads flag says otherwise."""


def _root(arg) -> Path:
    if arg:
        return Path(arg)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "experiments").is_dir():
            return base / "experiments"
    return Path.cwd() / "experiments"


def add_arguments(p) -> None:
    p.add_argument("name", nargs="?", help="experiment name (a folder of experiments/)")
    p.add_argument("--quick", action="store_true", help="run the small 'quick' variant")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--root", help="experiments folder (default: ./experiments)")
    p.add_argument("--workers", type=int, default=2, help="data generation processes (default 2)")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs at once, each in its own process (default: the CPU cores, "
                        "at most 4; 1 trains in this process and streams its log)")
    p.add_argument("--variants", help="comma-separated variants to run (default: all of the "
                                        "config's); the report names the ones left out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from graphop.errors import GraphopError
    from graphop.experiments.runner import default_jobs, list_experiments, run_experiment

    if getattr(args, "threads", None) is None:
        import torch

        # experiment meshes are small: one thread per process is nearly as fast as two on an
        # idle machine and never stalls on a busy one (graphop --threads N experiment overrides)
        torch.set_num_threads(1)
    root = _root(args.root)
    if args.list:
        for name, desc in list_experiments(root):
            print(f"{name:28s} {desc}")
        return 0
    if not args.name:
        raise GraphopError("give an experiment NAME (see graphop experiment --list)")
    folder = root / args.name
    if not (folder / "config.yaml").is_file():
        names = ", ".join(n for n, _ in list_experiments(root)) or "none"
        raise GraphopError(f"no experiment {args.name!r} in {root} (available: {names})")
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise GraphopError(f"--jobs must be >= 1, got {jobs}")
    res = run_experiment(folder, quick=args.quick, workers=args.workers, device=args.device,
                         progress=not args.quiet, jobs=jobs,
                         variants=[v for v in (args.variants or "").split(",") if v.strip()] or None)
    sfx = "-quick" if args.quick else ""
    print(f"written: {folder}/results{sfx}.md, results{sfx}.json, "
          + ", ".join(Path(p).name for p in res["figures"].values()))
    return 0
