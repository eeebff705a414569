"""Evaluate full-configuration ablation_ns runs on support_size_ns's test sets (1024, 4096 and
16,384-point clouds of the same problem), to compare the branch subsets at 4x coarser and 4x
finer clouds too. The ablation's own test set is the 4096-point one.

    python experiments/ablation_ns/eval_on_support_sets.py VARIANT [SEED]

Needs ``runs/experiments/ablation_ns/VARIANT-sSEED/last.pt`` (e.g. by
``generalization_resolution/run_one.py ablation_ns VARIANT SEED``); prints one JSON line.
"""
import json
import sys
from pathlib import Path

import torch


def main():
    from graphop.experiments import runner
    from graphop.training.checkpoint import load_trained_model

    variant = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[2]
    cfg = runner.load_experiment(repo / "experiments" / "support_size_ns")
    _, _, sets, _ = runner.experiment_data(cfg, repo / "datasets" / "experiments")
    run = repo / "runs" / "experiments" / "ablation_ns" / f"{variant}-s{seed}" / "last.pt"
    model, norm, _ = load_trained_model(run)
    tests = runner.evaluate_sets(model, norm, sets)
    print(json.dumps({"variant": variant, "seed": seed,
                      **{k: round(v["rel_l2"], 5) for k, v in tests.items()}}))


if __name__ == "__main__":
    main()
