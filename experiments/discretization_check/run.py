"""Does a trained model give the same function on every mesh? A check on trained checkpoints.

Takes the models trained by a quick Darcy experiment (default ``graphop experiment
generalization_meshtype --quick``: Darcy on irregular Delaunay meshes of the unit square;
``ablation_darcy`` gives one model per branch set; final-epoch checkpoints ``last.pt``) and feeds
each the same three Darcy inputs a = threshold(psi) (psi a Gaussian random field, drawn as in
the generator) on meshes of several kinds. Each output is compared with the same model's
output on a 16,000-point Delaunay reference mesh, linearly interpolated to the test mesh's
points: a quadrature-weighted relative L2 difference. No solver is involved: this measures how
much a model's prediction depends on the mesh, not how accurate it is. Usage (a few minutes
on one CPU core, after the quick experiment)::

    python experiments/discretization_check/run.py [EXPERIMENT]   # writes results-EXPERIMENT.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import LinearNDInterpolator

from graphop.training.checkpoint import load_trained_model
from graphop.data.darcy import DARCY_GRF
from graphop.data.grf import threshold
from graphop.data.domains_random import mesh_domain as random_mesh
from graphop.geometry.domains import mesh_domain
from graphop.geometry.mesh import Mesh

HERE = Path(__file__).resolve().parent
N_INPUTS = 3
REF = "delaunay 16000 (reference)"


def meshes() -> dict:
    rng = np.random.default_rng(5)
    out = {}
    for n in (500, 1000, 4000):
        pts, tris = random_mesh("square", n, rng)
        out[f"delaunay {n}"] = Mesh(pts, {"triangle": tris})
    out["structured quad 1024"] = mesh_domain("square", 1024, structured="quad")
    out["perturbed 0.45 1000"] = mesh_domain("square", 1000, seed=3, perturb=0.45)
    return out


def sample(mesh: Mesh, psi, uniform: bool):
    d = mesh.to_data(fields=[])
    a = threshold(psi(mesh.points[:, :2]), 12.0, 3.0)
    d.x = torch.as_tensor(a, dtype=torch.float32)[:, None]
    if uniform:
        d.weight = torch.full_like(d.weight, float(d.weight.sum()) / d.weight.numel())
    return d


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="generalization_meshtype",
                    help="a Darcy experiment whose quick run has finished")
    args = ap.parse_args()
    runs = HERE.parents[1] / "runs" / "experiments" / f"{args.experiment}-quick"
    torch.set_num_threads(1)
    t0 = time.time()
    rng = np.random.default_rng(2024)
    psis = [DARCY_GRF.sample(rng) for _ in range(N_INPUTS)]
    pts, tris = random_mesh("square", 16000, np.random.default_rng(9))
    ref_mesh, tests = Mesh(pts, {"triangle": tris}), meshes()
    rows, peaks = {}, {}
    for ckpt in sorted(runs.glob("*-s*/last.pt")):
        variant = ckpt.parent.name.rsplit("-s", 1)[0]
        model, norm, _ = load_trained_model(ckpt)
        uniform = variant.endswith("uniform_w")
        vals = {name: [] for name in tests}
        peak = {name: [] for name in [*tests, REF]}
        for psi in psis:
            def run(mesh):
                return norm.decode(model(norm.encode(sample(mesh, psi, uniform)))
                                   ).double().numpy()[:, 0]
            y_ref = run(ref_mesh)
            peak[REF].append(float(np.abs(y_ref).max()))
            interp = LinearNDInterpolator(ref_mesh.points[:, :2], y_ref)
            for name, mesh in tests.items():
                y, want = run(mesh), interp(mesh.points[:, :2])
                peak[name].append(float(np.abs(y).max()))
                ok = np.isfinite(want)
                w = mesh.weights[ok]
                vals[name].append(float(np.sqrt((w * (y[ok] - want[ok]) ** 2).sum()
                                                / (w * want[ok] ** 2).sum())))
        key = f"{variant} ({ckpt.parent.name.rsplit('-', 1)[-1]})"
        rows[key] = {k: float(np.mean(v)) for k, v in vals.items()}
        peaks[key] = {k: float(np.mean(v)) for k, v in peak.items()}
        print(key, {k: f"{v:.4f}" for k, v in rows[key].items()}, flush=True)
    if not rows:
        raise SystemExit(f"no checkpoints under {runs}: run "
                         f"`graphop experiment {args.experiment} --quick` first")
    names = list(tests)
    lines = ["# Discretisation check of trained models", "",
             f"Produced by `python experiments/discretization_check/run.py {args.experiment}` in "
             f"{time.time() - t0:.0f} s (one CPU thread) from the final-epoch checkpoints of "
             f"`graphop experiment {args.experiment} --quick` (Darcy, trained on ~1000-point "
             "irregular Delaunay meshes). Test meshes: the unit square. Entry: relative L2 difference "
             "(quadrature-weighted) between a model's output on the test mesh and its own output "
             "on a 16,000-point Delaunay mesh, interpolated to the test points; mean over "
             f"{N_INPUTS} Darcy inputs. Small = the model computes the same function on that "
             "mesh as on a fine one.", "",
             "| model (seed) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, vals in rows.items():
        lines.append(f"| {key} | " + " | ".join(f"{vals[n]:.4f}" for n in names) + " |")
    pnames = [*names, REF]
    lines += ["", "Largest |output| on each mesh (mean over the inputs), relative to the training-kind "
              "mesh (delaunay 1000). The solution u is bounded independently of the mesh, so a "
              "ratio far above 1 on a fine mesh means the model's output grows under refinement.",
              "", "| model (seed) | " + " | ".join(pnames) + " |", "|---|" + "---|" * len(pnames)]
    for key, vals in peaks.items():
        base = vals["delaunay 1000"]
        lines.append(f"| {key} | " + " | ".join(f"{vals[n] / base:.2f}" for n in pnames) + " |")
    out = HERE / f"results-{args.experiment}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
