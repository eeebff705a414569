"""Building and caching the sparse operators of the local layers.

Two operators, both a CSR matrix ``A`` of shape ``(N_out * L, N_in)`` with rows ordered
``i * L + l`` (point major), so that ``Y = A @ X`` viewed as ``[N_out, L * C]`` is contracted
with ``theta [L, C, O]`` by one dense GEMM (no copy when the batch is not folded):

* DISCO (:func:`disco_matrix`): ``A[i L + l, j] = psi_l((y_j - x_i) / r) w_j`` for
  ``|y_j - x_i| <= r`` (minimum image on a torus), optionally divided by ``r^d ||psi_l||_1``;
* the differential stencil (:func:`graphop.layers.stencil.stencil_matrix`):
  ``A[i L + l, j] = a_l(i, j) / h_i`` and ``A[i L + l, i] = -sum_j a_l(i, j) / h_i``.

Operators are built once per geometry in numpy/scipy (float64), kept in a process-wide LRU
cache keyed by a content hash of positions, weights, periodic box and every parameter, and
converted to torch sparse CSR once per (device, dtype). They are never module buffers, so never
in a ``state_dict``.

Batches (torch_geometric ``Batch``): if every graph has the same content, one operator for one
graph is used and the batch is folded into the columns of X (``[N, B*C]``); otherwise the
operator is block diagonal over the graphs (assembled from the cached per-graph blocks).

Shapes:
    :meth:`SparseOperator.matmul`: X [N_in, K] -> Y [N_out * L, K]; gradients flow to X
    through ``grad_X = A^T grad_Y`` with a precomputed transposed CSR.
"""
from __future__ import annotations

import hashlib
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from graphop.layers.basis import KernelBasis
from graphop.geometry.neighbors import _boxsize, check_radius_operator, radius_neighbors

__all__ = ["SparseOperator", "OperatorCache", "disco_matrix", "GraphSet", "graph_set",
           "cached_operator", "apply_operator", "operator_cache", "blockdiag_cache",
           "csr_from_coo"]


# ---------------------------------------------------------------------------- the operator
class _CSRMatMul(torch.autograd.Function):
    """Y = A @ X (or A^T @ X) with grad_X = A^T @ grad_Y; double backward through the same op."""

    @staticmethod
    def forward(ctx, x, op, transpose):
        ctx.op, ctx.transpose = op, transpose
        return op.product(x, transpose)

    @staticmethod
    def backward(ctx, grad):
        return _CSRMatMul.apply(grad.contiguous(), ctx.op, not ctx.transpose), None, None


#: Sparse kernel on CPU: "scipy" (scipy's CSR x dense loop, zero-copy through numpy; measured
#: faster than torch's CPU CSR kernel on this project's machines) or "torch". CUDA always uses
#: torch (cuSPARSE).
CPU_BACKEND = "scipy"


class SparseOperator:
    """A fixed CSR matrix of shape ``(n_out * n_basis, n_in)``, rows ``i * n_basis + l``.

    Keeps the transpose (for the backward pass) and one copy per (device, dtype).

    Args:
        matrix: scipy CSR (float64).
        n_basis: L, the number of rows per output point.
        n_out: N_out.
    """

    def __init__(self, matrix: sp.csr_matrix, n_basis: int, n_out: int):
        if matrix.shape[0] != n_basis * n_out:
            raise ValueError(f"operator has {matrix.shape[0]} rows, expected {n_out} x {n_basis}")
        self.matrix = matrix
        self.n_basis, self.n_out, self.n_in = n_basis, n_out, matrix.shape[1]
        self._transpose = None
        self._copies: dict = {}

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    @property
    def nbytes(self) -> int:
        def size(m):
            if isinstance(m, tuple):
                return sum(size(t) for t in m)
            if m is self.matrix or m is self._transpose:
                return 0
            if torch.is_tensor(m):
                return sum(t.numel() * t.element_size()
                           for t in (m.values(), m.col_indices(), m.crow_indices()))
            return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        m = self.matrix
        own = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        own *= 1 + (self._transpose is not None)
        return own + sum(size(m) for m in self._copies.values())

    def transpose_csr(self) -> sp.csr_matrix:
        if self._transpose is None:
            csc = self.matrix.tocsc()   # the CSC arrays of A are the CSR arrays of A^T
            self._transpose = sp.csr_matrix((csc.data, csc.indices, csc.indptr),
                                            shape=self.matrix.shape[::-1])
        return self._transpose

    def _copy(self, device, dtype, transpose: bool):
        device = torch.device(device)
        scipy_path = device.type == "cpu" and CPU_BACKEND == "scipy"
        key = (device, dtype, transpose, scipy_path)
        if key not in self._copies:
            m = self.transpose_csr() if transpose else self.matrix
            if scipy_path:
                np_dtype = torch.empty((), dtype=dtype).numpy().dtype
                self._copies[key] = m if m.dtype == np_dtype else m.astype(np_dtype)
            else:
                self._copies[key] = _to_torch(m, device, dtype)
        return self._copies[key]

    def torch_pair(self, device, dtype):
        """``(A, A^T)`` as torch sparse CSR tensors on ``device`` in ``dtype`` (cached)."""
        key = (torch.device(device), dtype, "torch")
        if key not in self._copies:
            self._copies[key] = (_to_torch(self.matrix, device, dtype),
                                 _to_torch(self.transpose_csr(), device, dtype))
        return self._copies[key]

    def prepare(self, device, dtype) -> None:
        """Build the copies a forward and backward pass on ``device`` will use."""
        self._copy(device, dtype, False), self._copy(device, dtype, True)

    def product(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``A @ x`` (or ``A^T @ x``) without autograd; x [n_in, K] dense."""
        m = self._copy(x.device, x.dtype, transpose)
        if isinstance(m, sp.csr_matrix):
            return torch.from_numpy(np.asarray(m @ x.detach().contiguous().numpy()))
        return m @ x

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ x`` for dense ``x`` [n_in, K], differentiable in ``x``."""
        if x.shape[0] != self.n_in:
            raise ValueError(f"operator expects {self.n_in} input rows, got {x.shape[0]}")
        return _CSRMatMul.apply(x.contiguous(), self, False)

    def __repr__(self) -> str:
        return (f"SparseOperator(n_basis={self.n_basis}, n_out={self.n_out}, n_in={self.n_in}, "
                f"nnz={self.nnz})")


def _to_torch(m: sp.csr_matrix, device, dtype) -> torch.Tensor:
    # int32 indices make the CPU CSR kernel about 2x faster; keep int64 beyond 2^31 entries
    itype = np.int32 if m.nnz < 2**31 - 1 and max(m.shape) < 2**31 - 1 else np.int64
    crow = torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=itype))
    col = torch.from_numpy(np.ascontiguousarray(m.indices, dtype=itype))
    val = torch.from_numpy(np.ascontiguousarray(m.data)).to(dtype)
    with warnings.catch_warnings():   # "sparse CSR support is in beta" is noise here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, m.shape, check_invariants=False).to(device)


def csr_from_coo(rows, cols, vals, shape) -> sp.csr_matrix:
    """CSR from COO triples without duplicates (scipy's O(nnz) counting sort by row)."""
    m = sp.coo_matrix((vals, (rows, cols)), shape=shape)
    m.has_canonical_format = True   # the builders never emit duplicates: skip the merge pass
    return m.tocsr()


def apply_operator(op: SparseOperator, fold: int, x: torch.Tensor,
                   theta: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_l (A X)[i L + l] theta[l]`` for x [fold * n_in, C], theta [L, C, O].

    With ``fold = B > 1`` the B graphs sharing the operator are moved into the columns of X, so
    the whole batch is one sparse product. The contraction over (l, c) is one dense GEMM
    ``[N_out, L*C] @ [L*C, O]``. Returns [fold * n_out, O].
    """
    L, C, O = theta.shape
    n_in, n_out, B = op.n_in, op.n_out, fold
    X = x if B == 1 else x.reshape(B, n_in, C).transpose(0, 1).reshape(n_in, B * C)
    Y = op.matmul(X)                                          # [n_out * L, B * C]
    if B == 1:
        Z = Y.view(n_out, L * C)
    else:
        Z = Y.view(n_out, L, B, C).permute(2, 0, 1, 3).reshape(B * n_out, L * C)
    return Z @ theta.reshape(L * C, O)


# ---------------------------------------------------------------------------- DISCO build
#: most neighbour pairs one chunk of a DISCO build holds. The build's scratch arrays take about
#: 100 bytes a pair, so this bounds them near 0.5 GB however large the mesh; the finished CSR
#: keeps about 12 bytes a non-zero.
BUILD_CHUNK_PAIRS = 5_000_000


def _mean_neighbours(pos_out, pos_in, radius, periodic, sample: int = 256) -> float:
    """Neighbours within ``radius`` per output point, estimated on a random sample of them."""
    box = _boxsize(periodic, pos_in.shape[1])
    src = pos_in if box is None else np.mod(pos_in, box)
    q = pos_out[np.random.default_rng(0).choice(len(pos_out), min(sample, len(pos_out)),
                                                replace=False)]
    q = q if box is None else np.mod(q, box)
    return float(cKDTree(src, boxsize=box).query_ball_point(q, radius, return_length=True).mean())


def _disco_rows(nb, w, radius: float, basis: KernelBasis, normalize: bool) -> sp.csr_matrix:
    e, l, v = basis.evaluate(nb.offsets / radius)
    rows = np.repeat(np.arange(nb.n_query, dtype=np.int64), nb.counts())[e]
    cols = nb.indices[e]
    vals = v * w[cols]
    if normalize:
        vals = vals / (radius ** basis.dim * basis.l1_norms())[l]
    L = basis.n_basis
    return csr_from_coo(rows * L + l, cols, vals, (nb.n_query * L, len(w)))


def _stack_rows(parts) -> sp.csr_matrix:
    """CSR matrices with the same columns stacked vertically, by concatenating their arrays."""
    nnz_off = np.cumsum([0] + [m.nnz for m in parts])
    indptr = np.concatenate([m.indptr[:-1].astype(np.int64) + o for m, o in zip(parts, nnz_off)]
                            + [nnz_off[-1:]])
    return sp.csr_matrix((np.concatenate([m.data for m in parts]),
                          np.concatenate([m.indices for m in parts]), indptr),
                         shape=(sum(m.shape[0] for m in parts), parts[0].shape[1]))


def disco_matrix(pos_out, pos_in, weight_in, radius: float, basis: KernelBasis, *,
                 periodic=None, normalize: bool = True, same: bool = False) -> sp.csr_matrix:
    """The DISCO operator Psi (see the module docstring) as scipy CSR [N_out * L, N_in].

    ``same=True`` means pos_out is pos_in (uses the faster symmetric pair search). Large
    operators are built in chunks of output rows holding about :data:`BUILD_CHUNK_PAIRS`
    neighbour pairs each, so the scratch memory stays bounded (the result is identical).
    """
    pos_in = np.asarray(pos_in, dtype=np.float64)
    pos_out = pos_in if same else np.asarray(pos_out, dtype=np.float64)
    # refuse an operator that cannot fit before building it; warn on a nearly dense one.
    # Measured: 12 B/nonzero in scipy CSR (x2 while chunks are stacked) + 24 B for the torch
    # A and A^T; about 250 B per neighbour pair of scratch, for one chunk at a time
    check_radius_operator(pos_out, pos_in, radius, periodic=periodic,
                          entries_per_pair=basis.entries_per_offset(), bytes_per_entry=48,
                          scratch_per_pair=250, max_scratch_pairs=BUILD_CHUNK_PAIRS, what="DISCO")
    w = np.asarray(weight_in, dtype=np.float64)
    n_out = len(pos_out)
    chunk = n_out
    if n_out * len(pos_in) > BUILD_CHUNK_PAIRS:
        per_row = _mean_neighbours(pos_out, pos_in, radius, periodic)
        chunk = max(1, int(BUILD_CHUNK_PAIRS / max(per_row, 1.0)))
    if chunk >= n_out:
        nb = radius_neighbors(pos_out, None if same else pos_in, radius, periodic=periodic)
        return _disco_rows(nb, w, radius, basis, normalize)
    return _stack_rows([_disco_rows(radius_neighbors(pos_out[a:a + chunk], pos_in, radius,
                                                     periodic=periodic), w, radius, basis,
                                    normalize)
                        for a in range(0, n_out, chunk)])


# ---------------------------------------------------------------------------- graphs + keys
@dataclass
class GraphSet:
    """The graphs of a Data/Batch as numpy slices plus per-graph content keys."""

    pos: torch.Tensor
    ptr: list
    keys: list
    periodic: list
    weight: torch.Tensor | None = None

    @property
    def n_graphs(self) -> int:
        return len(self.ptr) - 1

    def slice(self, b: int):
        lo, hi = self.ptr[b], self.ptr[b + 1]
        p = self.pos[lo:hi].detach().cpu().double().numpy()
        w = None if self.weight is None else self.weight[lo:hi].detach().cpu().double().numpy()
        return p, w, self.periodic[b]


_KEY_MEMO: dict = {}


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def graph_set(data, *, need_weight: bool, what: str = "data") -> GraphSet:
    """Validate ``data`` (Data or Batch) and split it into graphs with content keys.

    Keys are sha256 digests of each graph's positions (+ weights, + periodic box); the digests
    of a given set of tensors are memoised by identity and in-place version counter, so a
    training loop that reuses the same ``Data`` objects does not rehash them.
    """
    pos = getattr(data, "pos", None)
    if pos is None:
        raise ValueError(f"{what} has no 'pos' (point coordinates [N, d])")
    if not torch.is_tensor(pos) or pos.dim() != 2 or pos.shape[1] not in (1, 2, 3):
        raise ValueError(f"{what}.pos must be a tensor [N, d] with d in (1, 2, 3), "
                         f"got {tuple(getattr(pos, 'shape', ()))}")
    n = pos.shape[0]
    weight = getattr(data, "weight", None) if need_weight else None
    if need_weight:
        if weight is None:
            raise ValueError(f"{what} has no 'weight' (quadrature weights [N]); "
                             "build it with Mesh.to_data() or Mesh.from_points()")
        if weight.dim() == 2 and weight.shape[1] == 1:
            weight = weight[:, 0]
        if weight.shape != (n,):
            raise ValueError(f"{what}.weight must have shape [{n}], got {tuple(weight.shape)}")
    ptr = getattr(data, "ptr", None)
    if ptr is None:
        b = getattr(data, "batch", None)
        ptr = [0, n] if b is None else [0] + torch.bincount(b.cpu()).cumsum(0).tolist()
    else:
        ptr = ptr.tolist()
    per = getattr(data, "periodic", None)
    if per is None:
        periodic = [None] * (len(ptr) - 1)
    else:
        per = torch.as_tensor(per, dtype=torch.float64).reshape(-1, pos.shape[1]).cpu().numpy()
        if len(per) == 1:
            per = np.repeat(per, len(ptr) - 1, axis=0)
        if len(per) != len(ptr) - 1:
            raise ValueError(f"{what}.periodic has {len(per)} rows for {len(ptr) - 1} graphs")
        periodic = [tuple(float(v) for v in row) for row in per]
    tensors = (pos,) if weight is None else (pos, weight)
    memo_key = tuple((id(t), t._version) for t in tensors) + (tuple(ptr), tuple(periodic))
    hit = _KEY_MEMO.get(memo_key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
        keys = hit[1]
    else:
        p = pos.detach().cpu().numpy()
        w = None if weight is None else weight.detach().cpu().numpy()
        keys = [_digest(p[lo:hi], None if w is None else w[lo:hi],
                        None if pr is None else np.asarray(pr))
                for lo, hi, pr in zip(ptr[:-1], ptr[1:], periodic)]
        if len(_KEY_MEMO) > 256:
            _KEY_MEMO.clear()
        _KEY_MEMO[memo_key] = ([weakref.ref(t) for t in tensors], keys)
    return GraphSet(pos, ptr, keys, periodic, weight)


# ---------------------------------------------------------------------------- the cache
class OperatorCache:
    """Process-wide LRU of :class:`SparseOperator` keyed by content (see module docstring).

    Args:
        max_entries: most operators kept (default 256).
        max_bytes: most bytes kept (default 4 GiB), counting scipy arrays and torch copies.
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = 4 << 30):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._ops: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key, build):
        op = self._ops.get(key)
        if op is not None:
            self.hits += 1
            self._ops.move_to_end(key)
            return op
        self.misses += 1
        op = build()
        self._ops[key] = op
        self._evict()
        return op

    def _evict(self):
        total = sum(o.nbytes for o in self._ops.values())
        while len(self._ops) > 1 and (len(self._ops) > self.max_entries or total > self.max_bytes):
            _, old = self._ops.popitem(last=False)
            total -= old.nbytes

    def clear(self):
        self._ops.clear()
        self.hits = self.misses = 0

    def __len__(self):
        return len(self._ops)

    def __contains__(self, key):
        return key in self._ops


operator_cache = OperatorCache()
#: assembled block-diagonal operators of batches of different meshes: a separate, small LRU so
#: that shuffled batches (new combinations every step) never evict the per-mesh operators
blockdiag_cache = OperatorCache(max_entries=16)


def cached_operator(kind: str, params: tuple, g_in: GraphSet, g_out: GraphSet | None, build):
    """The operator for every graph pair, from the cache: ``(SparseOperator, fold)``.

    ``build(pos_out, pos_in, weight_in, periodic, same) -> (csr, n_basis)`` makes one block.
    Returns ``fold = B`` when all B graphs share one geometry (batch folded into columns),
    else ``fold = 1`` with a block-diagonal operator.
    """
    same = g_out is None
    g_out = g_in if same else g_out
    if g_out.n_graphs != g_in.n_graphs:
        raise ValueError(f"out has {g_out.n_graphs} graphs but data has {g_in.n_graphs}")
    pairs = list(zip(g_in.keys, g_out.keys))

    def block(b):
        def make():
            p_in, w_in, per = g_in.slice(b)
            p_out = p_in if same else g_out.slice(b)[0]
            m, L = build(p_out, p_in, w_in, per, same)
            return SparseOperator(m, L, len(p_out))
        return operator_cache.get((kind, params, same) + pairs[b], make)

    if len(set(pairs)) == 1:
        return block(0), g_in.n_graphs
    blocks = [block(b) for b in range(g_in.n_graphs)]
    return blockdiag_cache.get((kind, params, same) + tuple(pairs),
                               lambda: _block_diagonal(blocks)), 1


def _block_diagonal(blocks) -> SparseOperator:
    """Per-graph operators (rows i*L + l) stacked block-diagonally, by concatenating CSR arrays."""
    L = blocks[0].n_basis
    mats = [b.matrix for b in blocks]
    nnz_off = np.cumsum([0] + [m.nnz for m in mats])
    col_off = np.cumsum([0] + [m.shape[1] for m in mats])
    indptr = np.concatenate([m.indptr[:-1] + o for m, o in zip(mats, nnz_off)] + [nnz_off[-1:]])
    indices = np.concatenate([m.indices + o for m, o in zip(mats, col_off)])
    data = np.concatenate([m.data for m in mats])
    n_out = sum(b.n_out for b in blocks)
    m = sp.csr_matrix((data, indices, indptr), shape=(n_out * L, int(col_off[-1])))
    return SparseOperator(m, L, n_out)
