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
    separate venv is the usual setup; the worker stays up for the whole case). The six models
    (four of graphop's, two peers) are built once and timed in cycles of one epoch each, the
    order reversed every other cycle: ``repeats`` x :data:`GRID_ROUNDS` cycles after a warm-up
    epoch of each. Ratios: ``local_gno / LocalNO`` and ``global / FNO`` (samples/s; > 1 means
    graphop is faster), each the median over the cycles of the two epochs' ratio in one cycle
    (each cycle's in ``*_cycles``): on a shared machine whose load drifts over minutes, two
    epochs seconds apart see the same load.
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
    after clearing the operator cache (``cold``: every operator built) against the same 64
    samples spread over 8 meshes (``shared``, a dataset small enough to stay cached); then, a
    warm-up epoch each, 2 x ``repeats`` cycles of one epoch of each dataset (``warm``: the
    median epoch). Ratio ``warm_vs_shared``: the median over the cycles of the two epochs'
    ratio in one cycle (each cycle's in ``*_cycles``). ``cold_store``: a cold
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

Numbers are medians of ``repeats`` epochs (steps in (c)) after a warm-up; in (a) of the
``repeats`` x :data:`GRID_ROUNDS` cycles.
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

from graphop.bench.peers import _sync, grid_peers, run_peer
from graphop.layers.sparse import to_device

__all__ = ["bench_train"]

WIDTH, LAYERS, BATCH, SAMPLES = 32, 4, 8, 64
NEURALOP_MODES = (12, 12)
GRAPHOP_MODES = (6, 7)


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


def _graphop_epoch(model, samples, device="cpu"):
    """A function that runs one training epoch of ``model`` on ``samples`` (batch
    :data:`BATCH`, shuffled, MSE, Adam) and returns its seconds, CUDA synchronised."""
    from torch_geometric.loader import DataLoader

    model.to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = DataLoader(samples, batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch():
        _sync(device)
        t = time.perf_counter()
        for b in loader:
            b = to_device(b, device)
            loss = torch.nn.functional.mse_loss(model(b), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(device)
        return time.perf_counter() - t

    return epoch


def _cold_epoch(model, samples, device="cpu") -> float:
    """Seconds of one training epoch of ``model`` on ``samples`` with the operator cache
    emptied first (every operator built, or loaded from an attached store)."""
    from graphop.layers.sparse import operator_cache

    epoch = _graphop_epoch(model, samples, device)
    operator_cache.clear()
    return epoch()


#: the grid case times graphop's models and the peers in cycles of one epoch each, this many
#: cycles per repeat (``repeats`` x this cycles in all); measured on this 2-core machine, one
#: cycle's ratios ranged 0.74-1.56 on a busy day, so the median needs a dozen
GRID_ROUNDS = 4

#: the grid case's ratios: (graphop model, peer) pairs
GRID_PAIRS = (("local_gno", "neuralop_local_no"), ("local_gno_3x3", "neuralop_local_no"),
              ("local_gno_matched", "neuralop_local_no"), ("global", "neuralop_fno"))


def _grid_case(n: int, repeats: int, log, rounds: int = GRID_ROUNDS, device="cpu") -> dict:
    """Setting (a) on an n x n grid: graphop's four models and the peers built once, then
    ``repeats * rounds`` cycles of one epoch each (:func:`_interleaved`, :func:`_grid_ratios`)."""
    from graphop.geometry.domains import structured_square

    samples = _samples([structured_square(n)], np.random.default_rng(0))
    h = 1.0 / (n - 1)
    local = ("global", "disco", "diff")
    three = {"disco_radius": 1.5 * h, "diff_kwargs": {"smoothing_radius": 1.5 * h}}
    res, runners = {}, {}
    for name, br, extra in (("local_gno", local, {}),
                            ("local_gno_3x3", local, three),
                            ("local_gno_matched", local, {**three, "kernel_shape": [2, 4],
                                                          "projection_channels": 2 * WIDTH}),
                            ("global", ("global",), {})):
        model = _model(samples, br, n_grid=n, **extra)
        runners[name] = _graphop_epoch(model, samples, device)
        res[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        if "disco" in br:
            op, _ = model.blocks[0].disco.operator(to_device(samples[0], device))
            res[f"{name}_disco_nnz_per_point"] = op.nnz / op.n_out
    log(f"  grid {n}x{n}: starting neuraloperator FNO and LocalNO")
    peers = grid_peers({"n": n, "device": str(device), "samples": SAMPLES, "batch": BATCH,
                        "width": WIDTH, "layers": LAYERS, "modes": list(NEURALOP_MODES)})
    if isinstance(peers, dict):           # why there are no peers
        res.update(peers)
    else:
        res["neuralop_python"] = peers.python
        for name in peers.names:
            runners[name] = lambda name=name: peers.epoch(name)
            res[f"{name}_params"] = peers.params[name]
    cycles, label = max(1, repeats) * max(1, rounds), f"grid {n}x{n}"
    try:
        res.update(_grid_ratios(_interleaved(runners, cycles, label, log)))
    except RuntimeError as exc:           # a peer's worker died: graphop's numbers alone
        res["neuralop"] = str(exc)
        res.update(_grid_ratios(_interleaved({k: v for k, v in runners.items()
                                              if not k.startswith("neuralop")},
                                             cycles, label, log)))
    finally:
        if not isinstance(peers, dict):
            peers.close()
    return res


def _interleaved(runners: dict, cycles: int, label: str, log) -> dict:
    """Every runner (``name -> epoch() seconds``) once to warm up, then ``cycles`` cycles of one
    epoch each, the order reversed every other cycle (so that no model always follows the
    same one): ``{name: [seconds per cycle]}``. The machine's load drifts over minutes, and
    epochs seconds apart see the same load: ratios are taken within a cycle
    (:func:`_paired`)."""
    names = list(runners)
    for name in names:
        log(f"  {label}: warm-up epoch of {name}")
        runners[name]()
    times = {name: [] for name in names}
    for c in range(cycles):
        log(f"  {label}: cycle {c + 1}/{cycles}")
        for name in (names if c % 2 == 0 else names[::-1]):
            times[name].append(runners[name]())
    return times


def _paired(times: dict, a: str, b: str, key: str) -> dict:
    """``key``: the median over cycles of b's epoch time over a's in the same cycle (a's
    samples/s over b's), each cycle's value in ``key_cycles``."""
    per = [tb / ta for ta, tb in zip(times[a], times[b])]
    return {key: statistics.median(per), f"{key}_cycles": [round(r, 3) for r in per]}


def _grid_ratios(times: dict) -> dict:
    """The grid case's numbers from :func:`_interleaved`'s times: ``NAME_samples_s`` (the
    median epoch) and the ratios of :data:`GRID_PAIRS` whose two models ran."""
    out = {f"{name}_samples_s": SAMPLES / statistics.median(t) for name, t in times.items()}
    for a, b in GRID_PAIRS:
        if a in times and b in times:
            out.update(_paired(times, a, b, f"{a}_vs_{b.removeprefix('neuralop_')}"))
    return out


def _meshes_case(repeats: int, log, n_points: int = 1000, device="cpu") -> dict:
    from graphop.geometry.domains import mesh_domain

    meshes = [mesh_domain("square", n_points, seed=i, perturb=0.3) for i in range(SAMPLES)]
    res = {"mesh_points": int(np.mean([m.n_points for m in meshes]))}
    for name, br in (("local_gno", ("global", "disco", "diff")), ("global", ("global",))):
        epochs = {}
        # shared first: its 8 meshes are among the 64, so it must be cold before they are built
        for case, ms in (("shared", meshes[:8]), ("per_sample", meshes)):
            log(f"  {SAMPLES} samples on {len(ms)} meshes: graphop {name}, cold epoch")
            samples = _samples(ms, np.random.default_rng(1))
            model = _model(samples, br)
            epochs[case] = _graphop_epoch(model, samples, device)
            res[f"{name}_{case}_cold_samples_s"] = SAMPLES / _cold_epoch(model, samples, device)
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
        # warm epochs of the two datasets alternate, their ratio taken within each cycle
        times = _interleaved(epochs, 2 * max(1, repeats), f"{SAMPLES} samples, {name}", log)
        for case in epochs:
            res[f"{name}_{case}_warm_samples_s"] = SAMPLES / statistics.median(times[case])
        res.update(_paired(times, "per_sample", "shared", f"{name}_warm_vs_shared"))
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
            _cold_epoch(model, samples, device)            # builds and writes
            cold = _cold_epoch(model, samples, device)     # loads
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
            cold = _cold_epoch(model, samples, device)
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
