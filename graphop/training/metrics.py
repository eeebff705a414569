"""Quadrature-weighted error metrics on meshes: one number per sample that means the same on
every mesh.

The relative L2 error of a prediction p against a target u on one sample (one graph of a
batch) is the ratio of function-space norms, each integral computed with the sample's
quadrature weights w_j (lumped mass, or the k-NN density estimate of a point cloud)::

    rel_l2 = sqrt( sum_j w_j |p_j - u_j|^2  /  sum_j w_j |u_j|^2 )

where |.| is the Euclidean norm over channels. Because both integrals use the same weights,
the ratio does not depend on how many points the mesh has or where they are (up to the
quadrature error), so a model evaluated on a finer mesh or a point cloud gets a comparable
score. Uniform weights (``weight=None``) give the usual discrete relative L2 error.

Everything is vectorised over a ``torch_geometric`` batch with one ``scatter`` per integral;
there is no Python loop over graphs or nodes.

Shapes:
    pred, target: [N, C] (or [N]); weight: [N]; batch: [N] long (graph index) or None;
    returns [B] (B = number of graphs, 1 when ``batch`` is None).
"""
from __future__ import annotations

import torch
from torch_geometric.utils import scatter

from graphop.errors import InputError

__all__ = ["relative_l2", "relative_l2_loss", "weighted_sq_norm"]


def weighted_sq_norm(values: torch.Tensor, weight: torch.Tensor | None,
                     batch: torch.Tensor | None = None, num_graphs: int | None = None
                     ) -> torch.Tensor:
    """Per-graph integral sum_j w_j |v_j|^2 of a field, shape [B].

    Args:
        values: [N, C] or [N] field values.
        weight: [N] quadrature weights (None = all ones).
        batch: [N] graph index of every node (None = one graph).
        num_graphs: number of graphs B (default: batch.max() + 1).
    """
    v = values.reshape(values.shape[0], -1)
    sq = (v * v).sum(dim=1)
    if weight is not None:
        if weight.shape != sq.shape:
            raise InputError(f"weight must have shape [{sq.shape[0]}], got {tuple(weight.shape)}")
        sq = sq * weight.to(sq.dtype)
    if batch is None:
        return sq.sum().reshape(1)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    return scatter(sq, batch, dim=0, dim_size=num_graphs, reduce="sum")


def relative_l2(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                batch: torch.Tensor | None = None, num_graphs: int | None = None,
                eps: float = 1e-30) -> torch.Tensor:
    """Quadrature-weighted relative L2 error per graph, shape [B] (see the module docstring).

    Args:
        pred: [N, C] prediction.
        target: [N, C] truth (same shape as ``pred``).
        weight: [N] quadrature weights; None uses uniform weights.
        batch: [N] graph index (from a ``Batch``); None treats everything as one graph.
        num_graphs: number of graphs (default ``batch.max() + 1``).
        eps: floor of the denominator, so an all-zero target gives the absolute error
            divided by sqrt(eps) instead of a division by zero.
    """
    if pred.shape != target.shape:
        raise InputError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    num = weighted_sq_norm(pred - target, weight, batch, num_graphs)
    den = weighted_sq_norm(target, weight, batch, num_graphs)
    return torch.sqrt(num / den.clamp_min(eps))


def relative_l2_loss(pred: torch.Tensor, data, reduction: str = "mean") -> torch.Tensor:
    """The training loss: :func:`relative_l2` of ``pred`` against ``data.y`` with
    ``data.loss_weight`` where a sample carries it (the refinement augmentation,
    :mod:`graphop.data.augment`: 0 at the points it added), else ``data.weight``, and
    ``data.batch``, averaged over the graphs (``reduction="mean"``), summed (``"sum"``) or
    returned per graph (``"none"``)."""
    batch = getattr(data, "batch", None)
    num_graphs = int(getattr(data, "num_graphs", 1)) if batch is not None else None
    weight = getattr(data, "loss_weight", None)
    if weight is None:
        weight = getattr(data, "weight", None)
    err = relative_l2(pred, data.y.to(pred.dtype), weight, batch, num_graphs)
    if reduction == "mean":
        return err.mean()
    if reduction == "sum":
        return err.sum()
    if reduction == "none":
        return err
    raise InputError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
