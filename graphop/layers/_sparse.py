"""Private helpers of the latent-grid operators: per-sample splitting of a batch, content keys,
an LRU cache of scipy operators, and a sparse product with a precomputed transpose.

An operator for a batch is either one matrix applied with the batch folded into the columns
(every sample shares one geometry) or the block-diagonal matrix over the samples. The backward
pass multiplies by the transpose, which is stored as its own CSR matrix (a CSR transpose product
is much slower than a CSR product on CPU).
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["split_batch", "content_key", "BatchOperator", "OperatorCache", "sparse_matmul"]


def split_batch(data) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """[(pos [n_b, d] float64, weight [n_b] float64 or None)] for every sample of ``data``
    (a Data or a Batch; samples are contiguous, delimited by ``ptr`` or ``batch``)."""
    pos = getattr(data, "pos", None)
    if pos is None:
        raise ValueError("data has no 'pos' (point coordinates [N, d])")
    pos_np = pos.detach().cpu().double().numpy()
    w = getattr(data, "weight", None)
    w_np = None if w is None else w.detach().cpu().double().numpy().reshape(-1)
    if w_np is not None and len(w_np) != len(pos_np):
        raise ValueError(f"data.weight has {len(w_np)} entries but data.pos has {len(pos_np)} points")
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        ptr = ptr.detach().cpu().numpy()
    elif getattr(data, "batch", None) is not None:
        b = data.batch.detach().cpu().numpy()
        if len(b) and np.any(np.diff(b) < 0):
            raise ValueError("data.batch must be sorted (samples stored contiguously)")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=int(b.max()) + 1 if len(b) else 0))])
    else:
        ptr = np.array([0, len(pos_np)])
    return [(pos_np[a:b], None if w_np is None else w_np[a:b]) for a, b in zip(ptr[:-1], ptr[1:])]


def content_key(pos: np.ndarray, weight, tag) -> str:
    """A hash of the coordinates, weights and operator parameters ``tag`` (a repr-able value)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(pos, dtype="<f8").tobytes())
    h.update(str(pos.shape).encode())
    if weight is not None:
        h.update(np.ascontiguousarray(weight, dtype="<f8").tobytes())
    h.update(repr(tag).encode())
    return h.hexdigest()


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, At, X):
        ctx.At = At
        return torch.sparse.mm(A, X)

    @staticmethod
    def backward(ctx, grad):
        return None, None, torch.sparse.mm(ctx.At, grad.contiguous())


def sparse_matmul(A: torch.Tensor, At: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """A @ X for a sparse CSR ``A`` with its transpose ``At`` used in the backward pass."""
    return _SparseMatmul.apply(A, At, X)


def _to_torch_csr(mat: sp.csr_matrix, device, dtype) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.as_tensor(mat.indptr.astype(np.int64)), torch.as_tensor(mat.indices.astype(np.int64)),
            torch.as_tensor(mat.data, dtype=dtype), size=mat.shape).to(device)


class BatchOperator:
    """A sparse linear map on stacked point/grid features [B*n, C] -> [B*m, C].

    ``fold`` > 1 means one [m, n] matrix shared by ``fold`` samples (the batch is folded into
    the columns); otherwise ``A`` is the block-diagonal [sum m_b, sum n_b] matrix."""

    def __init__(self, A: torch.Tensor, At: torch.Tensor, fold: int = 1):
        self.A, self.At, self.fold = A, At, fold

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.A.shape
        return m * self.fold, n * self.fold

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[0] != self.shape[1]:
            raise ValueError(f"operator expects {self.shape[1]} rows of features, got {X.shape[0]}")
        if X.dtype != self.A.dtype:
            raise ValueError(f"features are {X.dtype} but the operator was built for {self.A.dtype}")
        if self.fold == 1:
            return sparse_matmul(self.A, self.At, X.contiguous())
        B, C = self.fold, X.shape[1]
        m, n = self.A.shape
        Xf = X.reshape(B, n, C).transpose(0, 1).reshape(n, B * C)
        Y = sparse_matmul(self.A, self.At, Xf)
        return Y.reshape(m, B, C).transpose(0, 1).reshape(B * m, C)


class OperatorCache:
    """LRU cache: content key -> (scipy matrix, extra array), and (keys, device, dtype) ->
    torch batch operators. ``max_items`` bounds the per-geometry entries, ``max_batches`` the
    assembled batch operators."""

    def __init__(self, max_items: int = 512, max_batches: int = 16):
        self.items: OrderedDict = OrderedDict()
        self.batches: OrderedDict = OrderedDict()
        self.max_items, self.max_batches = max_items, max_batches

    def clear(self) -> None:
        self.items.clear()
        self.batches.clear()

    def _get(self, store: OrderedDict, key, make, limit: int):
        if key in store:
            store.move_to_end(key)
            return store[key]
        val = make()
        store[key] = val
        while len(store) > limit:
            store.popitem(last=False)
        return val

    def batch(self, keys: list[str], build, like: torch.Tensor):
        """The batch operator for per-sample ``keys``; ``build(i)`` -> (csr, extra or None)
        makes sample i's matrix on a miss. Returns (BatchOperator, extra [B, ...] tensor or None)."""
        dev, dt = like.device, like.dtype
        bkey = (tuple(keys), str(dev), dt)

        def assemble():
            mats = [self._get(self.items, k, lambda i=i: build(i), self.max_items)
                    for i, k in enumerate(keys)]
            shared = len(set(keys)) == 1
            A = mats[0][0] if shared else sp.block_diag([m for m, _ in mats], format="csr")
            At = A.T.tocsr()
            op = BatchOperator(_to_torch_csr(A.tocsr(), dev, dt), _to_torch_csr(At, dev, dt),
                               fold=len(keys) if shared else 1)
            extra = None
            if mats[0][1] is not None:
                extra = torch.as_tensor(np.stack([e for _, e in mats]), dtype=dt, device=dev)
            return op, extra

        return self._get(self.batches, bkey, assemble, self.max_batches)
