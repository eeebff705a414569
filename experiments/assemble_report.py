"""Write an experiment's report (results.md, results.json, figures) from runs trained apart.

For a full configuration whose runs could not all be trained by one `graphop experiment`
process on this 2-core machine (runs trained by `generalization_resolution/run_one.py` beside
it, a runner stopped for time): every (variant, seed) of the config is taken, in this order,
from

1. a JSON written by `run_one.py` (``--run FILE``, repeatable): the runner's own run record;
2. ``runs/experiments/NAME/VARIANT-sSEED/`` when it holds a finished run (``summary.json``
   with every epoch of the config):
   its final-epoch ``last.pt`` evaluated with the runner's ``evaluate_sets`` on every test set
   (train time from the runner's log line when given with ``--log``, else the sum of the
   epochs' times in its ``metrics.csv``);
3. a run of an earlier report of the same experiment (``--previous results.json``), for a
   variant whose code has not changed since (say so in the README);

and left out otherwise (the report then averages the seeds it has). The report is the runner's
own (``write_report``); ``results.json`` records where each run came from under ``"sources"``.

    python experiments/assemble_report.py NAME [--run FILE ...] [--log LOG] [--previous JSON]
"""
import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from graphop.experiments import runner
from graphop.experiments.report import write_report
from graphop.training.checkpoint import load_trained_model


def _epoch_seconds(run_dir: Path) -> float:
    """The training time of a finished run: ``train_seconds`` of its summary.json, or (runs
    trained before the trainer recorded it) the sum of its epochs' ``time_s`` in metrics.csv;
    NaN without either."""
    import csv

    summary = run_dir / "summary.json"
    if summary.is_file():
        seconds = json.loads(summary.read_text()).get("train_seconds")
        if seconds is not None:
            return float(seconds)
    f = run_dir / "metrics.csv"
    if not f.is_file():
        return float("nan")
    with open(f) as fh:
        return float(sum(float(row["time_s"]) for row in csv.DictReader(fh)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--run", action="append", default=[], help="a run_one.py JSON")
    ap.add_argument("--log", help="the runner's log (for train times)")
    ap.add_argument("--previous", help="an earlier results.json of this experiment")
    ap.add_argument("--variants", help="comma-separated variants to take from --previous")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[1]
    folder = repo / "experiments" / args.name
    cfg = runner.load_experiment(folder)
    datasets_dir, runs_dir = repo / "datasets" / "experiments", repo / "runs" / "experiments" / args.name
    t0 = time.perf_counter()
    train_root, train_all, sets, info = runner.experiment_data(cfg, datasets_dir)
    for tname, ds in sets.items():
        npts = [int(ds[i].pos.shape[0]) for i in range(len(ds))]
        info[tname].update(n_samples=len(ds), mean_points=float(np.mean(npts)),
                           min_points=int(min(npts)), max_points=int(max(npts)))
    data_s = time.perf_counter() - t0
    models = runner.resolve_models(cfg, train_all[0])

    given = {}
    for f in args.run:
        r = json.loads(Path(f).read_text())
        given[(r["variant"], int(r["seed"]))] = r
    times = {}
    if args.log:
        for line in Path(args.log).read_text().splitlines():
            m = re.search(r"\] (\S+) seed (\d+): .*\(train (\d+) s\)", line)
            if m:
                times[(m.group(1), int(m.group(2)))] = float(m.group(3))
    previous = {}
    if args.previous:
        prev = json.loads(Path(args.previous).read_text())
        wanted = set(args.variants.split(",")) if args.variants else None
        for r in prev["runs"]:
            if wanted is None or r["variant"] in wanted:
                key = f"{r['variant']}-s{int(r['seed'])}"
                origin = (prev.get("sources") or {}).get(key)
                previous[(r["variant"], int(r["seed"]))] = (
                    r, f"{prev.get('commit', '?')[:7]}" + (f": {origin}" if origin else ""))

    epochs = int((cfg.get("training") or {}).get("epochs", 0))
    runs, sources, keep = [], {}, {}
    for v in cfg["variants"]:
        for s in (int(x) for x in cfg["seeds"]):
            run_dir = runs_dir / f"{v}-s{s}"
            if (v, s) in given:
                run, src = given[(v, s)], f"run_one.py at {given[(v, s)].get('commit')}"
            elif (run_dir / "summary.json").is_file() and json.loads(
                    (run_dir / "summary.json").read_text())["epochs_completed"] >= epochs:
                summ = json.loads((run_dir / "summary.json").read_text())
                model, norm, _ = load_trained_model(run_dir / "last.pt")
                t1 = time.perf_counter()
                tests = runner.evaluate_sets(model, norm, sets,
                                             runner._weights_wrapper(cfg["variants"][v]))
                run = {"variant": v, "seed": s, "n_parameters": models[v][1],
                       "uniform_weights": bool(cfg["variants"][v].get("uniform_weights", False)),
                       "epochs": summ["epochs_completed"],
                       "final_train_loss": summ["final_train_loss"],
                       "final_val_rel_l2": summ["final_val_rel_l2"],
                       "train_wall_s": times.get((v, s), _epoch_seconds(run_dir)),
                       "eval_wall_s": time.perf_counter() - t1, "tests": tests}
                src = f"checkpoint {run_dir.name}/last.pt"
            elif (v, s) in previous:
                run, commit = previous[(v, s)]
                src = f"earlier report at {commit}"   # with that report's own source
            else:
                print(f"{v} seed {s}: no run, left out")
                continue
            runs.append(run)
            sources[f"{v}-s{s}"] = src
            print(f"{v} seed {s} ({src}): " + ", ".join(
                f"{t}: {r['rel_l2']:.4f}" for t, r in run["tests"].items()), flush=True)
            if v not in keep and (run_dir / "last.pt").is_file():
                model, norm, _ = load_trained_model(run_dir / "last.pt")
                keep[v] = (model, norm, runner._weights_wrapper(cfg["variants"][v]))

    if any(v not in {r["variant"] for r in runs} for v in cfg["variants"]):
        cfg = {**cfg, "variants_in_config": list(cfg["variants"])}   # the report names the rest
    summary = {v: {t: runner._stats([r["tests"][t]["rel_l2"] for r in runs if r["variant"] == v])
                   for t in sets} for v in cfg["variants"] if any(r["variant"] == v for r in runs)}
    results = {"experiment": args.name, "quick": False, "commit": runner.git_commit(repo),
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "wall_s": float(sum(r["train_wall_s"] for r in runs
                                   if np.isfinite(r["train_wall_s"]))),
               "data_wall_s": data_s, "torch": torch.__version__, "threads": 1, "jobs": 1,
               "config": cfg,
               "train_set": {"root": str(train_root), "n_samples": len(train_all),
                             "mean_points": float(np.mean([int(train_all[i].pos.shape[0])
                                                           for i in range(len(train_all))]))},
               "test_sets": info,
               "variants": {v: {"model": models[v][0], "n_parameters": models[v][1],
                                "uniform_weights": bool(cfg["variants"][v].get("uniform_weights",
                                                                               False))}
                            for v in cfg["variants"] if v in summary},
               "runs": runs, "summary": summary, "sources": sources}
    write_report(folder, results, sets, keep)
    md = folder / "results.md"
    md.write_text(md.read_text().rstrip("\n") + "\n\n## Where each run comes from\n\n"
                  "Assembled by `experiments/assemble_report.py` (the runs were not all trained "
                  "by one `graphop experiment` process):\n\n| run | source |\n|---|---|\n"
                  + "".join(f"| {k} | {v} |\n" for k, v in sources.items()))


if __name__ == "__main__":
    main()
