"""Benchmarks (``graphop bench TARGET``): not timed tests, measurements with ratios to targets.

``TARGETS`` maps a target name to a function returning a flat dict of numbers (or to a
``"module:function"`` string, imported on first use, so other parts of the library can add a
target without importing heavy code here). ``graphop bench NAME`` passes the options a target's
signature accepts (``n_points``, ``repeats``, ``device``, ``progress``).

``layers`` (:func:`bench_layers`): DISCOConv on a 2D irregular triangle mesh (default 100k
points, ~30 neighbours within the radius, kernel_shape (3, 4), 32 -> 32 channels, a batch of 4
sharing the mesh), forward and forward+backward time and peak memory, against

(a) ``naive``: a per-edge torch_geometric ``MessagePassing`` of the same operator, messages
    ``psi_l(e) x_j`` of shape [E, L*C] (what the layer avoids);
(b) ``floor``: one ``torch.sparse.mm`` with the same CSR operator plus the same contraction
    (the copy the layer multiplies: in its points' locality order on large meshes, X taken
    as already in that order, so the ratio is the layer's overhead over a bare product).

The naive form needs about 3 x B E L C x 4 bytes; when that exceeds ``naive_max_gb`` it runs
(together with a second DISCO and floor measurement, for like-for-like ratios) on a smaller mesh
of ``naive_points`` points, reported in the result. DifferentialConv is timed the same way.
Peak memory: CUDA allocator peaks on GPU; on CPU the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs after malloc_trim) above the resident set before the call.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import inspect
import math
import sys
import time

import numpy as np
import torch

from graphop.bench.peers import _sync, timed
from graphop.errors import InputError

__all__ = ["TARGETS", "run_target", "bench_layers", "naive_disco_class", "format_result"]


# ---------------------------------------------------------------------------- measuring
def time_call(fn, device, repeats: int) -> tuple[float, float]:
    """(median of ``repeats`` timed calls, time of the first, warm-up call) in seconds. The first
    call also builds any cached operator; CUDA is synchronised around every call."""
    first, median = timed(fn, device, repeats)
    return median, first


def _time(fn, device, repeats: int) -> float:
    return time_call(fn, device, repeats)[0]


def _status_kb(field: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_bytes(fn, device):
    """Peak memory of one call of ``fn`` above the memory in use before it (bytes or None)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                     # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return None if base is None or peak is None else (peak - base) * 1024


def _measure(make_fn, device, repeats):
    """Forward time, forward+backward time and their peak memories for ``make_fn(backward)``."""
    fwd, fb = make_fn(False), make_fn(True)
    return {"forward_s": _time(fwd, device, repeats),
            "forward_backward_s": _time(fb, device, repeats),
            "forward_peak_bytes": _peak_bytes(fwd, device),
            "forward_backward_peak_bytes": _peak_bytes(fb, device)}


# ---------------------------------------------------------------------------- baselines
def naive_disco_class():
    from torch_geometric.nn import MessagePassing

    class NaiveDISCO(MessagePassing):
        """Per-edge message passing of the same operator: message ``psi(e)[:, :, None] * x_j``
        [E, L, C] summed at the target, then the same contraction with theta."""

        def __init__(self):
            super().__init__(aggr="add")

        def forward(self, x, edge_index, psi, theta):
            L, C, O = theta.shape
            h = self.propagate(edge_index, x=x, psi=psi)            # [N, L*C]
            return h @ theta.reshape(L * C, O)

        def message(self, x_j, psi):
            return (psi.unsqueeze(-1) * x_j.unsqueeze(1)).flatten(1)

    return NaiveDISCO



def per_edge_form(op):
    """The operator as per-edge data: ``edge_index`` [2, E] (source j, target i) and dense
    basis values ``psi`` [E, L] (the input of a MessagePassing baseline)."""
    m = op.matrix.tocoo()
    i, l = np.divmod(m.row.astype(np.int64), op.n_basis)
    key = i * op.n_in + m.col
    uniq, inv = np.unique(key, return_inverse=True)
    psi = np.zeros((len(uniq), op.n_basis))
    psi[inv, l] = m.data
    tgt, src = np.divmod(uniq, op.n_in)
    return np.stack([src, tgt]), psi


def _floor_apply(a, x, theta, fold):
    """The floor: one torch.sparse.mm (native autograd) plus the same contraction."""
    L, C, O = theta.shape
    n_in = a.shape[1]
    n_out = a.shape[0] // L
    X = x.reshape(fold, n_in, C).transpose(0, 1).reshape(n_in, fold * C)
    Y = torch.sparse.mm(a, X)
    Z = Y.view(n_out, L, fold, C).permute(2, 0, 1, 3).reshape(fold * n_out, L * C)
    return Z @ theta.reshape(L * C, O)


# ---------------------------------------------------------------------------- the layers bench
def _square_mesh(n_points: int, seed: int):
    import triangle

    from graphop.geometry.mesh import Mesh

    area = 0.78 / n_points          # triangle's quality mesh: about 0.78 / area vertices
    t = triangle.triangulate({"vertices": np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])},
                             f"qa{area:.15f}")
    return Mesh(t["vertices"], {"triangle": t["triangles"]}, source=f"bench square {n_points}")


def _suite(mesh, batch, channels, kernel_shape, neighbors, device, repeats, with_naive, with_diff,
           log):
    from torch_geometric.data import Batch

    from graphop.layers import DifferentialConv, DISCOConv
    from graphop.layers.sparse import operator_cache

    dtype = torch.float32
    n = mesh.n_points
    radius = math.sqrt(neighbors / (math.pi * n))        # unit square: ~neighbors within r
    data = mesh.to_data(dtype=dtype)
    bdata = Batch.from_data_list([data] * batch).to(device)
    torch.manual_seed(0)
    conv = DISCOConv(channels, channels, radius, kernel_shape=kernel_shape, bias=False).to(device)
    res = {"points": n, "radius": radius}
    builds = []
    for _ in range(2):                    # best of two cold builds (shared machines are noisy)
        operator_cache.clear()
        t = time.perf_counter()
        op, fold = conv.operator(bdata)
        op.prepare(device, dtype)         # the copies forward and backward use
        _sync(device)
        builds.append(time.perf_counter() - t)
    res["build_seconds"] = min(builds)
    # the floor and the per-edge baseline work on the one mesh's block, batch in the columns
    (op, _), fold = conv.operator(bdata.get_example(0)), batch
    res["neighbors_mean"] = op.nnz / max(n, 1) / 3.4                       # rough: ~3.4 / edge
    res["nnz"] = op.nnz
    x = torch.randn(batch * n, channels, device=device, dtype=dtype)
    g = torch.randn(batch * n, channels, device=device, dtype=dtype)
    a, _ = op.torch_pair(device, dtype)

    def run(apply):
        def make(backward):
            def fn():
                xx = x.detach().requires_grad_(backward)
                y = apply(xx)
                if backward:
                    y.backward(g)
                    conv.weight.grad = None
            return fn
        return make

    log(f"  DISCOConv, {n} points, batch {batch}")
    res["disco"] = _measure(run(lambda xx: conv(xx, bdata)), device, repeats)
    log("  floor (torch.sparse.mm + contraction)")
    res["floor"] = _measure(run(lambda xx: _floor_apply(a, xx, conv.weight, fold)), device, repeats)
    if with_naive:
        NaiveDISCO = naive_disco_class()
        ei, psi = per_edge_form(op)
        E = ei.shape[1]
        offs = (np.arange(batch) * n)[:, None, None]
        ei_b = torch.as_tensor((ei[None] + offs).transpose(1, 0, 2).reshape(2, -1), device=device)
        psi_b = torch.as_tensor(np.tile(psi, (batch, 1)), dtype=dtype, device=device)
        naive = NaiveDISCO()
        ref = conv(x, bdata).detach()
        got = naive(x, ei_b, psi_b, conv.weight).detach()
        res["naive_max_abs_diff"] = float((got - ref).abs().max())
        res["edges"] = E
        log(f"  naive per-edge MessagePassing ({batch} x {E} edges)")
        res["naive"] = _measure(run(lambda xx: naive(xx, ei_b, psi_b, conv.weight)), device,
                                 repeats)
        del ei_b, psi_b
    if with_diff:
        diff = DifferentialConv(channels, channels, bias=False).to(device)
        t = time.perf_counter()
        diff.operator(bdata)[0].prepare(device, dtype)
        res["diff_build_seconds"] = time.perf_counter() - t
        (dop, _), dfold = diff.operator(bdata.get_example(0)), batch
        da, _ = dop.torch_pair(device, dtype)
        log("  DifferentialConv and its floor")
        res["diff"] = _measure(run(lambda xx: diff(xx, bdata)), device, repeats)
        res["diff_floor"] = _measure(run(lambda xx: _floor_apply(da, xx, diff.weight, dfold)),
                                     device, repeats)
    operator_cache.clear()
    return res


def bench_layers(n_points: int = 100_000, batch: int = 4, channels: int = 32,
                 kernel_shape=(3, 4), neighbors: int = 30, repeats: int = 3, device=None,
                 naive_max_gb: float = 4.0, progress: bool = True, seed: int = 0) -> dict:
    """Measure DISCOConv against the naive per-edge and the sparse.mm floor (module docstring).

    Returns a flat dict; the headline keys are ``disco_vs_naive_speedup`` (naive time / DISCO
    time, forward+backward), ``disco_vs_naive_memory`` (naive peak / DISCO peak),
    ``disco_vs_floor_time_ratio`` (DISCO time / floor time) and ``build_seconds`` (best of two
    cold builds of the DISCO operator: neighbour search, basis, CSR, transpose, float32 copies).
    """
    from graphop.training.distributed import resolve_device

    device = resolve_device(device or "auto")           # a clear error for a missing GPU
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    log(f"graphop bench layers: meshing {n_points} points")
    mesh = _square_mesh(n_points, seed)
    L = 1 + (kernel_shape[0] - 1) * kernel_shape[1]
    est = 3 * batch * neighbors * L * channels * 4 * mesh.n_points
    fits = est <= naive_max_gb * 1e9
    full = _suite(mesh, batch, channels, kernel_shape, neighbors, device, repeats,
                  with_naive=fits, with_diff=True, log=log)
    small = full
    if not fits:
        n_small = max(1000, int(mesh.n_points * naive_max_gb * 1e9 / est))
        log(f"  naive needs ~{est / 1e9:.0f} GB at {mesh.n_points} points: "
            f"comparing with it on {n_small} points")
        small = _suite(_square_mesh(n_small, seed), batch, channels, kernel_shape, neighbors,
                       device, repeats, with_naive=True, with_diff=False, log=log)
    d, f, nv = full["disco"], full["floor"], small["naive"]
    ds = small["disco"]
    out = {
        "device": str(device), "points": full["points"], "batch": batch, "channels": channels,
        "kernel_shape": list(kernel_shape), "n_basis": L, "radius": full["radius"],
        "nnz": full["nnz"], "threads": torch.get_num_threads(),
        "build_seconds": full["build_seconds"],
        "disco_forward_s": d["forward_s"], "disco_forward_backward_s": d["forward_backward_s"],
        "disco_forward_peak_mb": _mb(d["forward_peak_bytes"]),
        "disco_forward_backward_peak_mb": _mb(d["forward_backward_peak_bytes"]),
        "floor_forward_s": f["forward_s"], "floor_forward_backward_s": f["forward_backward_s"],
        "floor_forward_backward_peak_mb": _mb(f["forward_backward_peak_bytes"]),
        "disco_vs_floor_time_ratio": d["forward_backward_s"] / f["forward_backward_s"],
        "disco_vs_floor_forward_time_ratio": d["forward_s"] / f["forward_s"],
        "naive_points": small["points"], "naive_edges_per_sample": small["edges"],
        "naive_max_abs_diff": small["naive_max_abs_diff"],
        "naive_forward_s": nv["forward_s"], "naive_forward_backward_s": nv["forward_backward_s"],
        "naive_forward_backward_peak_mb": _mb(nv["forward_backward_peak_bytes"]),
        "disco_at_naive_points_forward_backward_s": ds["forward_backward_s"],
        "disco_at_naive_points_forward_backward_peak_mb": _mb(ds["forward_backward_peak_bytes"]),
        "disco_vs_naive_speedup": nv["forward_backward_s"] / ds["forward_backward_s"],
        "disco_vs_naive_forward_speedup": nv["forward_s"] / ds["forward_s"],
        "disco_vs_naive_memory": _ratio(nv["forward_backward_peak_bytes"],
                                        ds["forward_backward_peak_bytes"]),
        "diff_build_seconds": full["diff_build_seconds"],
        "diff_forward_s": full["diff"]["forward_s"],
        "diff_forward_backward_s": full["diff"]["forward_backward_s"],
        "diff_forward_backward_peak_mb": _mb(full["diff"]["forward_backward_peak_bytes"]),
        "diff_vs_floor_time_ratio": (full["diff"]["forward_backward_s"]
                                     / full["diff_floor"]["forward_backward_s"]),
    }
    out["targets_met"] = {"speedup>=10": out["disco_vs_naive_speedup"] >= 10,
                          "memory>=5": (out["disco_vs_naive_memory"] or 0) >= 5,
                          "floor_ratio<=1.3": out["disco_vs_floor_time_ratio"] <= 1.3,
                          "build<=3s": out["build_seconds"] <= 3.0}
    return out


def _mb(b):
    return None if b is None else b / 2**20


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


# ---------------------------------------------------------------------------- registry
TARGETS: dict = {
    "layers": bench_layers,
    "model": "graphop.bench.model:bench_model",
    "train": "graphop.bench.train:bench_train",
}


def run_target(name: str, **options) -> dict:
    """Run target ``name`` with the ``options`` its signature accepts."""
    if name not in TARGETS:
        raise InputError(f"unknown benchmark {name!r}; available: {sorted(TARGETS)}")
    fn = TARGETS[name]
    if isinstance(fn, str):
        mod, attr = fn.split(":")
        fn = getattr(importlib.import_module(mod), attr)
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in options.items() if k in params and v is not None})


def format_result(name: str, result: dict) -> str:
    """Aligned ``key  value`` lines (floats with 4 significant digits); a nested dict of numbers
    becomes an indented section, a flat dict of flags one line."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return ", ".join(fmt(x) for x in v)
        if isinstance(v, dict):
            return ", ".join(f"{k}: {'yes' if x is True else 'NO' if x is False else fmt(x)}"
                             for k, x in v.items())
        return str(v)

    def lines(d, indent):
        width = max((len(k) for k in d), default=0)
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and any(isinstance(x, (int, float, dict)) and
                                           not isinstance(x, bool) for x in v.values()):
                out.append(f"{' ' * indent}{k}")
                out.extend(lines(v, indent + 2))
            else:
                out.append(f"{' ' * indent}{k:<{width}}  {fmt(v)}")
        return out

    return "\n".join([f"graphop bench {name}"] + lines(result, 2))
