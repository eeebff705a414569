"""``graphop bench train``: samples/s of a training step (forward, relative-L2-free MSE loss,
backward, Adam step) of LocalGNO and of the global-only model, in three settings, with peers
where they are installed and every ratio measured in the same run.

(a) ``grid``: 64 samples on one 16 x 16 (and one 32 x 32) grid of the unit square, shared by
    every sample, batch 8, width 32, 4 layers, Fourier modes (6, 7) on a latent grid of the
    data's size (neuraloperator's ``n_modes=(12, 12)`` keeps |k| < 6 on the first axis and 7 on
    the last, the same modes), supports ``auto`` (chosen from the mesh, as ``graphop train``
    does). Peers: neuraloperator ``FNO`` and ``LocalNO`` at the same width, modes, layers, batch
    and samples, on the same grids. They run in-process when ``import neuralop`` works, or in the
    interpreter named by ``$GRAPHOP_NEURALOP_PYTHON`` (:mod:`graphop.bench.peers`, which imports
    nothing from graphop, is its worker: neuraloperator's pins may clash with graphop's, so a
    separate venv is the usual setup). Ratios:
    ``local_gno / LocalNO`` and ``global / FNO`` (samples/s; > 1 means graphop is faster).
    The supports differ: graphop's ``auto`` DISCO radius spans about 3 grid spacings (about 30
    points per ball, what mesh-independent training needs), LocalNO's default cutoff one
    spacing on a 3 x 3 local filter, and its other defaults are smaller too: 4 kernel basis
    functions (torch-harmonics' piecewise-linear ``[2, 4]``) against graphop's 9 (``(3, 4)``),
    a projection MLP of 2 x width hidden channels against 4 x width. Two variants of LocalGNO
    take LocalNO's sizes: ``local_gno_3x3`` its neighbourhood (DISCO and smoothing radius 1.5
    spacings), ``local_gno_matched`` its neighbourhood, basis size (``kernel_shape (2, 4)``:
    5 functions, graphop's nearest) and projection width; ``local_gno_matched / LocalNO``
    compares the implementations at about the same arithmetic. ``*_disco_nnz_per_point``: the
    nonzeros per point of each variant's DISCO operator (the sparse product's work is that
    times the channels).
(b) ``meshes``: 64 samples, each on its own irregular ~1000-point mesh of the unit square
    (``mesh_domain("square", 1000, seed=i, perturb=0.3)``), batch 8, shuffled: the first epoch
    after clearing the operator cache (``cold``: every operator built) and the median of the
    next epochs (``warm``); against the same 64 samples spread over 8 meshes (``shared``, a
    dataset small enough to stay cached). Ratio ``warm / shared``. ``cold_store``: a cold
    epoch whose operators are loaded from an operator store (:mod:`graphop.layers.store`)
    written by an earlier epoch, what a second ``graphop train`` on the same data sees.
    ``cold_prebuilt`` (with 2 or more CPUs): the operators built first by
    :mod:`graphop.training.prebuild` in one process per CPU (at most 8) into an empty store,
    then a cold epoch that loads them, samples/s over both (a first ``graphop train`` epoch
    with ``prebuild_workers``); ratio ``cold_prebuilt_vs_cold``. Peer: neuraloperator's
    ``GINO`` (width, layers, a 32 x 32 latent grid over [-0.05, 1.05]^2 with ``n_modes (24,
    22)``, graphop's default modes (12, 12) as in (a), its GNO radii graphop's encoder radius)
    on the same 64 meshes: it
    takes one geometry per forward pass, so a step is 8 forward passes and one update;
    warm samples/s, ratios ``local_gno_vs_gino`` and ``global_vs_gino`` (graphop warm, one
    mesh per sample).
(c) ``large``: one sample of N uniform random points in the unit square (2D) or cube (3D),
    k-NN quadrature weights, batch 1, LocalGNO width 32 with its defaults and
    ``checkpoint_blocks=True`` (each block's activations recomputed in the backward pass
    instead of stored: measured necessary at 1M points in 24 GiB); each size in a fresh
    process so that its peak memory (``VmHWM``) is its own: operator build time (the first
    forward pass minus the second: the matrices and the product copies of the forward pass),
    ``copies_s`` (of which making those copies: on large meshes, built in their locality
    order, the float32 matrix and its transpose, :class:`graphop.layers.sparse.SparseOperator`),
    step time, peak resident
    memory and bytes per point. Sizes: 10k and 100k by default, or ``--points``.
    Then the same build in another process with ``GRAPHOP_JIT=0``, the numpy reference of the
    compiled build kernels (:mod:`graphop.jit`), steps skipped: ``build_reference_s`` and the
    ratio ``build_jit_speedup``.

Numbers are medians of ``repeats`` epochs (steps in (c)) after a warm-up; in (a) graphop and
the peers alternate for :data:`GRID_ROUNDS` rounds and the medians over the rounds are kept.
``device`` (default: CUDA when available) runs every setting there: models, batches and
operators on the device, CUDA synchronised at the end of every timed epoch or step; in (c) the
peak is the device's (``torch.cuda.max_memory_allocated``) besides the process's resident
memory. ``experiments/device_check.sh`` runs it with the CUDA tests and ``bench layers``.
Not a test: nothing fails when a target is missed. The machine's other load changes absolute
numbers; the ratios are measured back to back.
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

from graphop.bench.peers import _sync, run_peer, timed
from graphop.layers.sparse import to_device

__all__ = ["bench_train"]

WIDTH, LAYERS, BATCH, SAMPLES = 32, 4, 8, 64
NEURALOP_MODES = (12, 12)
GRAPHOP_MODES = (6, 7)


# ---------------------------------------------------------------------------- neuraloperator
def _peer(n: int, repeats: int, device="cpu") -> dict:
    """neuraloperator FNO and LocalNO on an n x n grid (:mod:`graphop.bench.peers`)."""
    return run_peer("grid", {"n": n, "repeats": repeats, "device": str(device),
                             "samples": SAMPLES, "batch": BATCH, "width": WIDTH,
                             "layers": LAYERS, "modes": list(NEURALOP_MODES)})


# ---------------------------------------------------------------------------- graphop
def _samples(meshes, rng):
    from graphop.data.sample import mesh_to_sample

    out = []
    for i in range(SAMPLES):
        m = meshes[i % len(meshes)]
        a = np.sin(3 * m.points[:, 0] + rng.uniform(0, 6)) * np.cos(2 * m.points[:, 1])
        out.append(mesh_to_sample(m.with_point_data(a=a, u=np.cos(a)), ["a"], ["u"]))
    return out


def _model(samples, branches, n_grid=None, checkpoint_blocks: bool = False, **extra):
    from graphop.models.registry import build_model
    from graphop.models.supports import resolve_supports

    cfg = {"name": "local_gno", "in_channels": 1, "out_channels": 1, "width": WIDTH,
           "n_layers": LAYERS, "branches": list(branches), "dim": int(samples[0].pos.shape[1]),
           "checkpoint_blocks": checkpoint_blocks, **extra}
    if n_grid is not None:
        cfg.update(latent_shape=[n_grid, n_grid], modes=list(GRAPHOP_MODES))
    torch.manual_seed(0)
    return build_model(resolve_supports(cfg, samples))


def _graphop_epochs(model, samples, repeats, clear_first: bool = False, device="cpu"):
    from torch_geometric.loader import DataLoader

    from graphop.layers.sparse import operator_cache

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = DataLoader(samples, batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch():
        for b in loader:
            b = to_device(b, device)
            loss = torch.nn.functional.mse_loss(model(b), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    if clear_first:
        operator_cache.clear()
    return timed(epoch, repeats=repeats, device=device)


#: graphop and the peers are measured in this many alternating rounds (graphop, peers,
#: graphop, peers); samples/s and ratios are the medians over the rounds, so that a change of
#: the machine's load between two back-to-back measurements moves them less
GRID_ROUNDS = 2


def _grid_case(n: int, repeats: int, log, rounds: int = GRID_ROUNDS, device="cpu") -> dict:
    from graphop.geometry.domains import structured_square

    samples = _samples([structured_square(n)], np.random.default_rng(0))
    h = 1.0 / (n - 1)
    local = ("global", "disco", "diff")
    three = {"disco_radius": 1.5 * h, "diff_kwargs": {"smoothing_radius": 1.5 * h}}
    per_round = []
    for r in range(rounds):
        res = {}
        for name, br, extra in (("local_gno", local, {}),
                                ("local_gno_3x3", local, three),
                                ("local_gno_matched", local, {**three, "kernel_shape": [2, 4],
                                                              "projection_channels": 2 * WIDTH}),
                                ("global", ("global",), {})):
            log(f"  grid {n}x{n}, round {r + 1}/{rounds}: graphop {name}")
            model = _model(samples, br, n_grid=n, **extra)
            _, t = _graphop_epochs(model, samples, repeats, device=device)
            res[f"{name}_samples_s"] = SAMPLES / t
            res[f"{name}_params"] = sum(p.numel() for p in model.parameters())
            if "disco" in br:
                op, _ = model.blocks[0].disco.operator(to_device(samples[0], device))
                res[f"{name}_disco_nnz_per_point"] = op.nnz / op.n_out
        log(f"  grid {n}x{n}, round {r + 1}/{rounds}: neuraloperator FNO and LocalNO")
        res.update(_peer(n, repeats, device))
        if "neuralop_local_no_samples_s" in res:
            res["local_gno_vs_local_no"] = (res["local_gno_samples_s"]
                                            / res["neuralop_local_no_samples_s"])
            for v in ("local_gno_3x3", "local_gno_matched"):
                res[f"{v}_vs_local_no"] = (res[f"{v}_samples_s"]
                                           / res["neuralop_local_no_samples_s"])
            res["global_vs_fno"] = res["global_samples_s"] / res["neuralop_fno_samples_s"]
        per_round.append(res)
    return _median_rounds(per_round)


def _median_rounds(per_round: list) -> dict:
    """One dict from the rounds' dicts: the median of every number (parameter counts agree),
    the first round's value for anything else (a peer's "not importable" message); with more
    than one round, each ratio's values per round under ``KEY_rounds``."""
    out = {}
    for k, v in per_round[0].items():
        vals = [r.get(k) for r in per_round]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k] = statistics.median(vals)
            if k.endswith(("_vs_local_no", "_vs_fno")) and len(vals) > 1:
                out[f"{k}_rounds"] = vals
        else:
            out[k] = v
    return out


def _meshes_case(repeats: int, log, n_points: int = 1000, device="cpu") -> dict:
    from graphop.geometry.domains import mesh_domain

    meshes = [mesh_domain("square", n_points, seed=i, perturb=0.3) for i in range(SAMPLES)]
    res = {"mesh_points": int(np.mean([m.n_points for m in meshes]))}
    for name, br in (("local_gno", ("global", "disco", "diff")), ("global", ("global",))):
        for case, ms in (("per_sample", meshes), ("shared", meshes[:8])):
            log(f"  {SAMPLES} samples on {len(ms)} meshes: graphop {name}")
            samples = _samples(ms, np.random.default_rng(1))
            model = _model(samples, br)
            cold, warm = _graphop_epochs(model, samples, repeats, clear_first=True,
                                         device=device)
            res[f"{name}_{case}_cold_samples_s"] = SAMPLES / cold
            res[f"{name}_{case}_warm_samples_s"] = SAMPLES / warm
            if case == "per_sample":
                res[f"{name}_per_sample_cold_store_samples_s"] = SAMPLES / _from_store(
                    model, samples, device)
                workers = min(os.cpu_count() or 1, 8)
                if workers >= 2:
                    log(f"  {SAMPLES} samples on {len(ms)} meshes: graphop {name}, operators "
                        f"prebuilt in {workers} processes")
                    t_pre, t_epoch = _prebuilt(model, samples, workers, device)
                    res[f"{name}_per_sample_cold_prebuilt_samples_s"] = SAMPLES / (t_pre + t_epoch)
                    res[f"{name}_prebuild_s"] = t_pre
                    res["prebuild_workers"] = workers
                    res[f"{name}_cold_prebuilt_vs_cold"] = (
                        res[f"{name}_per_sample_cold_prebuilt_samples_s"]
                        / res[f"{name}_per_sample_cold_samples_s"])
        res[f"{name}_warm_vs_shared"] = (res[f"{name}_per_sample_warm_samples_s"]
                                         / res[f"{name}_shared_warm_samples_s"])
        if name == "global":
            res["encoder_radius"] = float(model.config["encoder_radius"])
    log(f"  {SAMPLES} samples on {SAMPLES} meshes: neuraloperator GINO")
    res.update(run_peer("gino_meshes", {
        "meshes": [m.points[:, :2].tolist() for m in meshes], "repeats": repeats,
        "device": str(device), "batch": BATCH, "width": WIDTH, "n_layers": LAYERS,
        "latent_shape": [32, 32], "modes": [24, 22], "radius": res["encoder_radius"]},
        env_vars=("GRAPHOP_NEURALOP_PYTHON", "GRAPHOP_GINO_PYTHON")))
    if "neuralop_gino_samples_s" in res:
        for name in ("local_gno", "global"):
            res[f"{name}_vs_gino"] = (res[f"{name}_per_sample_warm_samples_s"]
                                      / res["neuralop_gino_samples_s"])
    return res


def _from_store(model, samples, device="cpu") -> float:
    """Seconds of a cold epoch (empty memory cache) whose operators come from an
    :class:`~graphop.layers.store.OperatorStore` filled by an earlier epoch: a second run."""
    from graphop.layers.sparse import operator_cache
    from graphop.layers.store import OperatorStore

    old = operator_cache.store
    with tempfile.TemporaryDirectory() as tmp:
        operator_cache.store = OperatorStore(tmp)
        try:
            _graphop_epochs(model, samples, 1, True, device)            # builds and writes
            cold, _ = _graphop_epochs(model, samples, 1, True, device)  # loads
        finally:
            operator_cache.store = old
    return cold


def _prebuilt(model, samples, workers: int, device="cpu") -> tuple[float, float]:
    """``(prebuild seconds, cold epoch seconds)``: every geometry's operators built by
    :func:`graphop.training.prebuild.prebuild_operators` in ``workers`` processes into an empty
    store, then an epoch with an empty memory cache that loads them: a first ``graphop train``
    epoch with ``prebuild_workers``."""
    from graphop.layers.sparse import operator_cache
    from graphop.layers.store import OperatorStore
    from graphop.training.prebuild import prebuild_operators

    old = operator_cache.store
    with tempfile.TemporaryDirectory() as tmp:
        operator_cache.store = OperatorStore(tmp)
        try:
            operator_cache.clear()
            t = time.perf_counter()
            prebuild_operators(model.config, samples, workers)
            t_pre = time.perf_counter() - t
            cold, _ = _graphop_epochs(model, samples, 1, True, device)
        finally:
            operator_cache.store = old
    return t_pre, cold


def _peak_rss() -> float:
    """Peak resident memory of this process in bytes (Linux ``VmHWM``; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("nan")


def _large_worker(n: int, dim: int, repeats: int, checkpoint: bool = True,
                  device="cpu", steps: bool = True) -> dict:
    from graphop.geometry.mesh import Mesh
    from graphop.layers.sparse import operator_cache

    rss0 = _peak_rss()
    pts = np.random.default_rng(0).random((n, dim))
    mesh = Mesh.from_points(pts, measure=1.0).with_point_data(a=np.sin(4 * pts[:, 0]),
                                                              u=np.cos(3 * pts[:, 1]))
    from graphop.data.sample import mesh_to_sample

    data = mesh_to_sample(mesh, ["a"], ["u"])
    model = _model([data], ("global", "disco", "diff"), checkpoint_blocks=checkpoint)
    model.to(device)
    data = to_device(data, device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        loss = torch.nn.functional.mse_loss(model(data), data.y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    operator_cache.clear()
    from graphop.layers.sparse import COPY_TIME

    copies0 = COPY_TIME["seconds"]
    t = time.perf_counter()
    with torch.no_grad():
        model(data)                 # builds every operator
    _sync(device)
    first = time.perf_counter() - t
    copies = COPY_TIME["seconds"] - copies0
    t = time.perf_counter()
    with torch.no_grad():
        model(data)
    _sync(device)
    fwd = time.perf_counter() - t
    ts = []
    for _ in range(1 + repeats if steps else 0):
        t = time.perf_counter()
        step()
        _sync(device)
        ts.append(time.perf_counter() - t)
    peak = _peak_rss()
    extra = {}
    if torch.device(device).type == "cuda":
        extra["peak_device_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return {**extra, "points": n, "dim": dim, "device": str(device),
            "build_s": max(first - fwd, 0.0), "copies_s": copies,
            "step_s": statistics.median(ts[1:]) if steps else None,
            "peak_rss_gib": peak / 2**30,
            "bytes_per_point": (peak - rss0) / n, "operator_cache_gib": operator_cache.nbytes / 2**30,
            "checkpoint_blocks": checkpoint,
            "supports": {k: model.config.get(k) for k in ("disco_radius", "encoder_radius")}}


def _large_run(n: int, dim: int, repeats: int, device, reference: bool = False):
    """One ``large`` measurement in a fresh process: its result dict, or a one-line failure."""
    env = dict(os.environ)
    if reference:
        env["GRAPHOP_JIT"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        dst = os.path.join(tmp, "out.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--large-worker",
                               str(n), str(dim), str(repeats), dst,
                               str(torch.get_num_threads()), str(device),
                               "build-only" if reference else "steps"],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            why = ("killed (out of memory?)" if proc.returncode in (-9, 137)
                   else f"exit {proc.returncode}")
            return f"failed, {why}: {' | '.join(tail)}"
        with open(dst) as fh:
            return json.load(fh)


def _large_case(sizes, dims, repeats: int, log, device="cpu") -> dict:
    res = {}
    for dim in dims:
        for n in sizes:
            log(f"  {n} random points in {dim}D, batch 1 (own process)")
            out = _large_run(n, dim, repeats, device)
            if isinstance(out, dict):
                log(f"  {n} random points in {dim}D: the build again with the numpy reference "
                    f"(GRAPHOP_JIT=0, own process)")
                ref = _large_run(n, dim, repeats, device, reference=True)
                if isinstance(ref, dict):
                    out["build_reference_s"] = ref["build_s"]
                    out["build_jit_speedup"] = ref["build_s"] / max(out["build_s"], 1e-9)
                else:
                    out["build_reference_s"] = ref
            res[f"{dim}d_{n}"] = out
    return res


def bench_train(n_points: int | None = None, repeats: int | None = None, device=None,
                progress: bool = True, cases=("grid", "meshes", "large")) -> dict:
    """Run the settings of the module docstring; a nested dict of numbers and ratios.

    ``n_points``: the size of the ``large`` setting (default: 10k and 100k, 2D and 3D).
    ``device``: where every setting runs (default: CUDA when available, else the CPU)."""
    from graphop.training.distributed import resolve_device

    repeats = 3 if repeats is None else int(repeats)
    device = str(resolve_device(device or "auto"))   # a bad name fails here, before any work

    def log(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    res = {"device": device, "threads": torch.get_num_threads(), "batch": BATCH,
           "samples": SAMPLES, "width": WIDTH, "layers": LAYERS}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if "grid" in cases:
        for n in (16, 32):
            res[f"grid_{n}"] = _grid_case(n, repeats, log, device=device)
    if "meshes" in cases:
        res["meshes"] = _meshes_case(repeats, log, device=device)
    if "large" in cases:
        sizes = [n_points] if n_points else [10_000, 100_000]
        res["large"] = _large_case(sizes, (2, 3), max(1, repeats - 1), log, device)
    return res


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--large-worker":
        n, dim, reps, dst, threads = (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                      sys.argv[5], int(sys.argv[6]))
        torch.set_num_threads(threads)
        with open(dst, "w") as fh:
            json.dump(_large_worker(n, dim, reps, device=sys.argv[7] if len(sys.argv) > 7
                                    else "cpu",
                                    steps=len(sys.argv) <= 8 or sys.argv[8] != "build-only"),
                      fh)
