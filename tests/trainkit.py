"""Small real datasets and a small real model for the training/evaluation tests.

The data: irregular Delaunay triangulations of rectangles of different sizes and resolutions
(``graphop.Mesh``, lumped-mass weights), an input field ``a`` and a target ``u`` that a
pointwise network can learn: u(x) = a(x)^2 + 0.5 * x_0. The model: a pointwise MLP on the
inputs and coordinates, ``model(data) -> [N, out]``, with a ``config`` dict.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import Delaunay

from graphop.geometry.mesh import Mesh


def make_mesh(n: int, seed: int, size=(1.0, 1.0), with_fields: bool = True) -> Mesh:
    rng = np.random.default_rng(seed)
    k = max(int(np.sqrt(n)), 3)
    g = np.linspace(0.0, 1.0, k)
    border = np.concatenate([np.stack([g, 0 * g], 1), np.stack([g, 0 * g + 1], 1),
                             np.stack([0 * g[1:-1], g[1:-1]], 1), np.stack([0 * g[1:-1] + 1, g[1:-1]], 1)])
    inner = rng.uniform(0.03, 0.97, size=(max(n - len(border), 4), 2))
    pts = np.concatenate([border, inner]) * np.asarray(size)
    tri = Delaunay(pts).simplices
    mesh = Mesh(pts, {"triangle": tri})
    if with_fields:
        c = rng.uniform(0.5, 2.0, size=3)
        a = c[0] * np.sin(2 * pts[:, 0] + c[1]) + c[2] * pts[:, 1]
        u = a**2 + 0.5 * pts[:, 0]
        mesh = mesh.with_point_data(a=a, u=u)
    return mesh


def make_samples(count: int, n: int = 60, seed: int = 0):
    """A list of Data(pos, weight, boundary, face, x=[N,1] a, y=[N,1] u, mesh_hash)."""
    out = []
    for i in range(count):
        m = make_mesh(n + 7 * (i % 3), seed + i, size=(1.0 + 0.25 * (i % 2), 1.0))
        d = m.to_data(fields=["a", "u"])
        d.x, d.y = d.a, d.u
        del d.a, d.u
        out.append(d)
    return out


class PointwiseMLP(torch.nn.Module):
    """h = MLP([x, pos]) per point; a real (if local) operator for mechanics tests."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, dim: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.config = {"name": "test_mlp", "in_channels": in_channels,
                       "out_channels": out_channels, "width": width, "dropout": dropout}
        self.net = torch.nn.Sequential(torch.nn.Linear(in_channels + dim, width), torch.nn.GELU(),
                                       torch.nn.Dropout(dropout),
                                       torch.nn.Linear(width, width), torch.nn.GELU(),
                                       torch.nn.Linear(width, out_channels))

    def forward(self, data):
        return self.net(torch.cat([data.x, data.pos], dim=1))


TINY_GNO = ["--set", "model.width=8", "--set", "model.n_layers=2", "--set", "model.latent_shape=[8,8]",
            "--set", "model.modes=[3,3]", "--set", "model.disco_radius=0.2"]


def write_dataset(root, n_train: int = 6, n_test: int = 3, n: int = 80, ext: str = ".vtu"):
    """A MeshFolderDataset folder: root/train/*.vtu and root/test/*.vtu with fields a and u;
    test meshes have other resolutions (n, 2n, 4n points)."""
    from pathlib import Path

    from graphop.io import write_mesh

    root = Path(root)
    for split, count in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            npts = n if split == "train" else n * 2 ** (i % 3)
            m = make_mesh(npts, (0 if split == "train" else 1000) + i)
            write_mesh(root / split / f"sample_{i:03d}{ext}", m)
    return root
