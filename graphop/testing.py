"""Reusable property checks for mesh layers and models, plus irregular test meshes.

Every ``check_*`` function returns the numbers it measured (so tests and reports can print
them) and raises ``AssertionError`` with a message stating what failed and by how much.

* :func:`check_refinement_convergence`: outputs on successive refinements, compared on the
  points the meshes share, must differ by less each time (ratio < ``max_ratio``).
* :func:`check_convergence_rate`: errors against a reference fall like h^rate.
* :func:`check_permutation_equivariance`: ``fn(x[p], data[p]) == fn(x, data)[p]``.
* :func:`check_batch_consistency`: a ``Batch`` of different meshes equals single calls.
* :func:`nested_meshes`: a sequence of irregular (randomly perturbed Delaunay) triangle meshes
  of the unit square or the unit disk in which each mesh keeps every vertex of the previous one
  as its first vertices, so outputs can be compared on common points.

``fn`` is any callable ``fn(x, data) -> Tensor [N, O]`` (a layer) or ``fn(data)`` with
``x=None`` (a model reading ``data.x``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["check_refinement_convergence", "check_convergence_rate",
           "check_permutation_equivariance", "check_batch_consistency", "permute_data",
           "nested_meshes", "convergence_rate"]


def _call(fn, x, data):
    return fn(data) if x is None else fn(x, data)


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


def check_refinement_convergence(outputs, common, max_ratio: float = 0.7) -> dict:
    """Successive outputs on shared points converge.

    Args:
        outputs: list of K tensors [N_k, O], the same operator on K refinements.
        common: index tensor/array [M] of the shared points within every output (e.g. the first
            M vertices of nested meshes), or a list of K such index arrays.
    Returns:
        ``{"differences": [K-1 RMS differences], "ratios": [K-2 ratios]}``.
    """
    if len(outputs) < 3:
        raise ValueError(f"need at least 3 refinements to measure a ratio, got {len(outputs)}")
    idx = common if isinstance(common, (list, tuple)) else [common] * len(outputs)
    vals = [o[torch.as_tensor(np.asarray(i), dtype=torch.long)] for o, i in zip(outputs, idx)]
    diffs = [_rms(b - a) for a, b in zip(vals[:-1], vals[1:])]
    ratios = [b / a if a > 0 else math.inf for a, b in zip(diffs[:-1], diffs[1:])]
    bad = [k for k, r in enumerate(ratios) if not r < max_ratio]
    if bad:
        raise AssertionError(
            f"outputs do not converge under refinement: differences {_fmt(diffs)}, ratios "
            f"{_fmt(ratios)} (ratio {bad[0] + 1} is {ratios[bad[0]]:.3g}, must be < {max_ratio})")
    return {"differences": diffs, "ratios": ratios}


def convergence_rate(h, errors) -> float:
    """Least-squares slope of log(error) against log(h)."""
    h, e = np.log(np.asarray(h, float)), np.log(np.asarray(errors, float))
    return float(np.polyfit(h, e, 1)[0])


def check_convergence_rate(h, errors, min_rate: float) -> float:
    """errors ~ C h^rate with fitted rate >= ``min_rate`` and errors decreasing; returns rate."""
    rate = convergence_rate(h, errors)
    if not rate >= min_rate or not all(b < a for a, b in zip(errors[:-1], errors[1:])):
        raise AssertionError(f"convergence rate {rate:.3g} < {min_rate} or errors not decreasing:"
                             f" h {_fmt(h)}, errors {_fmt(errors)}")
    return rate


def permute_data(data, perm: torch.Tensor):
    """A copy of ``data`` with its nodes reordered: new node k is old node ``perm[k]``.

    Node attributes (first dimension N) are permuted; ``face``/``edge_index`` are relabelled.
    """
    n = data.num_nodes
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    out = data.clone()
    for key, val in data.items():
        if not torch.is_tensor(val):
            continue
        if key in ("face", "edge_index"):
            out[key] = inv[val]
        elif val.dim() >= 1 and val.shape[0] == n and key != "periodic":
            out[key] = val[perm]
    return out


def check_permutation_equivariance(fn, data, x=None, seed: int = 0, atol: float = 1e-10) -> float:
    """``fn(x[p], data[p]) == fn(x, data)[p]`` for a random permutation p; returns max error."""
    perm = torch.randperm(data.num_nodes, generator=torch.Generator().manual_seed(seed))
    ref = _call(fn, x, data)[perm]
    got = _call(fn, None if x is None else x[perm], permute_data(data, perm))
    err = float((got - ref).detach().abs().max())
    if not err <= atol:
        raise AssertionError(f"not permutation equivariant: max error {err:.3g} > {atol:.3g}")
    return err


def check_batch_consistency(fn, datas, xs=None, atol: float = 1e-10) -> float:
    """A ``Batch`` of the graphs ``datas`` (features ``xs`` or ``data.x``) gives the same rows as
    one call per graph; returns the max error."""
    from torch_geometric.data import Batch

    singles = [_call(fn, None if xs is None else xs[k], d) for k, d in enumerate(datas)]
    batch = Batch.from_data_list(list(datas))
    x = None if xs is None else torch.cat(list(xs))
    got = _call(fn, x, batch)
    ref = torch.cat(singles)
    if got.shape != ref.shape:
        raise AssertionError(f"batched output {tuple(got.shape)} vs singles {tuple(ref.shape)}")
    err = float((got - ref).detach().abs().max())
    if not err <= atol:
        raise AssertionError(f"batch of {len(datas)} graphs differs from single calls: "
                             f"max error {err:.3g} > {atol:.3g}")
    return err


def _fmt(v) -> str:
    return "[" + ", ".join(f"{float(a):.3g}" for a in v) + "]"


# ---------------------------------------------------------------------------- test meshes
def nested_meshes(domain: str = "square", levels: int = 4, max_area: float = 0.01,
                  perturb: float = 0.2, seed: int = 0, boundary_points: int = 24):
    """Irregular triangle meshes, each a refinement of the previous one with its vertices first.

    Args:
        domain: "square" (unit square [0, 1]^2) or "disk" (unit disk; new boundary vertices are
            projected onto the circle so the domain converges to the disk).
        levels: number of meshes; the maximum triangle area is divided by 4 per level.
        max_area: maximum triangle area of the coarsest mesh.
        perturb: new interior vertices move by up to ``perturb`` x sqrt(max_area) at random
            (the meshes are then no longer Delaunay nor structured).
        seed: random seed.
        boundary_points: vertices on the circle of the coarsest disk mesh.
    Returns:
        list of :class:`graphop.Mesh`; mesh k + 1 starts with the vertices of mesh k.
    """
    import triangle

    from graphop.geometry.mesh import Mesh

    rng = np.random.default_rng(seed)
    if domain == "square":
        v = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    elif domain == "disk":
        th = np.linspace(0, 2 * np.pi, boundary_points, endpoint=False)
        v = np.stack([np.cos(th), np.sin(th)], axis=1)
    else:
        raise ValueError(f"domain must be 'square' or 'disk', got {domain!r}")
    seg = np.stack([np.arange(len(v)), (np.arange(len(v)) + 1) % len(v)], axis=1)
    geo = {"vertices": v, "segments": seg}
    meshes, n_old, area = [], 0, max_area
    for level in range(levels):
        opts = ("rpq" if level else "pq") + f"a{area:.12f}"
        t = triangle.triangulate(geo, opts)
        pts, marks = t["vertices"].copy(), t["vertex_markers"].ravel().astype(bool)
        new = np.arange(len(pts)) >= n_old
        if domain == "disk":
            bnd = new & marks
            pts[bnd] /= np.linalg.norm(pts[bnd], axis=1, keepdims=True)
        move = new & ~marks
        step = perturb * math.sqrt(area) * rng.uniform(-1, 1, size=(int(move.sum()), 2))
        pts[move] += step
        meshes.append(Mesh(pts, {"triangle": t["triangles"]}, source=f"{domain} level {level}"))
        geo = {"vertices": pts, "triangles": t["triangles"], "segments": t["segments"],
               "vertex_markers": t["vertex_markers"], "segment_markers": t["segment_markers"]}
        n_old, area = len(pts), area / 4
    return meshes
