"""Train and evaluate one (variant, seed) of an experiment exactly as ``graphop experiment``
does (same data, split, seeding, model and evaluation; ``runner._train_run`` in this process),
and print its errors as JSON. For a full configuration whose runner could not finish every run
(the rerun of generalization_resolution at commit fb403f8 died when two workers evaluated
32,000-point meshes at once and the machine ran out of memory).

    python experiments/generalization_resolution/run_one.py EXPERIMENT VARIANT SEED [OUT.json]
"""
import json
import sys
from pathlib import Path

import torch

from graphop.experiments import runner


def main():
    name, variant, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    repo = Path(__file__).resolve().parents[2]
    torch.set_num_threads(1)
    cfg = runner.load_experiment(repo / "experiments" / name)
    datasets_dir = repo / "datasets" / "experiments"
    _, train_all, _, _ = runner.experiment_data(cfg, datasets_dir)
    models = runner.resolve_models(cfg, train_all[0])
    job = {"cfg": cfg, "datasets_dir": str(datasets_dir),
           "runs_dir": str(repo / "runs" / "experiments" / name), "device": "cpu",
           "progress": False, "log_file": False, "variant": variant, "seed": seed,
           "model": models[variant][0], "n_parameters": models[variant][1], "keep": False}
    run, _ = runner._train_run(job)
    run["commit"] = runner.git_commit(repo)
    text = json.dumps(run, indent=1)
    print(text)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(text)


if __name__ == "__main__":
    main()
