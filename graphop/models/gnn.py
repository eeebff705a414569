"""MeshGraphNet-style encode-process-decode GNN baseline (Pfaff et al., "Learning Mesh-Based
Simulation with Graph Networks", ICLR 2021).

    encode:   h_i = MLP_v([x_i, pos_i]),   e_ij = MLP_e([y_j - x_i, |y_j - x_i|])
    process:  e_ij <- e_ij + MLP_e'([e_ij, h_i, h_j])                 (edge update)
              h_i  <- h_i  + MLP_v'([h_i, sum_{j in N(i)} e_ij])      (node update, residual)
    decode:   out_i = MLP_d(h_i)

MLPs have one hidden layer and end in LayerNorm (except the decoder). The graph: mesh edges
from ``data.face`` (triangles) or ``data.cells_<type>`` (quads, tetrahedra, ..., offset per
sample of a Batch), both directions; a bare point cloud gets a radius graph (``radius``) or a
k-nearest-neighbour graph (``k``, default 8), built with scipy's cKDTree, cached by content.
On a torus (``data.periodic``) displacements use the minimum image.

This baseline is *not* discretisation convergent (messages are summed, not integrated, and
depend on the mesh's edge lengths); it is here to be compared against.

Args:
    in_channels, out_channels: field channels.
    hidden: latent size (default 64).
    n_layers: message-passing steps (default 6).
    dim: spatial dimension (default 2).
    use_pos: append absolute coordinates to the node input (default True).
    radius: radius graph for point clouds (default None: kNN).
    k: neighbours of the kNN graph for point clouds (default 8).
    activation: hidden activation (default "relu", as in MeshGraphNet).

Shapes:
    data.x [N, in_channels], data.pos [N, d] (Data or Batch) -> [N, out_channels]
"""
from __future__ import annotations


import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn
from torch_geometric.nn import MessagePassing

from graphop.layers.sparse import graph_set, operator_cache
from graphop.layers.latent import periodic_box
from graphop.geometry.neighbors import radius_neighbors
from graphop.models.mlp import mlp, plain_config
from graphop.errors import InputError

__all__ = ["MeshGraphNet", "mesh_edges"]


def _undirected(i: torch.Tensor, j: torch.Tensor, n: int) -> torch.Tensor:
    """Unique directed pairs (both directions) without self loops, [2, E]."""
    a, b = torch.cat([i, j]), torch.cat([j, i])
    keep = a != b
    code = torch.unique(a[keep] * n + b[keep])
    return torch.stack([code // n, code % n])


def _cloud_edges(data, radius, k) -> torch.Tensor:
    g = graph_set(data, need_weight=False, what="data")
    box = periodic_box(data, data.pos.shape[1])

    def build(b):
        pos = g.slice(b)[0]
        if radius is not None:
            nb = radius_neighbors(pos, None, radius, periodic=box, include_self=False)
            return np.stack([nb.rows(), nb.indices])
        kk = min(k, len(pos) - 1)
        pts = pos if box is None else np.mod(pos, box)
        _, idx = cKDTree(pts, boxsize=box).query(pts, k=kk + 1)
        return np.stack([np.repeat(np.arange(len(pos)), kk), idx[:, 1:].ravel()])

    params = ("gnn-edges", radius, k, None if box is None else tuple(box))
    parts = [torch.as_tensor(operator_cache.get(params + (key,), lambda b=b: build(b)),
                             dtype=torch.long) + g.ptr[b]
             for b, key in enumerate(g.keys)]
    e = torch.cat(parts, dim=1).to(data.pos.device)
    return _undirected(e[0], e[1], data.pos.shape[0])


def mesh_edges(data, radius: float | None = None, k: int = 8) -> torch.Tensor:
    """Undirected graph edges (both directions) [2, E] of ``data``: from its cells when it has
    any, else a radius/kNN graph of its points."""
    n = data.pos.shape[0]
    pairs = []
    face = getattr(data, "face", None)
    if face is not None and face.numel():
        pairs.append(face.t())
    for key in data.keys():
        if key.startswith("cells_"):
            cells = data[key].long()
            sl = getattr(data, "_slice_dict", {}).get(key) if hasattr(data, "ptr") else None
            if sl is not None:  # a Batch: collation does not offset cells_<type>, do it here
                counts = torch.diff(torch.as_tensor(sl))
                cells = cells + torch.repeat_interleave(data.ptr[:-1].cpu(), counts).to(cells.device)[:, None]
            pairs.append(cells)
    if not pairs:
        return _cloud_edges(data, radius, k)
    i, j = [], []
    for c in pairs:
        kk = c.shape[1]
        for a in range(kk):
            for b in range(a + 1, kk):
                i.append(c[:, a])
                j.append(c[:, b])
    return _undirected(torch.cat(i), torch.cat(j), n).to(data.pos.device)


class _GraphNetBlock(MessagePassing):
    """One MeshGraphNet processor step (edge update, sum aggregation, node update)."""

    def __init__(self, hidden: int, activation: str):
        super().__init__(aggr="sum")
        self.edge_mlp = mlp([3 * hidden, hidden, hidden], activation, layer_norm=True)
        self.node_mlp = mlp([2 * hidden, hidden, hidden], activation, layer_norm=True)

    def forward(self, h, edge_index, e):
        e_new = self.edge_updater(edge_index, x=h, edge_attr=e)
        agg = self.propagate(edge_index, msg=e_new, size=(h.shape[0], h.shape[0]))
        return h + self.node_mlp(torch.cat([h, agg], dim=1)), e + e_new

    def edge_update(self, x_i, x_j, edge_attr):
        return self.edge_mlp(torch.cat([edge_attr, x_i, x_j], dim=1))

    def message(self, msg):
        return msg


class MeshGraphNet(nn.Module):
    """Encode-process-decode GNN on mesh edges (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, n_layers: int = 6,
                 dim: int = 2, use_pos: bool = True, radius: float | None = None, k: int = 8,
                 activation: str = "relu"):
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"dim must be 2 or 3, got {dim}")
        if in_channels < 0 or out_channels < 1 or hidden < 1 or n_layers < 1:
            raise InputError(f"need in_channels >= 0, out_channels >= 1, hidden >= 1, n_layers >= 1; "
                             f"got {in_channels}, {out_channels}, {hidden}, {n_layers}")
        self.config = plain_config(dict(name="gnn", in_channels=in_channels, out_channels=out_channels,
                                  hidden=hidden, n_layers=n_layers, dim=dim, use_pos=use_pos,
                                  radius=radius, k=k, activation=activation))
        self.in_channels, self.dim, self.use_pos = in_channels, dim, use_pos
        self.radius, self.k = radius, k
        self.node_encoder = mlp([in_channels + (dim if use_pos else 0), hidden, hidden], activation,
                                layer_norm=True)
        self.edge_encoder = mlp([dim + 1, hidden, hidden], activation, layer_norm=True)
        self.processor = nn.ModuleList(_GraphNetBlock(hidden, activation) for _ in range(n_layers))
        self.decoder = mlp([hidden, hidden, out_channels], activation)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, data) -> torch.Tensor:
        pos = data.pos
        if pos.dim() != 2 or pos.shape[1] != self.dim:
            raise InputError(f"MeshGraphNet(dim={self.dim}) needs data.pos [N, {self.dim}], "
                             f"got {tuple(pos.shape)}")
        x = getattr(data, "x", None)
        x = pos.new_zeros(pos.shape[0], 0) if x is None else x.reshape(x.shape[0], -1).to(pos.dtype)
        if x.shape[1] != self.in_channels:
            raise InputError(f"MeshGraphNet expects data.x with {self.in_channels} channels, "
                             f"got {x.shape[1]}")
        edge_index = mesh_edges(data, self.radius, self.k)
        rel = pos[edge_index[0]] - pos[edge_index[1]]  # y_j - x_i
        box = periodic_box(data, self.dim)
        if box is not None:
            L = torch.as_tensor(box, dtype=pos.dtype, device=pos.device)
            rel = rel - L * torch.round(rel / L)
        e = self.edge_encoder(torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1))
        h = self.node_encoder(torch.cat([x, pos], dim=1) if self.use_pos else x)
        # PyG convention: edge_index[0] = source j, edge_index[1] = target i
        for block in self.processor:
            h, e = block(h, edge_index, e)
        return self.decoder(h)

    def extra_repr(self) -> str:
        c = self.config
        return f"in={c['in_channels']}, out={c['out_channels']}, hidden={c['hidden']}, n_layers={c['n_layers']}"
