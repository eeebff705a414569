"""Evaluate the trained runs of an experiment on its test sets, as the runner does
(``graphop.experiments.runner.evaluate_sets``: quadrature-weighted relative L2 of each test
sample, final-epoch model), and write the mean per (variant, seed, test set) to JSON.

For a full configuration whose runner died before writing its report: the rerun of
generalization_resolution at commit fb403f8 trained LocalGNO seeds 0 and 1 and was then killed
for memory while two workers evaluated 32,000-point meshes at once (the differential branch's
operator was built unchunked; fixed since). GINO's runs of the rerun at commit 284e080 train
the same model (the changes after it touch the differential branch only).

    python experiments/generalization_resolution/evaluate_runs.py EXPERIMENT VARIANTS SEEDS OUT.json [TESTS]
    e.g. ... generalization_resolution local_gno 0,1 /tmp/local_gno.json
         ... generalization_resolution local_gno,gino 0,1,2 /tmp/clouds.json cloud_2000,cloud_8000
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from graphop.experiments.runner import (_load_data, _weights_wrapper, evaluate_sets, git_commit,
                                        load_experiment)
from graphop.training.checkpoint import load_trained_model


def main():
    name, variants, seeds, out_path = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    seeds = [int(s) for s in seeds.split(",")]
    repo = Path(__file__).resolve().parents[2]
    torch.set_num_threads(1)
    cfg = load_experiment(repo / "experiments" / name)
    if len(sys.argv) > 5:                 # only these test sets (and the sets they are views of)
        keep = sys.argv[5].split(",")
        need = set(keep) | {cfg["tests"][t].get("from") for t in keep} - {None}
        cfg["tests"] = {t: spec for t, spec in cfg["tests"].items() if t in need}
    _, _, sets, _ = _load_data(cfg, repo / "datasets" / "experiments")
    if len(sys.argv) > 5:
        sets = {t: sets[t] for t in keep}
    out = {"experiment": name, "commit": git_commit(repo), "runs": {}}
    for v in variants:
        for s in seeds:
            model, norm, _ = load_trained_model(repo / "runs" / "experiments" / name / f"{v}-s{s}"
                                                / "last.pt")
            tests = evaluate_sets(model, norm, sets, _weights_wrapper(cfg["variants"][v]))
            res = {t: r["rel_l2"] for t, r in tests.items()}
            out["runs"][f"{v}-s{s}"] = res
            print(v, s, {t: round(x, 4) for t, x in res.items()}, flush=True)
    for v in variants:
        rows = [out["runs"][f"{v}-s{s}"] for s in seeds]
        print(v, " | ".join(f"{t} {np.mean([r[t] for r in rows]):.4f} ± "
                            f"{np.std([r[t] for r in rows], ddof=1) if len(rows) > 1 else 0:.4f}"
                            for t in rows[0]))
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
