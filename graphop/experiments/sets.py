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

__all__ = ["TEST_KEYS", "dataset_root", "build_set", "write_meshtype_set", "PointCloudView",
           "UniformWeights", "load_set"]

TEST_KEYS = {"n", "points", "domains", "seed", "remesh", "mesh", "from", "point_cloud"}
MESH_KEYS = {"structured", "perturb"}


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
    experiment runner measures errors with ``weight_true``. ``mesh_hash`` gets a ``:uniform``
    suffix so no operator built for the true weights is reused."""

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
