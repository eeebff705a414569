"""Is the loss across the FNO Darcy grids the model's discretisation or its input's change?

For the trained models of an experiment on the nested 17 / 33 / 65 node grids (default
generalization_grid_darcy, quick or full), evaluate every test sample three ways:

* at 17 x 17 (the training grid) and at 33 x 33 / 65 x 65 with the data as stored (the
  experiment's numbers): the coefficient sampled at the finer nodes, its interfaces sharper;
* at 33 x 33 / 65 x 65 with the coefficient replaced by the bilinear interpolant of its
  17 x 17 values (``33<-17``, ``65<-17``): the same input function the training grid shows,
  given at more nodes. A model that is one function of its input on every mesh scores its
  17 x 17 error there;
* at 33 x 33 / 65 x 65 with the data as stored, counted only at the 17 x 17 nodes the grids
  share (``33@17``, ``65@17``, with the 17 x 17 quadrature weights): where the error grows,
  at the training grid's own nodes or at the new ones;
* ``interp 17->33`` / ``interp 17->65``: the exact 17 x 17 target, bilinearly interpolated to
  the finer nodes, against the finer target: how much of the solution lies between the
  training grid's nodes (a 17 x 17 error counts none of it).

It also prints, for the first samples, how far each branch's output in each block is apart
between the 17 x 17 grid and the ``33<-17`` input on the shared nodes (relative L2), so that
what the discretisation changes can be followed through the network.

    python experiments/grid_transfer/same_input_check.py [EXPERIMENT] [--quick] [--variants=A,B]

(run the experiment first: it reads ``runs/experiments/EXPERIMENT[-quick]/<variant>-s<seed>/last.pt``
and the experiment's test sets; about a minute per model on one core.)
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import RegularGridInterpolator
from torch_geometric.data import Batch

from graphop.experiments.runner import load_experiment
from graphop.experiments.sets import dataset_root, load_set
from graphop.training.checkpoint import load_trained_model
from graphop.training.metrics import relative_l2

torch.set_grad_enabled(False)
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def nodal_grid(d, n, field="x"):
    """The [n, n] array of a sample's input (or another per-point ``field``) on the n x n grid
    (index = position x (n - 1))."""
    ij = np.rint(d.pos.double().numpy() * (n - 1)).astype(int)
    out = np.zeros((n, n))
    out[ij[:, 0], ij[:, 1]] = d[field][:, 0].double().numpy()
    return out


def with_coarse_input(d_coarse, d, n):
    t = np.linspace(0, 1, n)
    f = RegularGridInterpolator((t, t), nodal_grid(d_coarse, n))
    out = d.clone()
    out.x = torch.as_tensor(f(d.pos.double().numpy()), dtype=d.x.dtype)[:, None]
    return out


def error(model, norm, d, coarse=None):
    """Relative L2 error of the model on ``d``; with ``coarse`` (a sample on a coarser nested
    grid) only at the nodes the two grids share, with the coarse grid's quadrature weights."""
    b = Batch.from_data_list([d])
    p = norm.decode(model(norm.encode(b)))
    y = b.y.to(p.dtype)
    if coarse is None:
        return float(relative_l2(p, y, b.weight, b.batch, 1)[0])
    rows = torch.as_tensor(shared_rows(coarse, d))
    return float(relative_l2(p[rows], y[rows], coarse.weight, torch.zeros_like(rows), 1)[0])


def interpolation_floor(d_coarse, d, n):
    """Relative L2 error on ``d``'s grid of the target's interpolant from the n x n nodes: what
    the coarse grid's exact nodal values leave unresolved at the new nodes."""
    t = np.linspace(0, 1, n)
    f = RegularGridInterpolator((t, t), nodal_grid(d_coarse, n, "y"))
    u = torch.as_tensor(f(d.pos.double().numpy()))[:, None]
    batch = torch.zeros(len(u), dtype=torch.long)
    return float(relative_l2(u, d.y.double(), d.weight.double(), batch, 1)[0])


def branches(model, norm, d):
    """Each block's input h and branch outputs (W h, global, DISCO, differential) [N, width]."""
    b = norm.encode(Batch.from_data_list([d]))
    h = model.lift(model._features(b))
    latent = None
    if getattr(model, "encoder", None) is not None:
        latent = (model.encoder, model.decoder, model.encoder.operator(b),
                  model.decoder.operator(b), model.periodic)
    outs = []
    for i, blk in enumerate(model.blocks):
        parts = {"h": h, "W": blk.linear(h)}
        if blk.glob is not None:
            parts["global"] = blk.glob(h, b, latent)
        if blk.disco is not None:
            parts["disco"] = blk.disco(h, b)
        if blk.diff is not None:
            parts["diff"] = blk.diff_scale * blk.diff(h, b)
        outs.append(parts)
        h = blk(h, b, latent)
        if i < len(model.blocks) - 1:
            h = model.act(h)
    outs.append({"out": model.project(h)})
    return outs


def shared_rows(d_coarse, d_fine):
    key = {tuple(np.rint(p * 64).astype(int)): i for i, p in enumerate(d_fine.pos.numpy())}
    return np.array([key[tuple(np.rint(p * 64).astype(int))] for p in d_coarse.pos.numpy()])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:]
                 if a.startswith("--variants=")), None)
    name = args[0] if args else "generalization_grid_darcy"
    cfg = load_experiment(REPO / "experiments" / name, quick=quick)
    base = REPO / "datasets" / "experiments"
    sets = {}
    for tname, spec in cfg["tests"].items():
        n = int(round(np.sqrt(spec["points"])))
        sets[n] = load_set(dataset_root(base, cfg["problem"], spec, dict(cfg.get("params") or {})),
                           cfg["inputs"], cfg["targets"])
    (n0, *fine) = sorted(sets)
    for vname in cfg["variants"]:
        if only and vname not in only:
            continue
        for seed in cfg["seeds"]:
            run = REPO / "runs" / "experiments" / (name + ("-quick" if quick else "")) / f"{vname}-s{seed}"
            if not (run / "last.pt").exists():
                print(f"{vname} seed {seed}: no checkpoint in {run}, skipped")
                continue
            model, norm, _ = load_trained_model(run / "last.pt")
            if cfg["variants"][vname]["model"].get("name") == "fno":
                continue            # the grid FNO sees the grid, not a function of the plane
            errs = {}
            for i in range(len(sets[n0])):
                d0 = sets[n0][i]
                errs.setdefault(f"{n0}", []).append(error(model, norm, d0))
                for n in fine:
                    errs.setdefault(f"{n}", []).append(error(model, norm, sets[n][i]))
                    errs.setdefault(f"{n}<-{n0}", []).append(
                        error(model, norm, with_coarse_input(d0, sets[n][i], n0)))
                    errs.setdefault(f"{n}@{n0}", []).append(error(model, norm, sets[n][i], d0))
                    errs.setdefault(f"interp {n0}->{n}", []).append(
                        interpolation_floor(d0, sets[n][i], n0))
            line = "  ".join(f"{k} {np.mean(v):.4f}" for k, v in errs.items())
            print(f"{vname} seed {seed}: {line}")
            if seed != cfg["seeds"][0]:
                continue
            gaps = {}
            for i in range(min(10, len(sets[n0]))):
                d0, d1 = sets[n0][i], with_coarse_input(sets[n0][i], sets[fine[0]][i], n0)
                rows = shared_rows(d0, d1)
                for blk, (a, b) in enumerate(zip(branches(model, norm, d0),
                                                 branches(model, norm, d1))):
                    for k in a:
                        y = b[k][rows]
                        gaps.setdefault((blk, k), []).append(float((a[k] - y).norm()
                                                                   / (y.norm() + 1e-30)))
            print(f"  {n0} vs {fine[0]}<-{n0}, relative L2 on the shared nodes: " + ", ".join(
                f"block {blk} {k} {np.mean(v):.3f}" for (blk, k), v in gaps.items()
                if k != "h" or blk > 0))


if __name__ == "__main__":
    main()
