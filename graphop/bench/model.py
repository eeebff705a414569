"""``graphop bench model``: the time of one training step of LocalGNO, of the global-only model
(graphop's GINO pattern) and, when available, of neuraloperator's GINO on the same geometry.

Setup (defaults): an irregular quality triangle mesh of the unit square with ``n_points`` = 20k
vertices, a batch of 8 samples sharing it, 1 input and 1 output channel, width 64, 4 layers,
a 64 x 64 latent grid over [-0.05, 1.05]^2 with 16 x 16 modes, the DISCO radius of the model
(default 0.06: about 230 neighbours per point at 20k points; ``disco_radius`` changes it). One step = zero_grad, forward,
MSE loss, backward, Adam step; the median of ``repeats`` steps after one warm-up step (which also
builds the cached sparse operators; ``build_s`` reports that first step separately).

neuraloperator's ``GINO`` (``neuralop.models.GINO``) gets the same points, latent grid, width,
modes and layers, with its GNO radii set to graphop's encoder radius (1.5 grid spacings) and its
own defaults otherwise (per-edge kernel MLPs, no open3d, no torch-scatter). It runs in-process
when ``import neuralop`` works; otherwise, if ``gino_python`` (or the environment variable
``GRAPHOP_GINO_PYTHON``, or ``GRAPHOP_NEURALOP_PYTHON``) names a Python interpreter that has
neuraloperator (for example a separate venv, because neuraloperator's pins may clash with
graphop's), :mod:`graphop.bench.peers` runs there as a worker on the same points. The ratio
``local_gno_vs_neuralop_gino = local_gno_step_s / neuralop_gino_step_s`` is the issue's target
(<= 0.5).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from graphop.bench.layers import time_call
from graphop.bench.peers import run_peer
from graphop.layers.sparse import to_device

__all__ = ["bench_model"]


# ---------------------------------------------------------------------------- graphop models
def _mesh(n_points: int):
    import triangle

    from graphop.geometry.mesh import Mesh

    area = 0.78 / n_points  # triangle's quality mesh has about 0.78 / area vertices
    t = triangle.triangulate({"vertices": np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])}, f"qa{area:.15f}")
    return Mesh(t["vertices"], {"triangle": t["triangles"]}, source=f"bench square {n_points}")


def bench_model(n_points: int = 20_000, batch: int = 8, width: int = 64, n_layers: int = 4,
                latent_shape=(64, 64), modes=(16, 16), repeats: int = 2, device=None,
                progress: bool = True, gino: bool = True, gino_python: str | None = None,
                disco_radius: float | None = None) -> dict:
    """Step times (s) of LocalGNO (all branches), global-only and neuralop's GINO; see the
    module docstring. Returns a flat dict of numbers (and notes as strings)."""
    from torch_geometric.data import Batch

    from graphop.models import build_model, resolve_supports

    from graphop.training.distributed import resolve_device

    device = str(resolve_device(device or "auto"))      # a clear error for a missing GPU
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    mesh = _mesh(n_points)
    pos = mesh.points
    datas = []
    for k in range(batch):
        d = mesh.to_data(dtype=torch.float32)
        d.x = torch.sin(4 * d.pos[:, :1]) * (k + 1)
        d.y = torch.cos(3 * d.x)
        datas.append(d)
    data = to_device(Batch.from_data_list(datas), device)
    res = {"device": str(device), "n_points": int(len(pos)), "batch": batch, "width": width,
           "n_layers": n_layers, "latent_shape": "x".join(map(str, latent_shape)),
           "modes": "x".join(map(str, modes)), "threads": torch.get_num_threads()}
    size = dict(in_channels=1, out_channels=1, width=width, n_layers=n_layers,
                latent_shape=list(latent_shape), modes=list(modes))
    # fixed supports (not 'auto'): the bench times one stated operator size at every n_points
    size["encoder_radius"] = None   # 1.5 latent spacings
    r = 0.06 if disco_radius is None else float(disco_radius)
    local = {"name": "local_gno", **size, "disco_radius": r}
    res["disco_radius"] = r
    res["disco_mean_neighbours"] = float(np.pi * r * r * len(pos))  # unit square, interior
    for key, cfg in [("local_gno", local), ("global_only", {"name": "gino", **size})]:
        torch.manual_seed(0)
        cfg = resolve_supports(cfg, datas[:1])   # any support still 'auto' (none given here)
        model = build_model(cfg).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(data), data.y).backward()
            opt.step()

        log(f"bench model: timing {key} ({len(pos)} points x {batch}) ...")
        t, first = time_call(step, device, repeats)
        res[f"{key}_step_s"], res[f"{key}_first_step_s"] = t, first
        res[f"{key}_params"] = sum(p.numel() for p in model.parameters())
        del model, opt
    res["local_gno_vs_global_only"] = res["local_gno_step_s"] / res["global_only_step_s"]
    if gino:
        h = (1.05 + 0.05) / (max(latent_shape) - 1)
        log("bench model: timing neuraloperator GINO ...")
        res.update(run_peer("gino", {
            "pos": np.asarray(pos, dtype=float).tolist(), "batch": batch, "width": width,
            "n_layers": n_layers, "latent_shape": list(latent_shape), "modes": list(modes),
            "radius": 1.5 * h, "repeats": repeats, "device": str(device)},
            python=gino_python, env_vars=("GRAPHOP_GINO_PYTHON", "GRAPHOP_NEURALOP_PYTHON")))
        if "neuralop" in res:
            res["neuralop_gino"] = res.pop("neuralop")
        if "neuralop_gino_step_s" in res:
            r = res["local_gno_step_s"] / res["neuralop_gino_step_s"]
            res["local_gno_vs_neuralop_gino"] = r
            res["global_only_vs_neuralop_gino"] = res["global_only_step_s"] / res["neuralop_gino_step_s"]
            res["target_met"] = {"local_gno <= 0.5 x neuralop GINO": bool(r <= 0.5)}
    return res
