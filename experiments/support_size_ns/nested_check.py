"""Is a trained support_size_ns model's loss on 4x finer clouds its own discretisation, and
which branch moves? For the first N samples of the full configuration's 16,384-point test
set: the model's relative L2 error on each cloud, on a nested random subset of a quarter of
its points (weights 1/P, a Monte Carlo cloud of the training density), and how much each
block's branches (hooked outputs) change at the shared points between the two for the same
input function.

    python experiments/support_size_ns/nested_check.py VARIANT [SEED] [N] [QUADRATURE]

Needs ``runs/experiments/support_size_ns/VARIANT-sSEED/last.pt`` (a full-configuration run,
e.g. by ``generalization_resolution/run_one.py``). Prints the mean over the N samples.
QUADRATURE (optional) rebuilds the trained model with another ``quadrature`` for every layer
(``cells``: the periodic triangulation of checkpoint version 4; a model trained before it
loads as ``cells-except-torus``, nodal sums on the torus), to see what the discretisation
alone changes with the same parameters.
"""
import sys
from pathlib import Path

import numpy as np
import torch


def _subset(data, idx):
    """``data`` restricted to the points ``idx``, with equal weights summing to the same measure."""
    n = data.pos.shape[0]
    out = data.clone()
    for k, v in data:
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == n:
            out[k] = v[idx]
    out.weight = torch.full((len(idx),), float(data.weight.sum()) / len(idx),
                            dtype=data.weight.dtype)
    return out


def main():
    from torch_geometric.data import Batch

    from graphop.experiments import runner
    from graphop.training.checkpoint import load_trained_model
    from graphop.training.metrics import relative_l2

    variant = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    n_samples = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[2]
    cfg = runner.load_experiment(repo / "experiments" / "support_size_ns")
    _, _, sets, _ = runner.experiment_data(cfg, repo / "datasets" / "experiments")
    run = repo / "runs" / "experiments" / "support_size_ns" / f"{variant}-s{seed}" / "last.pt"
    model, norm, ckpt = load_trained_model(run)
    if len(sys.argv) > 4:
        from graphop.models import build_model
        from graphop.training.checkpoint import load_model_state

        q = sys.argv[4]
        cfg = dict(ckpt["model_config"], quadrature=q)
        for key in ("disco_kwargs", "diff_kwargs"):
            if isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], "quadrature": q}
        model = build_model(cfg)
        load_model_state(model, ckpt)
    model.eval()
    captured = {}

    def hook(name):
        def record(module, inputs, output):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return record

    for i, block in enumerate(model.blocks):
        for branch in ("glob", "disco", "diff"):
            if getattr(block, branch, None) is not None:
                getattr(block, branch).register_forward_hook(hook(f"block {i} {branch}"))

    def error(pred, data):
        one = torch.zeros(pred.shape[0], dtype=torch.long)
        return float(relative_l2(pred, data.y, data.weight, one, 1))

    rng = np.random.default_rng(0)
    rows, moves = [], {}
    for s in range(min(n_samples, len(sets["fine_4x"]))):
        full = sets["fine_4x"][s]
        n = full.pos.shape[0]
        idx = torch.from_numpy(np.sort(rng.permutation(n)[:n // 4]))
        part = _subset(full, idx)
        with torch.no_grad():
            p_full = norm.decode(model(norm.encode(Batch.from_data_list([full]))))
            c_full = dict(captured)
            p_part = norm.decode(model(norm.encode(Batch.from_data_list([part]))))
            c_part = dict(captured)
        rows.append((error(p_full, full), error(p_part, part),
                     float((p_full[idx] - p_part).norm() / p_part.norm())))
        for k in c_part:
            moves.setdefault(k, []).append(
                float((c_full[k][idx] - c_part[k]).norm() / c_part[k].norm()))
    e_full, e_part, moved = np.mean(rows, axis=0)
    quad = model.config.get("quadrature") if hasattr(model, "config") else "?"
    print(f"{variant} seed {seed} (quadrature {quad}), {len(rows)} samples: error "
          f"{e_full:.4f} on the "
          f"{n}-point clouds, {e_part:.4f} on nested {n // 4}-point subsets; outputs at the "
          f"shared points differ by {moved:.4f}")
    for k, v in moves.items():
        print(f"  {k:15s} changes by {np.mean(v):.4f} at the shared points")


if __name__ == "__main__":
    main()
