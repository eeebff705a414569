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
``GRAPHOP_GINO_PYTHON``) names a Python interpreter that has neuraloperator (for example a
separate venv, because neuraloperator's pins may clash with graphop's), this file is run there as
a worker on the same points, saved to a temporary .npz. The ratio
``local_gno_vs_neuralop_gino = local_gno_step_s / neuralop_gino_step_s`` is the issue's target
(<= 0.5).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from graphop.layers.sparse import to_device

__all__ = ["bench_model"]


def time_call(step, device, repeats):
    """(median step time, first step time). Kept here rather than imported from graphop.bench:
    this file also runs standalone as the neuraloperator worker, in an interpreter that may not
    have graphop installed."""
    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        step()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), first


def _latent_nodes(shape, lo=-0.05, hi=1.05):
    axes = [np.linspace(lo, hi, n) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


# ---------------------------------------------------------------------------- neuraloperator
def _gino_step_time(pos, batch, width, n_layers, latent_shape, modes, radius, repeats, device):
    """Median step time of neuralop's GINO on ``pos`` [N, 2] (needs ``import neuralop``)."""
    from neuralop.models import GINO

    torch.manual_seed(0)
    dev = torch.device(device)
    model = GINO(in_channels=1, out_channels=1, gno_coord_dim=2, in_gno_radius=radius,
                 out_gno_radius=radius, fno_n_modes=tuple(modes), fno_hidden_channels=width,
                 fno_n_layers=n_layers, gno_use_open3d=False, gno_use_torch_scatter=False).to(dev)
    geom = torch.as_tensor(pos, dtype=torch.float32, device=dev)[None]
    latent = torch.as_tensor(_latent_nodes(latent_shape), dtype=torch.float32, device=dev)[None]
    x = torch.sin(4 * geom[..., :1]).repeat(batch, 1, 1) * torch.arange(1, batch + 1, device=dev)[:, None, None]
    y = torch.cos(3 * x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        out = model(input_geom=geom, latent_queries=latent, output_queries=geom, x=x)
        torch.nn.functional.mse_loss(out, y).backward()
        opt.step()

    t, first = time_call(step, device, repeats)
    return {"neuralop_gino_step_s": t, "neuralop_gino_first_step_s": first,
            "neuralop_gino_params": sum(p.numel() for p in model.parameters())}


def _gino_in_process_or_worker(pos, gino_python, **kw):
    try:
        import neuralop  # noqa: F401
    except ImportError:
        python = gino_python or os.environ.get("GRAPHOP_GINO_PYTHON")
        if not python:
            return {"neuralop_gino": "neuraloperator not importable (set GRAPHOP_GINO_PYTHON to a "
                                     "python that has it)"}
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.json")
            np.savez(src, pos=pos, **{k: np.asarray(v) for k, v in kw.items() if k != "device"})
            proc = subprocess.run([python, os.path.abspath(__file__), "--neuralop-worker", src, dst,
                                   kw["device"]], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                return {"neuralop_gino": f"worker failed: {' | '.join(tail)}"}
            with open(dst) as fh:
                res = json.load(fh)
            res["neuralop_gino_python"] = python
            return res
    return _gino_step_time(pos, **kw)


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
        res.update(_gino_in_process_or_worker(
            pos, gino_python, batch=batch, width=width, n_layers=n_layers,
            latent_shape=tuple(latent_shape), modes=tuple(modes), radius=1.5 * h, repeats=repeats,
            device=str(device)))
        if "neuralop_gino_step_s" in res:
            r = res["local_gno_step_s"] / res["neuralop_gino_step_s"]
            res["local_gno_vs_neuralop_gino"] = r
            res["global_only_vs_neuralop_gino"] = res["global_only_step_s"] / res["neuralop_gino_step_s"]
            res["target_met"] = {"local_gno <= 0.5 x neuralop GINO": bool(r <= 0.5)}
    return res


def _worker(argv):
    src, dst, device = argv
    z = np.load(src)
    out = _gino_step_time(z["pos"], int(z["batch"]), int(z["width"]), int(z["n_layers"]),
                          tuple(int(v) for v in z["latent_shape"]), tuple(int(v) for v in z["modes"]),
                          float(z["radius"]), int(z["repeats"]), device)
    out["neuralop_torch"] = torch.__version__
    with open(dst, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--neuralop-worker":
    _worker(sys.argv[2:])
