"""Datasets of the experiments: generated train/test sets, meshes of another type, bare point
clouds, and the uniform-weights ablation.

A test-set spec (one entry of ``tests:`` in ``experiments/<name>/config.yaml``) is one of

* a generated set: ``{n, points, domains, seed, remesh}`` -> :func:`graphop.data.generate`
  (sample i draws its coefficient from ``default_rng([seed, i])``, so two sets with the same
  seed and families hold the same input functions on different meshes);
* a mesh-type set: ``{n, points, seed, mesh: {structured: tri|quad, perturb: p}}`` -> Darcy
  samples on meshes of the unit square from :func:`graphop.geometry.domains.mesh_domain`, written by
  :func:`write_meshtype_set` (quads are split into two triangles for the P1 solve only; the
  file keeps the quads, so the quadrature weights are the quad lumped mass);
* a nested-grid set, as the FNO Darcy benchmark makes it: ``{n, points, seed, mesh:
  {structured: quad|tri, solve_points: 16641}}`` -> every sample is solved once on the fine
  ``solve_points`` = n_f x n_f grid and restricted to the nodes of the coarse ``points`` =
  n_c x n_c grid, which nest in it ((n_f - 1) a multiple of (n_c - 1): 17, 33, 65 in 129), by
  :func:`write_nested_grid_set`. Sets of every resolution with the same seed hold the same
  functions: at their shared nodes their fields are equal;
* a point-cloud view: ``{from: OTHER, point_cloud: true}`` -> the samples of OTHER with the
  cells dropped and weights re-estimated from the points alone (:meth:`Mesh.from_points`
  with the domain measure known), see :class:`PointCloudView`.

:class:`UniformWeights` replaces every quadrature weight by measure / N (what a model that
ignores the mesh sees) and keeps the true weights in ``weight_true`` so that errors are still
measured with the quadrature.

Shapes:
    Data.pos [N, d], weight [N], x [N, n_in], y [N, n_out] (+ weight_true [N] when wrapped)
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from graphop.errors import ConfigError

__all__ = ["TEST_KEYS", "dataset_root", "build_set", "write_meshtype_set", "nested_grid_sizes",
           "write_nested_grid_set", "PointCloudView", "UniformWeights", "load_set"]

TEST_KEYS = {"n", "points", "domains", "seed", "remesh", "mesh", "from", "point_cloud"}
MESH_KEYS = {"structured", "perturb", "solve_points"}


def _recipe_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def dataset_root(base, problem: str, spec: dict, params: dict) -> Path:
    """Folder of a generated set: ``base/<problem>-<kind>-<hash of the recipe>``, shared by
    every experiment that asks for the same recipe."""
    kind = "mesh" if spec.get("mesh") else "gen"
    key = {"problem": problem, "params": params,
           **{k: spec.get(k) for k in ("n", "points", "domains", "seed", "remesh", "mesh")}}
    return Path(base) / f"{problem}-{kind}-{spec.get('points')}-{_recipe_hash(key)}"


def write_meshtype_set(out, n: int, points: int, seed: int, mesh: dict, params: dict) -> Path:
    """Darcy samples on meshes of the unit square of one type (see the module docstring).

    Args:
        out: folder (files go to ``out/train/sample_NNNNNN.vtu``; existing files are kept).
        n: number of samples.
        points: nodes per mesh (structured grids: the nearest n x n).
        seed: sample i draws its coefficient from ``default_rng([seed, i])`` (as the generator
            does) and its mesh perturbation from ``seed + i``.
        mesh: ``{"structured": "tri"|"quad"|None, "perturb": float}``.
        params: Darcy solver parameters (high, low, f).
    """
    from graphop.data.darcy import darcy_sample
    from graphop.geometry.domains import mesh_domain
    from graphop.io import write_mesh
    from graphop.geometry.mesh import Mesh

    bad = sorted(set(mesh) - MESH_KEYS)
    if bad:
        raise ConfigError(f"unknown mesh option(s) {', '.join(bad)}; valid: {sorted(MESH_KEYS)}")
    if mesh.get("solve_points") is not None:
        return write_nested_grid_set(out, n, points, seed, mesh, params)
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    structured = mesh.get("structured")
    perturb = float(mesh.get("perturb", 0.0))
    for i in range(int(n)):
        path = out / "train" / f"sample_{i:06d}.vtu"
        if path.exists():
            continue
        m = mesh_domain("square", int(points), seed=int(seed) + i, perturb=perturb,
                        structured=structured)
        pts = m.points[:, :2]
        if "quad" in m.cells:
            quads = m.cells["quad"]
            cells = {"quad": quads}
            tris = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
        else:
            tris = m.cells["triangle"]
            cells = {"triangle": tris}
        rng = np.random.default_rng([int(seed), i])
        fields = darcy_sample(pts, tris, rng, **params)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        write_mesh(tmp, Mesh(pts, cells, fields, validate=False))
        os.replace(tmp, path)
    return out


def nested_grid_sizes(points, mesh: dict, where: str = "mesh") -> tuple[int, int]:
    """``(n_c, n_f)`` of a nested-grid spec: ``points`` = n_c^2 nodes kept of the
    ``mesh["solve_points"]`` = n_f^2 nodes solved, with (n_f - 1) a multiple of (n_c - 1).
    Raises :class:`ConfigError` (one line, naming ``where`` and the value) otherwise, and when
    the spec is not a structured grid without perturbation."""
    def side(v, key):
        try:
            k = int(v)
        except (TypeError, ValueError):
            k = -1
        r = int(round(k ** 0.5)) if k > 0 else 0
        if r < 2 or r * r != k or k != v:
            raise ConfigError(f"{where}: {key}={v!r} must be the node count n*n of a grid with "
                              f"n >= 2 (e.g. 289 = 17 x 17)")
        return r

    if mesh.get("structured") not in ("tri", "quad"):
        raise ConfigError(f"{where}: solve_points needs structured: quad or tri, got "
                          f"structured={mesh.get('structured')!r}")
    if float(mesh.get("perturb", 0.0)) != 0.0:
        raise ConfigError(f"{where}: solve_points needs an unperturbed grid, got "
                          f"perturb={mesh['perturb']!r}")
    n_c, n_f = side(points, "points"), side(mesh["solve_points"], "mesh.solve_points")
    if n_f < n_c or (n_f - 1) % (n_c - 1):
        raise ConfigError(f"{where}: the {n_c} x {n_c} grid (points={points}) does not nest in "
                          f"the {n_f} x {n_f} grid (solve_points={mesh['solve_points']}): "
                          f"{n_f} - 1 must be a multiple of {n_c} - 1 (e.g. 17, 33, 65 in 129)")
    return n_c, n_f


def _fine_solution(cache: Path, i: int, seed: int, fine: "Mesh", tris, params: dict) -> dict:
    """Darcy sample i (coefficient from ``default_rng([seed, i])``) on the fine grid, solved once
    and kept in ``cache/sample_NNNNNN.npz`` for every coarser set of the same recipe."""
    from graphop.data.darcy import darcy_sample

    path = cache / f"sample_{i:06d}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in ("a", "u")}
    fields = darcy_sample(fine.points[:, :2], tris, np.random.default_rng([int(seed), i]),
                          **params)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        np.savez(fh, a=fields["a"], u=fields["u"])
    os.replace(tmp, path)
    return fields


def write_nested_grid_set(out, n: int, points: int, seed: int, mesh: dict, params: dict,
                          cache=None) -> Path:
    """Darcy samples on the coarse grid of a nested-grid spec (see the module docstring).

    Sample i: the coefficient psi from ``default_rng([seed, i])`` (the same function on every
    grid), solved by :func:`graphop.data.darcy.darcy_sample` (P1 FEM, each quad split into two
    triangles) on the fine n_f x n_f grid of the unit square, then restricted to the coarse
    grid's nodes, which are fine nodes (coordinates copied, not recomputed):

        a_c = a_f[keep] (the binary coefficient high/low at the nodes),  u_c = u_f[keep],
        keep = fine node (s i, s j) for coarse node (i, j),  s = (n_f - 1) / (n_c - 1).

    The file holds the coarse grid's cells (``quad`` or ``triangle``), so the quadrature
    weights are the coarse grid's lumped mass (summing to 1).

    Args:
        out: folder (files go to ``out/train/sample_NNNNNN.vtu``; existing files are kept).
        n: number of samples.
        points: coarse grid nodes n_c^2; ``mesh["solve_points"]``: fine grid nodes n_f^2.
        seed: seed of the coefficients.
        mesh: ``{"structured": "quad"|"tri", "solve_points": int}`` (no ``perturb``).
        params: Darcy solver parameters (high, low, f).
        cache: folder of the fine solutions (default: next to ``out``, named by the fine
            recipe, so sets of every resolution share one solve per sample).
    """
    from graphop.geometry.domains import structured_square
    from graphop.geometry.mesh import Mesh
    from graphop.io import write_mesh

    bad = sorted(set(mesh) - MESH_KEYS)
    if bad:
        raise ConfigError(f"unknown mesh option(s) {', '.join(bad)}; valid: {sorted(MESH_KEYS)}")
    n_c, n_f = nested_grid_sizes(points, mesh)
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    if cache is None:
        fine_key = {"problem": "darcy", "params": params, "seed": int(seed), "solve_points":
                    int(mesh["solve_points"])}
        cache = out.parent / f"darcy-fine-{mesh['solve_points']}-{_recipe_hash(fine_key)}"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    fine = structured_square(n_f, quad=True)
    q = fine.cells["quad"]
    tris = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])   # the (0, 2) diagonal split
    step = (n_f - 1) // (n_c - 1)
    keep = np.arange(n_f * n_f).reshape(n_f, n_f)[::step, ::step].ravel()  # coarse node order
    coarse = structured_square(n_c, quad=mesh["structured"] == "quad")
    kind = "quad" if "quad" in coarse.cells else "triangle"
    pts = fine.points[keep, :2]
    cells = {kind: coarse.cells[kind]}
    for i in range(int(n)):
        path = out / "train" / f"sample_{i:06d}.vtu"
        if path.exists():
            continue
        f = _fine_solution(cache, i, seed, fine, tris, params)
        fields = {"a": f["a"][keep], "u": f["u"][keep]}
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        write_mesh(tmp, Mesh(pts, cells, fields, validate=False))
        os.replace(tmp, path)
    return out


class PointCloudView(torch.utils.data.Dataset):
    """The samples of ``base`` as bare point clouds: no cells, weights from the k-NN density
    estimate of :meth:`graphop.Mesh.from_points` rescaled to the domain measure (the sum of
    the mesh weights), a new ``mesh_hash``; ``x``, ``y`` and ``pos`` unchanged."""

    def __init__(self, base, k: int = 8):
        from graphop.geometry.mesh import Mesh

        self.base, self.k = base, k
        self._data = []
        for i in range(len(base)):
            d = base[i]
            pos = d.pos.detach().double().numpy()
            cloud = Mesh.from_points(pos, measure=float(d.weight.double().sum()), k=k)
            nd = cloud.to_data(fields=[], dtype=d.pos.dtype)
            nd.pos = d.pos.clone()
            nd.x, nd.y = d.x, d.y
            for key in ("periodic", "family", "n_points"):
                if key in d.keys():
                    nd[key] = d[key]
            self._data.append(nd)

    def __len__(self):
        return len(self._data)

    def __getitem__(self, i):
        return self._data[i]


class UniformWeights(torch.utils.data.Dataset):
    """``base`` with every weight replaced by measure / N (the quadrature-free ablation).

        weight_j <- (sum_k w_k) / N,   weight_true_j = w_j

    The model (DISCO, grid encoder) and the training loss see the uniform weights; the
    experiment runner measures errors with ``weight_true``. The cells are dropped, so the
    model's integral operators sum over the nodes with these weights instead of integrating
    over the cells (``quadrature="cells"``). ``mesh_hash`` gets a ``:uniform`` suffix so no
    operator built for the true weights is reused."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        d = self.base[i]
        out = copy.copy(d)
        w = d.weight
        out.weight_true = w
        out.weight = torch.full_like(w, float(w.double().sum()) / w.numel())
        for key in list(out.keys()):
            if key == "face" or key.startswith("cells_"):
                del out[key]
        h = getattr(d, "mesh_hash", None)
        if isinstance(h, str):
            out.mesh_hash = h + ":uniform"
        return out


def build_set(problem: str, spec: dict, params: dict, base, workers: int = 2,
              progress: bool = True) -> Path:
    """Make (or reuse) the generated or mesh-type set ``spec``; returns its root folder."""
    from graphop.data import generate

    root = dataset_root(base, problem, spec, params)
    if spec.get("mesh"):
        if problem != "darcy":
            raise ConfigError(f"mesh-type test sets exist for darcy only, not {problem!r}")
        return write_meshtype_set(root, spec["n"], spec["points"], spec.get("seed", 0),
                                  spec["mesh"], params)
    generate(problem, root, n=int(spec["n"]), points=spec["points"], domains=spec.get("domains"),
             seed=int(spec.get("seed", 0)), workers=workers, test_fraction=0.0,
             remesh=bool(spec.get("remesh", False)), progress=progress, **params)
    return root


def load_set(root, inputs, targets):
    """Every sample of a set folder as a :class:`graphop.data.MeshFolderDataset`."""
    from graphop.data import MeshFolderDataset

    return MeshFolderDataset(root, inputs=list(inputs), targets=list(targets), split=None)
