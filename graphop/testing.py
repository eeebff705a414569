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
  as its first vertices, so outputs can be compared on common points; :func:`nested_clouds`
  does the same for uniform random clouds with k-NN quadrature weights.
* :func:`check_stencil`: the differential stencil is exact for linear functions at every point
  and its coefficients obey the stated bound, on any point set; :func:`hard_point_sets` gives
  the hard cases (near-duplicates, interleaved boundary refinements, 100x grading, Monte Carlo
  clouds, anisotropic cells, a tetrahedral mesh, a torus), each also available on its own.
* :func:`check_model_refinement`: a model with fixed parameters converges on nested meshes or
  clouds for a given input field (smooth, or piecewise constant with jumps) and does not blow up.

``fn`` is any callable ``fn(x, data) -> Tensor [N, O]`` (a layer) or ``fn(data)`` with
``x=None`` (a model reading ``data.x``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from graphop.errors import InputError

__all__ = ["check_refinement_convergence", "check_convergence_rate",
           "check_permutation_equivariance", "check_batch_consistency", "permute_data",
           "nested_meshes", "convergence_rate", "nested_clouds", "check_model_refinement",
           "check_stencil", "hard_point_sets", "near_duplicate_points",
           "interleaved_boundary_points", "graded_points", "monte_carlo_points",
           "anisotropic_points", "tet_mesh_points", "torus_points"]


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
        raise InputError(f"need at least 3 refinements to measure a ratio, got {len(outputs)}")
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
        raise InputError(f"domain must be 'square' or 'disk', got {domain!r}")
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


# ---------------------------------------------------------------------------- hard point sets
def _jittered_grid(n_side, jitter, rng, dim=2):
    a = (np.arange(n_side) + 0.5) / n_side
    g = np.stack(np.meshgrid(*[a] * dim, indexing="ij"), -1).reshape(-1, dim)
    return g + jitter / n_side * rng.uniform(-1, 1, g.shape)


def near_duplicate_points(n: int = 900, seed: int = 0, gap: float = 1e-7) -> np.ndarray:
    """A jittered grid of ~``n`` points in the unit square in which every third point has a
    twin ``gap`` x the spacing away (as left by merging two meshes without deduplication)."""
    rng = np.random.default_rng(seed)
    p = _jittered_grid(int(round(math.sqrt(n * 3 / 4))), 0.3, rng)
    twins = p[::3] + gap / math.sqrt(len(p)) * rng.normal(size=p[::3].shape)
    return np.concatenate([p, twins])


def interleaved_boundary_points(max_area: float = 0.003, extra: int = 3, seed: int = 0):
    """Vertices of an irregular triangle mesh of the unit square plus ``extra`` points between
    consecutive boundary vertices, as where the boundary points of two refinements interleave:
    the nearest neighbours of a boundary point are all on the boundary (a collinear
    neighbourhood)."""
    m = nested_meshes("square", 1, max_area, seed=seed)[0]
    p = m.points
    out = [p]
    for side in range(4):
        axis, val = side % 2, float(side // 2)
        on = np.flatnonzero(np.abs(p[:, axis] - val) < 1e-12)
        t = np.sort(p[on, 1 - axis])
        frac = (np.arange(1, extra + 1) / (extra + 1))[None, :]
        mid = (t[:-1, None] + np.diff(t)[:, None] * frac).ravel()
        q = np.empty((len(mid), 2))
        q[:, axis], q[:, 1 - axis] = val, mid
        out.append(q)
    return np.concatenate(out)


def graded_points(ratio: float = 100.0, per_ring: int = 24, seed: int = 0) -> np.ndarray:
    """Points in the quarter disk {r <= 1, x, y >= 0} graded towards the corner: rings at
    geometric radii with locally isotropic spacing proportional to r, from 1/ratio to 1
    (spacing varies ``ratio`` times), jittered by 20%, plus the corner."""
    rng = np.random.default_rng(seed)
    dth = (math.pi / 2) / per_ring
    q = 1 + dth
    radii = (1.0 / ratio) * q ** np.arange(int(math.ceil(math.log(ratio) / math.log(q))) + 1)
    radii = radii[radii <= 1 + 1e-9]
    pts = [np.zeros((1, 2))]
    for r in radii:
        th = (np.arange(per_ring + 1) + 0.2 * rng.uniform(-1, 1, per_ring + 1)) * dth
        th = np.clip(th, 0, math.pi / 2)
        rr = r * (1 + 0.2 * dth * rng.uniform(-1, 1, per_ring + 1)) if r < radii[-1] else r
        pts.append(np.stack([rr * np.cos(th), rr * np.sin(th)], 1))
    return np.concatenate(pts)


def monte_carlo_points(n: int = 1024, dim: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` independent uniform points in the unit box [0, 1]^dim."""
    return np.random.default_rng(seed).uniform(size=(n, dim))


def anisotropic_points(nx: int = 100, ny: int = 10, seed: int = 0) -> np.ndarray:
    """A jittered (10%) grid of the unit square with ``nx`` x ``ny`` points: cells with aspect
    ratio nx / ny (10 by default), so the nearest neighbours of every point are collinear."""
    rng = np.random.default_rng(seed)
    x, y = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
    g = np.stack(np.meshgrid(x, y, indexing="ij"), -1).reshape(-1, 2)
    return g + 0.1 * rng.uniform(-1, 1, g.shape) / np.array([nx, ny])


def tet_mesh_points(n: int = 1000, seed: int = 0) -> np.ndarray:
    """Vertices of a tetrahedral mesh of the unit ball (:func:`graphop.geometry.domains.mesh_ball`:
    a boundary lattice on the sphere plus a jittered interior lattice)."""
    from graphop.geometry.domains import mesh_ball

    return mesh_ball(n, seed=seed).points


def torus_points(n: int = 1024, dim: int = 2, seed: int = 0):
    """``(points, box)``: uniform random points on the periodic unit torus, box = 1.0."""
    return monte_carlo_points(n, dim, seed), 1.0


def hard_point_sets(seed: int = 0) -> dict:
    """Every hard case of the stencil as ``{name: (points, periodic box or None)}``:
    near-duplicates, interleaved boundary refinements (boundaries and corners), a 100x graded
    set, a Monte Carlo cloud, anisotropic cells, a 3D tetrahedral mesh, a 3D Monte Carlo cloud
    and a torus."""
    return {"near_duplicates": (near_duplicate_points(seed=seed), None),
            "interleaved_boundary": (interleaved_boundary_points(seed=seed), None),
            "graded_100x": (graded_points(seed=seed), None),
            "monte_carlo": (monte_carlo_points(seed=seed), None),
            "anisotropic_10x": (anisotropic_points(seed=seed), None),
            "tetrahedral_ball": (tet_mesh_points(seed=seed), None),
            "monte_carlo_3d": (monte_carlo_points(1500, 3, seed=seed), None),
            "torus": torus_points(seed=seed)}


# ---------------------------------------------------------------------------- stencil checks
def check_stencil(points, periodic=None, kernel_size: int = 3, tol: float = 1e-8,
                  **stencil_kwargs) -> dict:
    """The differential stencil is well-posed at every point of ``points`` [N, d].

    Checks, at every point i and stencil function l:

    * linear exactness: ``sum_j A[iL+l, j] (y_j - x_i) = s_l`` (minimum image on a torus), i.e.
      the stencil applied to any linear function equals s_l . grad f, up to ``tol`` x |s_l|;
    * the bound ``sum_j |a_l(i, j)| <= C`` (:func:`graphop.layers.stencil.coefficient_bound`),
      so the response to any f is at most ``2 C ||f||_inf / h_i``;
    * no neighbourhood left degenerate at the growth cap.

    ``stencil_kwargs`` go to :func:`graphop.layers.stencil.stencil_info` (``scale``,
    ``neighbours``). Returns ``{"linear_error", "coef_max", "coef_median", "bound",
    "grown_fraction", "growth_max", "noise_ratio"}``; ``noise_ratio`` is max/median of
    ``|D xi|`` over points for +-1 noise xi, after multiplying by h_i / median h (so that the
    legitimate variation of 1/h on graded meshes does not count).
    """
    from graphop.layers.stencil import coefficient_bound, stencil_info, stencil_offsets

    pts = np.asarray(points, dtype=np.float64)
    n, d = pts.shape
    A, info, coef = stencil_info(pts, kernel_size, periodic=periodic, **stencil_kwargs)
    offs = stencil_offsets(kernel_size, d)
    L = len(offs)
    A = A.tocoo()
    off = pts[A.col] - pts[A.row // L]
    if periodic is not None:
        box = np.broadcast_to(np.asarray(periodic, float), (d,))
        off = off - box * np.round(off / box)
    moment = np.stack([np.bincount(A.row, A.data * off[:, k], minlength=n * L)
                       for k in range(d)], 1).reshape(n, L, d)
    err = np.abs(moment - offs[None]).max(axis=2) / np.linalg.norm(offs, axis=1)[None]
    bound = coefficient_bound(kernel_size, d)
    xi = np.random.default_rng(0).choice([-1.0, 1.0], size=n)
    resp = np.abs(A.tocsr() @ xi).reshape(n, L).max(axis=1) * info.h / np.median(info.h)
    out = {"linear_error": float(err.max()), "coef_max": float(coef.max()),
           "coef_median": float(np.median(coef)), "bound": bound,
           "grown_fraction": float((info.growth > 1).mean()),
           "growth_max": float(info.growth.max()),
           "noise_ratio": float(resp.max() / np.median(resp))}
    if len(info.degenerate):
        i = int(info.degenerate[0])
        raise AssertionError(f"{len(info.degenerate)} points keep a degenerate neighbourhood at "
                             f"the growth cap, e.g. point {i} at {pts[i].tolist()} (smallest "
                             f"moment eigenvalue {info.lambda_min[i]:.3g})")
    if not out["linear_error"] <= tol:
        i = int(np.argmax(err.max(axis=1)))
        raise AssertionError(f"stencil not exact for linear functions: error "
                             f"{out['linear_error']:.3g} at point {i} {pts[i].tolist()}")
    if not out["coef_max"] <= bound:
        i = int(np.argmax(coef.max(axis=1)))
        raise AssertionError(f"stencil coefficients exceed the bound: sum |a| = "
                             f"{out['coef_max']:.3g} > {bound:.3g} at point {i} {pts[i].tolist()}")
    return out


# ---------------------------------------------------------------------------- model checks
def nested_clouds(levels: int = 3, n0: int = 200, factor: int = 4, dim: int = 2,
                  seed: int = 0):
    """Uniform random clouds of the unit box with ``n0 * factor^k`` points, k < ``levels``,
    each keeping the previous cloud's points first, with k-NN quadrature weights scaled to the
    box's measure (:meth:`graphop.geometry.mesh.Mesh.from_points`)."""
    from graphop.geometry.mesh import Mesh

    pts = monte_carlo_points(n0 * factor ** (levels - 1), dim, seed)
    return [Mesh.from_points(pts[:n0 * factor ** k], measure=1.0, source=f"cloud level {k}")
            for k in range(levels)]


def check_model_refinement(model, meshes, field, max_ratio: float = 0.8,
                           max_growth: float = 1.5, periodic=None) -> dict:
    """A model with fixed parameters gives converging outputs on nested meshes.

    Args:
        model: ``model(data) -> [N, O]`` reading ``data.x`` (e.g. a LocalGNO), in float64.
        meshes: K >= 3 nested :class:`graphop.Mesh` (each starts with the previous one's points;
            :func:`nested_meshes`, :func:`nested_clouds`).
        field: ``field(points [N, d] ndarray) -> [N, C] ndarray``, the input ``data.x``; smooth,
            or piecewise constant with jumps.
        max_ratio: every ratio of successive RMS differences on the coarsest mesh's points must
            be below this (:func:`check_refinement_convergence`).
        max_growth: nothing blows up: ``max |out|`` on every mesh is at most ``max_growth`` x
            that on the coarsest.
        periodic: the torus box (scalar or [d]) when the meshes are clouds of a torus: set
            as ``data.periodic`` (the model must be built with ``periodic=True``).
    Returns:
        ``{"n_points", "peaks", "differences", "ratios"}``.
    """
    outs, peaks = [], []
    for m in meshes:
        data = m.to_data(dtype=torch.float64)
        if periodic is not None:
            from graphop.geometry.neighbors import box_size

            data.periodic = torch.from_numpy(box_size(periodic, m.points.shape[1]))[None]
        data.x = torch.as_tensor(np.asarray(field(m.points), dtype=np.float64)).reshape(
            m.n_points, -1)
        with torch.no_grad():
            y = model(data)
        outs.append(y)
        peaks.append(float(y.abs().max()))
    n0 = meshes[0].n_points
    grow = [p / peaks[0] for p in peaks]
    if not max(grow) <= max_growth:
        raise AssertionError(f"outputs blow up under refinement: max |out| {_fmt(peaks)} on "
                             f"{[m.n_points for m in meshes]} points (growth {max(grow):.3g} > "
                             f"{max_growth})")
    res = check_refinement_convergence(outs, torch.arange(n0), max_ratio)
    return {"n_points": [m.n_points for m in meshes], "peaks": peaks, **res}
