"""The one sparse-operator runtime of graphop: every precomputed operator of every layer.

Every geometric operator of graphop is a fixed sparse matrix built once per geometry: the DISCO
integral (:mod:`graphop.layers.disco`), the differential stencil (:mod:`graphop.layers.stencil`),
the latent-grid encoder and decoder (:mod:`graphop.layers.latent`), the GNN baseline's edge
lists (:mod:`graphop.models.gnn`). This module holds what they share:

* :class:`SparseOperator`: a CSR matrix ``A`` of shape ``(n_out * L, n_in)`` with rows ordered
  ``i * L + l`` (point major; ``L = 1`` for plain maps), its transpose for the backward pass,
  and one copy per (device, dtype). ``Y = A @ X`` is differentiable in X
  (``grad_X = A^T grad_Y``, double backward through the same op). An operator over
  :data:`LOCALITY_MIN_POINTS` points or more carries a locality order of its points (a Z-order
  curve, :func:`locality_orders`): it is built on its points listed in that order, its copies
  are stored in it and its products gather X into it, so that the rows a row of A reads sit
  together in memory (3-6x faster products on points listed in random order).
* :func:`fold_matmul` and :func:`apply_operator`: ``A @ X`` for a batch, graph block by graph
  block (or one block-diagonal product when a small mesh is shared by the batch), and the
  contraction with ``theta [L, C, O]`` as one dense GEMM per block; no copy of the features.
* :func:`graph_set`: the graphs of a ``Data``/``Batch`` with a content key per graph (a sha256
  digest of positions, weights and periodic box, and of the cells when an integral operator
  integrates over them). On a GPU, :func:`to_device` moves a batch after
  :func:`tag_geometry` has kept its geometry on the host (:class:`HostGeometry`): the keys,
  graph offsets, torus box and the operator builds then read the host copy, so a training step
  whose operators are cached reads nothing back from the device.
* Quadrature of the integral operators (DISCO, the grid encoder, the mollifier),
  ``quadrature=``: ``"cells"`` (default) integrates the piecewise-linear function that the
  nodal values define, with interior points of every cell
  (:func:`graphop.geometry.cells.interpolating_quadrature`): an operator built at those points
  and weights, ``A_q [n_out L, Q]``, times the interpolation ``B [Q, n_in]``. A planar point
  cloud is integrated over the filtered Delaunay triangles of its points
  (:mod:`graphop.geometry.triangulate`), a planar cloud on a torus over those of the torus
  (:func:`graphop.geometry.triangulate.triangulate_periodic`), and a torus mesh's cells across
  the seam are unwrapped to the nearest images; 3D clouds and surfaces without cells use
  ``"points"``: the nodes with ``data.weight``. ``"cells-except-torus"`` is ``"cells"`` with
  nodal sums on every torus: what ``"cells"`` did up to checkpoint version 3, kept for the
  models trained then.
* :class:`OperatorCache` and its one instance :data:`operator_cache`: an LRU bounded in bytes
  (``GRAPHOP_CACHE_BYTES``, default the larger of 4 GiB and 40% of the memory available when
  graphop is imported), keyed by content and the operator's parameters, with
  hit/miss counters and ``clear()``; it also keeps the block-diagonal operators of batches of
  different meshes (in a small LRU of their own, so that shuffled batches never evict the
  per-mesh operators) and the memo of content keys. Operators are never module buffers, so
  never in a ``state_dict``.

Operators are built in numpy/scipy (float64); a large one in blocks of output rows
(:func:`row_chunk`, :func:`build_rows`) that bound the build's scratch memory and run on
:func:`build_threads` threads, stacked in order into the matrix one thread builds. Products
run through torch's CSR kernel (int32 indices while they fit) on the CPU and on CUDA
(cuSPARSE); scipy's kernel remains as ``cpu_backend="scipy"`` (:data:`CPU_BACKEND`).

Shapes:
    :meth:`SparseOperator.matmul`: X [n_in, K] -> Y [n_out * L, K].
    :func:`fold_matmul`: x [fold * n_in, C] -> [fold * n_out * L, C] (graph major).
    :func:`apply_operator`: x [fold * n_in, C], theta [L, C, O] -> [fold * n_out, O].
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

import graphop.jit as jit
from graphop.errors import GraphopError, GraphopWarning, InputError
from graphop.geometry.cells import interpolation_matrix, quadrature_rule
from graphop.geometry.neighbors import spatial_order
from graphop.geometry.triangulate import triangulate_cloud, triangulate_periodic
from graphop.memory import available_memory, env_bytes, format_bytes

__all__ = ["SparseOperator", "BlockList", "OperatorCache", "operator_cache", "GraphSet", "graph_set",
           "QUADRATURE", "quadrature_mode", "uses_cells", "batch_operator", "cached_operator",
           "fold_matmul", "apply_operator", "csr_from_coo", "locality_orders", "permute_csr",
           "point_number", "transpose_sorted",
           "LOCALITY_MIN_POINTS", "stack_rows", "stack_permuted",
           "ordered_build", "build_rows", "row_chunk",
           "may_split", "build_threads", "block_diagonal",
           "check_features", "n_points", "HostGeometry", "tag_geometry", "host_geometry",
           "to_device"]


# ---------------------------------------------------------------------------- the operator
#: the CPU kernel of every product: ``"torch"`` (torch's CSR kernel, int32 indices) or
#: ``"scipy"`` (``$GRAPHOP_CPU_SPARSE``). Measured here, one thread, float32, 30 entries per row:
#: torch 43 / 404 ms against scipy 68 / 510 ms at 20k / 100k rows x 32 columns, and 1.2 against
#: 1.9 ms at 256 rows x 256 columns (a 16 x 16 grid's DISCO for a batch of 8).
CPU_BACKEND = os.environ.get("GRAPHOP_CPU_SPARSE", "torch")


class _CSRMatMul(torch.autograd.Function):
    """Y = A @ X (or A^T @ X) with grad_X = A^T grad_Y; double backward through the same op.

    ``x_ordered`` / ``out_ordered``: the rows of X / Y in the operator's locality order
    (:meth:`SparseOperator.product`); the backward pass swaps them, so a gradient arrives and
    leaves in the layout its forward value had."""

    @staticmethod
    def forward(ctx, x, op, transpose, x_ordered=False, out_ordered=False):
        ctx.op, ctx.transpose = op, transpose
        ctx.x_ordered, ctx.out_ordered = x_ordered, out_ordered
        return op.product(x, transpose, x_ordered=x_ordered, out_ordered=out_ordered)

    @staticmethod
    def backward(ctx, grad):
        return (_CSRMatMul.apply(grad.contiguous(), ctx.op, not ctx.transpose, ctx.out_ordered,
                                 ctx.x_ordered), None, None, None, None)


class SparseOperator:
    """A fixed CSR matrix of shape ``(n_out * n_basis, n_in)``, rows ``i * n_basis + l``.

    Keeps the transpose (for the backward pass) and one copy per (device, dtype).

    **Locality order.** A large operator may carry ``order_out`` / ``order_in``: permutations of
    its output and input points that put points near each other in space near each other in
    memory (:func:`locality_orders`, a Z-order curve). Its torch copies are then stored
    permuted, ``P_out A P_in^T`` (rows and columns in those orders, columns sorted), and every
    product gathers X into that order first and puts the rows of the result back (or leaves
    them in order for the caller: :func:`apply_operator` permutes after its contraction, on
    ``O`` instead of ``L * C`` columns). ``matrix`` and every result stay in the points' own
    order; only the memory traffic changes. On points listed in random order (a random cloud,
    a mesher's numbering) each row of A reads rows of X scattered over memory: measured on a
    100k-point random cloud, one thread, 32 columns, the DISCO product 297 -> 48 ms and its
    transpose 589 -> 90 ms, the mollifier gradient's 97 -> 21 and 265 -> 22 ms.

    Args:
        matrix: scipy CSR (float64).
        n_basis: L, the number of rows per output point (default 1).
        n_out: N_out (default ``rows / n_basis``).
        extra: an optional per-output array [n_out, ...] that travels with the operator (the
            latent encoder's occupancy); stacked over the graphs of a batch.
        cpu_backend: ``"torch"`` (torch's CPU CSR kernel) or ``"scipy"`` (scipy's CSR x dense
            loop); default :data:`CPU_BACKEND`. CUDA always uses torch.
        order_out, order_in: optional permutations [n_out] / [n_in] (the locality order
            above); None: the points' own order.
        in_order: ``matrix`` is given in the locality order, ``P_out A P_in^T`` (as
            :func:`cached_operator` builds a large operator: on its points listed in that
            order); its rows are sorted if they are not. The product copies are then that
            matrix and one transpose of it, and A in the points' own order (``matrix``) is made
            only when something asks for it. Ignored without orders.
    """

    def __init__(self, matrix: sp.csr_matrix, n_basis: int = 1, n_out: int | None = None, *,
                 extra: np.ndarray | None = None, cpu_backend: str | None = None,
                 order_out=None, order_in=None, in_order: bool = False):
        n_out = matrix.shape[0] // n_basis if n_out is None else n_out
        if matrix.shape[0] != n_basis * n_out:
            raise InputError(f"operator has {matrix.shape[0]} rows, expected {n_out} x {n_basis}")
        cpu_backend = CPU_BACKEND if cpu_backend is None else cpu_backend
        if cpu_backend not in ("scipy", "torch"):
            raise InputError(f"cpu_backend must be 'scipy' or 'torch', got {cpu_backend!r}")
        if extra is not None and len(extra) != n_out:
            raise InputError(f"extra has {len(extra)} rows for {n_out} output points")
        self.n_basis, self.n_out, self.n_in = n_basis, n_out, matrix.shape[1]
        self.extra, self.cpu_backend = extra, cpu_backend
        self.order_out = _permutation(order_out, n_out, "order_out")
        self.order_in = _permutation(order_in, self.n_in, "order_in")
        # the matrix as given: A itself, or (in_order) P_out A P_in^T, whose rows the products
        # need sorted; the other layout is derived from it when asked for
        self._matrix, self._in_order = matrix, None
        if in_order and self.ordered:
            if not matrix.has_sorted_indices:
                matrix.sort_indices()
            self._matrix, self._in_order = None, matrix
        self._transpose = None
        self._copies: dict = {}

    @property
    def matrix(self) -> sp.csr_matrix:
        """A in the points' own order (scipy CSR), rows ``i * n_basis + l``. An operator made
        ``in_order`` computes it on first use (and keeps it)."""
        if self._matrix is None:
            rank = None if self.order_out is None else _inverse(self.order_out)
            rows = None if rank is None else _point_rows(rank, self.n_basis)
            cols = None if self.order_in is None else _inverse(self.order_in)
            m = self._in_order
            self._matrix = permute_csr(m, rows, cols, m.dtype)[0]
        return self._matrix

    def ordered_csr(self) -> sp.csr_matrix:
        """A in the layout of its products: ``P_out A P_in^T`` (see :meth:`permuted_csr`) with
        float64 values when the operator has a locality order, else A itself."""
        if self._in_order is not None:
            return self._in_order
        if not self.ordered:
            return self.matrix
        return self.permuted_csr()[0]

    @property
    def nnz(self) -> int:
        return (self._in_order if self._matrix is None else self._matrix).nnz

    @property
    def made_in_order(self) -> bool:
        """Whether the operator holds its matrix in the locality order (``in_order``), the
        layout :meth:`ordered_csr` gives, rather than in the points' own order."""
        return self._in_order is not None

    @property
    def ordered(self) -> bool:
        """Whether the operator carries a locality order (``order_out`` or ``order_in``)."""
        return self.order_out is not None or self.order_in is not None

    @property
    def nbytes(self) -> int:
        """Bytes held: the scipy matrix (in either layout), its transpose, the extra array,
        the orders and every copy."""
        def arrays(m):
            return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes

        def size(m):
            if isinstance(m, tuple):
                return sum(size(t) for t in m)
            if m is self._matrix or m is self._transpose or m is self._in_order:
                return 0
            if torch.is_tensor(m) and m.layout == torch.sparse_csr:
                return sum(t.numel() * t.element_size()
                           for t in (m.values(), m.col_indices(), m.crow_indices()))
            if torch.is_tensor(m):
                return m.numel() * m.element_size()
            return arrays(m)
        own = sum(arrays(m) for m in (self._matrix, self._in_order, self._transpose)
                  if m is not None)
        own += 0 if self.extra is None else self.extra.nbytes
        own += sum(o.nbytes for o in (self.order_out, self.order_in) if o is not None)
        return own + sum(size(m) for m in self._copies.values())

    def transpose_csr(self) -> sp.csr_matrix:
        if self._transpose is None:
            self._transpose = _transposed(self.matrix)
        return self._transpose

    def permuted_csr(self, dtype=np.float64):
        """``(P_out A P_in^T, its transpose)`` as scipy CSR with ``dtype`` values: row
        ``k L + l`` is row ``order_out[k] L + l`` of A, column ``k`` is column ``order_in[k]``,
        columns sorted within each row (:func:`permute_csr`); A itself without orders. An
        operator made ``in_order`` holds the first already: only its transpose is made."""
        if self._in_order is not None:
            m = self._in_order
            p = m if m.dtype == dtype else sp.csr_matrix(
                (m.data.astype(dtype), m.indices, m.indptr), shape=m.shape)
            return p, transpose_sorted(p)
        rows = None if self.order_out is None else _point_rows(self.order_out, self.n_basis)
        return permute_csr(self.matrix, rows, self.order_in, dtype)

    def _copy(self, device, dtype, transpose: bool):
        device = torch.device(device)
        scipy_path = device.type == "cpu" and self.cpu_backend == "scipy"
        key = (device, dtype, transpose, scipy_path)
        if key not in self._copies:
            start = time.perf_counter()
            self._make_copy(key)
            COPY_TIME["seconds"] += time.perf_counter() - start
        return self._copies[key]

    def _make_copy(self, key) -> None:
        """Make the copy of ``key`` (see :meth:`_copy`)."""
        device, dtype, transpose, scipy_path = key
        if scipy_path:
            m = self.transpose_csr() if transpose else self.matrix
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            self._copies[key] = m if m.dtype == np_dtype else m.astype(np_dtype)
        elif self.ordered:
            # the permuted matrix and its transpose come out of one computation: both are
            # kept when a backward pass may follow (grad enabled), else only the one asked
            # for (inference holds no transposed copy)
            pair = self.permuted_csr(np.float32 if dtype == torch.float32 else np.float64)
            for t in (False, True):
                k = (device, dtype, t, False)
                if k not in self._copies and (t == transpose or torch.is_grad_enabled()):
                    self._copies[k] = _to_torch(pair[t], device, dtype)
        else:
            m = self.transpose_csr() if transpose else self.matrix
            self._copies[key] = _to_torch(m, device, dtype)
            if transpose:   # the torch copy replaces it (rebuilt if a scipy path asks)
                self._transpose = None

    def torch_pair(self, device, dtype):
        """``(A, A^T)`` as the torch sparse CSR tensors the products on ``device`` in ``dtype``
        use: permuted into the locality order when the operator has one (then X must be in
        that order too), else A itself. Made once (with autograd's copies)."""
        with torch.enable_grad():
            return self._copy(device, dtype, False), self._copy(device, dtype, True)

    def extra_on(self, device, dtype) -> torch.Tensor:
        """``extra`` as a tensor on ``device`` in ``dtype``, copied once (not once per step:
        on a GPU every copy from the host is a synchronisation)."""
        key = ("extra", torch.device(device), dtype)
        if key not in self._copies:
            self._copies[key] = torch.as_tensor(self.extra, dtype=dtype, device=device)
        return self._copies[key]

    def _order_on(self, side: str, inverse: bool, device):
        """``order_out`` / ``order_in`` (``side`` "out" / "in") or its inverse as an index
        tensor on ``device`` (copied once), or None without that order."""
        order = self.order_out if side == "out" else self.order_in
        if order is None:
            return None
        key = ("order", side, inverse, torch.device(device))
        if key not in self._copies:
            self._copies[key] = torch.as_tensor(_inverse(order) if inverse else order,
                                                device=device)
        return self._copies[key]

    def _rows(self, y: torch.Tensor, side: str, inverse: bool) -> torch.Tensor:
        """The point blocks of rows of ``y`` (``n`` points of ``len(y) / n`` rows each) taken
        in the order of ``side`` (``inverse``: put back from it); ``y`` itself without it."""
        idx = self._order_on(side, inverse, y.device)
        if idx is None:
            return y
        n = len(idx)
        return y.reshape(n, -1).index_select(0, idx).view(y.shape)

    def natural_rows(self, y: torch.Tensor) -> torch.Tensor:
        """Rows of an output ``y`` [n_out (* L), ...] produced in locality order (``matmul(x,
        ordered_out=True)``, possibly contracted since) put back in the points' order;
        differentiable."""
        return self._rows(y, "out", True)

    def prepare(self, device, dtype) -> None:
        """Build the copies a forward and backward pass on ``device`` will use."""
        with torch.enable_grad():
            self._copy(device, dtype, False), self._copy(device, dtype, True)

    def product(self, x: torch.Tensor, transpose: bool = False, *, x_ordered: bool = False,
                out_ordered: bool = False) -> torch.Tensor:
        """``A @ x`` (or ``A^T @ x``) without autograd; x [n_in, K] dense (``[n_out L, K]``
        transposed). ``x_ordered`` / ``out_ordered``: the rows of ``x`` / of the result in the
        locality order of their side (see the class docstring); no-ops without orders."""
        src, dst = ("out", "in") if transpose else ("in", "out")
        m = self._copy(x.device, x.dtype, transpose)
        if isinstance(m, sp.csr_matrix):   # the scipy kernel multiplies the points' own order
            if x_ordered:
                x = self._rows(x, src, True)
            y = torch.from_numpy(np.asarray(m @ x.detach().contiguous().numpy()))
            return self._rows(y, dst, False) if out_ordered else y
        if self.ordered and not x_ordered:
            x = self._rows(x, src, False)
        # in-place addmm into an uninitialised output (beta = 0: never read): ``m @ x``
        # zero-fills its output and copies it once more (measured 2.3x slower for a 3072 x 256
        # result), and out-of-place ``torch.addmm(out, m, x, beta=0)`` still copies ``out``
        # into a new result first (measured 1.8x slower for 73728 x 32: the copy touches two
        # fresh buffers)
        out = torch.empty((m.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
        y = out.addmm_(m, x.contiguous(), beta=0)
        return self._rows(y, dst, True) if self.ordered and not out_ordered else y

    def matmul(self, x: torch.Tensor, ordered_out: bool = False) -> torch.Tensor:
        """``A @ x`` for dense ``x`` [n_in, K], differentiable in ``x``. ``ordered_out``: the
        result's point blocks in ``order_out`` (put them back with :meth:`natural_rows`)."""
        if x.shape[0] != self.n_in:
            raise InputError(f"operator expects {self.n_in} input rows, got {x.shape[0]}")
        return _CSRMatMul.apply(x.contiguous(), self, False, False, bool(ordered_out))

    def __repr__(self) -> str:
        return (f"SparseOperator(n_basis={self.n_basis}, n_out={self.n_out}, n_in={self.n_in}, "
                f"nnz={self.nnz}{', ordered' if self.ordered else ''})")


def _permutation(order, n: int, name: str):
    """``order`` as an int64 permutation of ``n`` (None stays None); InputError otherwise."""
    if order is None:
        return None
    order = np.ascontiguousarray(order, dtype=np.int64)
    if order.shape != (n,) or (n and (order.min() < 0 or order.max() >= n
                                      or np.bincount(order, minlength=n).max() != 1)):
        raise InputError(f"{name} must be a permutation of {n} points")
    return order


def _inverse(order) -> np.ndarray:
    """The inverse of the permutation ``order`` (int64): ``_inverse(order)[order[k]] = k``."""
    order = np.asarray(order, dtype=np.int64)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return inv


def _point_rows(points, width: int) -> np.ndarray:
    """The rows ``p * width + l`` (l < width) of the points ``points``, point by point: the
    row blocks of an operator with ``width`` rows per point."""
    return (np.asarray(points, dtype=np.int64)[:, None] * width + np.arange(width)).ravel()


def _transposed(m: sp.csr_matrix) -> sp.csr_matrix:
    """``m^T`` as CSR (the CSC arrays of m are the CSR arrays of m^T)."""
    csc = m.tocsc()
    return sp.csr_matrix((csc.data, csc.indices, csc.indptr), shape=m.shape[::-1])


def transpose_sorted(m: sp.csr_matrix) -> sp.csr_matrix:
    """``m^T`` as CSR with sorted rows and m's values: one compiled counting transpose on
    :func:`build_threads` threads (:func:`_scatter_transpose`), or scipy's with
    ``GRAPHOP_JIT=0``. The same arrays either way."""
    if not jit.enabled():
        return _transposed(m)
    none = np.empty(0, dtype=np.int64)
    return _scatter_transpose(m.indptr, m.indices, m.data, none, none, m.shape[0], m.shape[1],
                              m.data.dtype)


#: seconds spent making operators' product copies (per device and dtype; permuted ones
#: included) in this process, for the benchmarks' accounting of a first pass
COPY_TIME = {"seconds": 0.0}

#: an operator over at least this many points gets a locality order (:func:`locality_orders`)
LOCALITY_MIN_POINTS = 4096


def locality_orders(pos_out, pos_in, same: bool):
    """``(order_out, order_in)`` for an operator from the points ``pos_in`` to ``pos_out``:
    their Z-order permutations (:func:`graphop.geometry.neighbors.spatial_order`; one for
    both when ``same``), each None below :data:`LOCALITY_MIN_POINTS` points."""
    def order(p):
        return spatial_order(p) if len(p) >= LOCALITY_MIN_POINTS else None
    o_in = order(pos_in)
    return (o_in if same else order(pos_out)), o_in


def permute_csr(m: sp.csr_matrix, rows=None, cols=None, dtype=np.float64):
    """``(P, P^T)`` for ``P = m[rows][:, cols]``, both CSR with sorted column indices and
    ``dtype`` values: row k of P is row ``rows[k]`` of m, column k is column ``cols[k]``
    (``cols`` a permutation; None: as they are).

    Compiled (:mod:`graphop.jit`): two counting-sort transposes, each on :func:`build_threads`
    threads (the rows of m in the order ``rows`` scattered into the columns of P^T, then P^T's
    rows into P), so that no row is ever sorted; or scipy's indexing and transpose with
    ``GRAPHOP_JIT=0``. The same arrays either way."""
    if not jit.enabled():
        out = m if rows is None else m[np.asarray(rows)]
        out = out if cols is None else out[:, np.asarray(cols)]
        out = sp.csr_matrix(out, dtype=dtype, copy=out is m)
        out.sort_indices()
        return out, _transposed(out)
    rank = np.empty(0, dtype=np.int64) if cols is None else _inverse(cols)
    n_rows = m.shape[0] if rows is None else len(rows)
    rows = np.empty(0, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    pt = _scatter_transpose(m.indptr, m.indices, m.data, rows, rank, n_rows, m.shape[1], dtype)
    return transpose_sorted(pt), pt


def _scatter_transpose(ptr, idx, val, rows, rank, n_rows: int, n_cols: int,
                       dtype) -> sp.csr_matrix:
    """The transpose [n_cols, n_rows] of the CSR (ptr, idx, val) with its rows taken in the
    order ``rows`` (empty: as they are) and its columns relabelled by ``rank`` (empty: kept),
    values as ``dtype``, by counting: each block of rows counts its entries per column, then
    writes them at its own offsets, so every row of the result comes out sorted."""
    threads = build_threads()
    cuts = np.linspace(0, n_rows, min(threads, max(1, n_rows)) + 1).astype(np.int64)
    blocks = range(len(cuts) - 1)
    itype = np.int32 if max(n_rows, n_cols, len(idx)) < 2**31 - 1 else np.int64
    counts = np.zeros((len(blocks), n_cols + 1), dtype=np.int64)
    jit.thread_map(lambda k: _count_columns(ptr, idx, rows, rank, cuts[k], cuts[k + 1],
                                            counts[k]), blocks, threads)
    totals = counts.sum(axis=0)
    out_ptr = np.zeros(n_cols + 1, dtype=itype)
    np.cumsum(totals[:-1], out=out_ptr[1:])
    starts = np.cumsum(counts, axis=0) - counts + out_ptr   # block k's first slot per column
    out_idx = np.empty(int(out_ptr[-1]), dtype=itype)
    out_val = np.empty(int(out_ptr[-1]), dtype=dtype)
    jit.thread_map(lambda k: _scatter_columns(ptr, idx, val, rows, rank, cuts[k], cuts[k + 1],
                                              starts[k], out_idx, out_val), blocks, threads)
    return sp.csr_matrix((out_val, out_idx, out_ptr), shape=(n_cols, n_rows))


@jit.kernel
def _count_columns(ptr, idx, rows, rank, lo, hi, counts):
    """Entries per (relabelled) column in rows ``lo .. hi`` of :func:`_scatter_transpose`."""
    for k in range(lo, hi):
        r = rows[k] if len(rows) > 0 else k
        for e in range(ptr[r], ptr[r + 1]):
            c = rank[idx[e]] if len(rank) > 0 else idx[e]
            counts[c] += 1


@jit.kernel
def _scatter_columns(ptr, idx, val, rows, rank, lo, hi, slot, out_idx, out_val):
    """Rows ``lo .. hi`` of :func:`_scatter_transpose` written into the transpose: the entry
    (k, c) goes to the next free ``slot[c]`` of row c (row k ascending, so rows come out
    sorted)."""
    for k in range(lo, hi):
        r = rows[k] if len(rows) > 0 else k
        for e in range(ptr[r], ptr[r + 1]):
            c = rank[idx[e]] if len(rank) > 0 else idx[e]
            at = slot[c]
            out_idx[at] = k
            out_val[at] = val[e]
            slot[c] = at + 1


def _to_torch(m: sp.csr_matrix, device, dtype) -> torch.Tensor:
    # int32 indices make the CPU CSR kernel about 2x faster; keep int64 beyond 2^31 entries
    itype = np.int32 if m.nnz < 2**31 - 1 and max(m.shape) < 2**31 - 1 else np.int64
    crow = torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=itype))
    col = torch.from_numpy(np.ascontiguousarray(m.indices, dtype=itype))
    val = torch.from_numpy(np.ascontiguousarray(m.data)).to(dtype)
    with warnings.catch_warnings():   # "sparse CSR support is in beta" is noise here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, m.shape, check_invariants=False).to(device)


# ---------------------------------------------------------------------------- CSR assembly
def csr_from_coo(rows, cols, vals, shape) -> sp.csr_matrix:
    """CSR from COO triples without duplicates (scipy's O(nnz) counting sort by row)."""
    m = sp.coo_matrix((vals, (rows, cols)), shape=shape)
    m.has_canonical_format = True   # the builders never emit duplicates: skip the merge pass
    return m.tocsr()


def stack_rows(parts) -> sp.csr_matrix:
    """CSR matrices with the same columns stacked vertically, by concatenating their arrays
    (from :data:`PARALLEL_STACK_ENTRIES` entries on, each part copied into its place on
    :func:`build_threads` threads)."""
    nnz_off = np.cumsum([0] + [m.nnz for m in parts])
    indptr = np.concatenate([m.indptr[:-1].astype(np.int64) + o for m, o in zip(parts, nnz_off)]
                            + [nnz_off[-1:]])
    shape = (sum(m.shape[0] for m in parts), parts[0].shape[1])
    threads = min(build_threads(), len(parts))
    if threads < 2 or nnz_off[-1] < PARALLEL_STACK_ENTRIES:
        return sp.csr_matrix((np.concatenate([m.data for m in parts]),
                              np.concatenate([m.indices for m in parts]), indptr), shape=shape)
    # numpy's copies release the GIL; the time goes into first touches of the fresh pages
    # (measured: 1.4 against 3.0 s for 2.4e8 float64 entries on 2 threads)
    data = np.empty(nnz_off[-1], dtype=np.result_type(*[m.data.dtype for m in parts]))
    indices = np.empty(nnz_off[-1], dtype=np.result_type(*[m.indices.dtype for m in parts]))

    def put(k):
        data[nnz_off[k]:nnz_off[k + 1]] = parts[k].data
        indices[nnz_off[k]:nnz_off[k + 1]] = parts[k].indices

    jit.thread_map(put, range(len(parts)), threads)
    return sp.csr_matrix((data, indices, indptr), shape=shape)


#: :func:`stack_rows` copies the parts on threads from this many entries on
PARALLEL_STACK_ENTRIES = 4_000_000


#: a chunked build of fewer neighbour pairs than this runs on one thread: below it, starting
#: threads and stacking their parts cost about what they save
PARALLEL_MIN_PAIRS = 400_000


def build_threads() -> int:
    """Threads a chunked operator build uses: ``$GRAPHOP_BUILD_THREADS``, else torch's thread
    count (``graphop --threads N``), at least 1."""
    env = os.environ.get("GRAPHOP_BUILD_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputError(f"GRAPHOP_BUILD_THREADS must be a whole number, got {env!r}") from None
        return max(1, n)
    return max(1, torch.get_num_threads())


def may_split(max_possible_pairs: float, max_pairs: float) -> bool:
    """Whether a build of at most ``max_possible_pairs`` neighbour pairs could be split by
    :func:`row_chunk` (past the scratch bound ``max_pairs``, or past
    :data:`PARALLEL_MIN_PAIRS` when there are build threads): only then is it worth counting
    its pairs."""
    bound = PARALLEL_MIN_PAIRS if build_threads() > 1 else max_pairs
    return max_possible_pairs > min(bound, max_pairs)


def row_chunk(n_rows: int, pairs: float, max_pairs: float, threads: int | None = None) -> int:
    """Rows per chunk of a build of ``n_rows`` output rows holding about ``pairs`` neighbour
    pairs: at most ``max_pairs / threads`` pairs a chunk (the scratch of the chunks built at
    once stays near that of one ``max_pairs`` chunk), and at least ``threads`` chunks when the
    build holds :data:`PARALLEL_MIN_PAIRS` or more. ``n_rows`` (one piece) otherwise."""
    threads = build_threads() if threads is None else max(1, int(threads))
    if pairs < PARALLEL_MIN_PAIRS:
        threads = 1
    per_row = max(pairs / max(n_rows, 1), 1.0)
    share = max_pairs / threads / per_row
    chunk = max(1, int(share)) if np.isfinite(share) else n_rows
    if threads > 1:
        chunk = min(chunk, -(-n_rows // threads))
    return min(chunk, n_rows)


def build_rows(n_rows: int, chunk: int, rows, threads: int | None = None, order=None,
               width: int = 1) -> sp.csr_matrix:
    """``stack_rows([rows(a) for a in range(0, n_rows, chunk)])``: a CSR built block of rows by
    block of rows (``rows(a)`` returns rows ``a .. a + chunk``), the blocks on up to ``threads``
    threads (default :func:`build_threads`). The builders spend their time in compiled kernels
    and numpy, scipy and k-d tree calls that release the GIL (measured: 1.5x on 2 threads for
    DISCO over the cells of a 100k-point cloud); the blocks are stacked in order, so the matrix
    is the one a single thread builds. An error in any block (or an interrupt) is raised here
    once the blocks being built have finished; the queued ones are dropped.

    ``order`` (a permutation of ``n_rows`` queries, each owning ``width`` consecutive rows,
    e.g. :func:`graphop.geometry.neighbors.spatial_order` of the output points): ``rows(a)``
    returns the rows of queries ``order[a:a + chunk]`` in that order, and the result is put back
    in query order (:func:`stack_permuted`, in place of the stacking copy)."""
    parts = jit.thread_map(rows, range(0, n_rows, chunk),
                           build_threads() if threads is None else threads)
    if order is not None:
        return stack_permuted(parts, order, width)
    return parts[0] if len(parts) == 1 else stack_rows(parts)


#: a compiled build of this many output rows or more runs its queries in spatial order
#: (:func:`ordered_build`): below it the rows' reads fit in the cache anyway
ORDERED_MIN_ROWS = 20_000


#: the locality orders of the points :func:`cached_operator` is building on, in this thread
#: (``orders``: ``(order_out, order_in)``, or None outside such a build)
_NUMBERING = threading.local()


def ordered_build(n_rows: int) -> bool:
    """Whether a build of ``n_rows`` output points runs them in spatial order (the compiled
    kernels, :mod:`graphop.jit`, and at least :data:`ORDERED_MIN_ROWS` rows); never when
    :func:`cached_operator` lists the output points in their locality order already."""
    orders = getattr(_NUMBERING, "orders", None)
    if orders is not None and orders[0] is not None:
        return False
    return jit.enabled() and n_rows >= ORDERED_MIN_ROWS


def stack_permuted(parts, order, width: int = 1) -> sp.csr_matrix:
    """CSR blocks holding the rows of queries ``order[0], order[1], ...`` (``width`` rows each,
    the blocks in turn) put together in query order 0, 1, ...: ``stack_rows(parts)`` with its
    row blocks permuted, in one copy (compiled, :mod:`graphop.jit`, the blocks on
    :func:`build_threads` threads; scipy row indexing with ``GRAPHOP_JIT=0``)."""
    order = np.asarray(order, dtype=np.int64)
    n_q = len(order)
    if sum(m.shape[0] for m in parts) != n_q * width:
        raise ValueError("the blocks do not hold width rows for every query of the order")
    if not jit.enabled():
        return stack_rows(parts)[_point_rows(_inverse(order), width)]
    nnz = sum(m.nnz for m in parts)
    itype = np.result_type(*[m.indices.dtype for m in parts])
    if nnz >= 2**31 - 1:
        itype = np.int64
    starts = np.cumsum([0] + [m.shape[0] // width for m in parts])   # each block's queries
    lens = np.empty(n_q * width, dtype=np.int64)
    for k, m in enumerate(parts):
        lens.reshape(n_q, width)[order[starts[k]:starts[k + 1]]] = (
            np.diff(m.indptr).reshape(-1, width))
    indptr = np.zeros(n_q * width + 1, dtype=itype)
    np.cumsum(lens, out=indptr[1:])
    indices = np.empty(nnz, dtype=itype)
    data = np.empty(nnz, dtype=np.result_type(*[m.data.dtype for m in parts]))
    threads = min(build_threads(), len(parts))
    cuts = np.linspace(0, nnz, threads + 1).astype(np.int64)

    def touch(t):
        # the fresh pages touched in order first: the scatter writes rows all over them, and
        # a page's first touch out of order costs several times more (measured: 3.4 s against
        # 0.9 s with this for 1e8 entries of fresh memory, the same once memory is reused)
        _zero_fill(indices, data, cuts[t], cuts[t + 1])

    def scatter(k):
        m = parts[k]
        _scatter_rows(indptr, indices, data, m.indptr, m.indices, m.data,
                      order[starts[k]:starts[k + 1]], width)

    jit.thread_map(touch, range(threads), threads)
    jit.thread_map(scatter, range(len(parts)), threads)
    return sp.csr_matrix((data, indices, indptr),
                         shape=(n_q * width, parts[0].shape[1]))


@jit.kernel
def _zero_fill(idx, val, lo, hi):
    """Zeros into ``idx[lo:hi]`` and ``val[lo:hi]``, in order."""
    for e in range(lo, hi):
        idx[e] = 0
        val[e] = 0.0


@jit.kernel
def _scatter_rows(out_ptr, out_idx, out_val, ptr, idx, val, queries, width):
    """Copy the ``width`` rows of each ``queries[k]`` from the k-th row block of (ptr, idx,
    val) to their place in the output CSR (its ``out_ptr`` complete)."""
    for k in range(len(queries)):
        src, end = ptr[k * width], ptr[(k + 1) * width]
        dst = out_ptr[queries[k] * width]
        for e in range(end - src):
            out_idx[dst + e] = idx[src + e]
            out_val[dst + e] = val[src + e]


def block_diagonal(blocks) -> SparseOperator:
    """Per-graph operators (rows i*L + l) stacked block-diagonally, by concatenating their CSR
    arrays (no Python loop over rows); their ``extra`` arrays are stacked [B, n_out, ...] and
    their locality orders (if any) concatenated, each within its block. Blocks made
    ``in_order`` are stacked in that layout (and the result made ``in_order``)."""
    L = blocks[0].n_basis
    # blocks made in their locality order are stacked in it (their own order is not made)
    in_order = any(b.made_in_order for b in blocks)
    mats = [b.ordered_csr() if in_order else b.matrix for b in blocks]
    nnz_off = np.cumsum([0] + [m.nnz for m in mats])
    col_off = np.cumsum([0] + [m.shape[1] for m in mats])
    indptr = np.concatenate([m.indptr[:-1].astype(np.int64) + o for m, o in zip(mats, nnz_off)]
                            + [nnz_off[-1:]])
    indices = np.concatenate([m.indices.astype(np.int64) + o for m, o in zip(mats, col_off)])
    data = np.concatenate([m.data for m in mats])
    n_out = sum(b.n_out for b in blocks)
    m = sp.csr_matrix((data, indices, indptr), shape=(n_out * L, int(col_off[-1])))
    extra = None
    if blocks[0].extra is not None:
        extra = np.concatenate([b.extra for b in blocks])

    def orders(side, sizes):
        # the blocks' locality orders, each within its own block (none: kept as it is)
        got = [getattr(b, side) for b in blocks]
        if all(o is None for o in got):
            return None
        off = np.cumsum([0] + list(sizes))
        return np.concatenate([(np.arange(n) if o is None else o) + a
                               for o, n, a in zip(got, sizes, off)])

    return SparseOperator(m, L, n_out, extra=extra, cpu_backend=blocks[0].cpu_backend,
                          order_out=orders("order_out", [b.n_out for b in blocks]),
                          order_in=orders("order_in", [b.n_in for b in blocks]),
                          in_order=in_order)


# ---------------------------------------------------------------------------- products
class BlockList:
    """The operators of a batch of different meshes, applied graph by graph.

    Nothing is assembled: each graph's cached block multiplies its own rows of X, so a batch of
    meshes that never repeats (one mesh per sample, shuffled) costs no block-diagonal assembly
    and no extra copy of any operator. Quacks like a :class:`SparseOperator` for what the
    layers read (``n_basis``, ``n_out``, ``n_in``, ``nnz``, ``extra``, :meth:`matmul`).
    """

    def __init__(self, blocks):
        self.blocks = list(blocks)
        self.n_basis = self.blocks[0].n_basis
        self.n_out = sum(b.n_out for b in self.blocks)
        self.n_in = sum(b.n_in for b in self.blocks)
        self.sizes_in = [b.n_in for b in self.blocks]
        self.extra = (None if self.blocks[0].extra is None
                      else np.concatenate([b.extra for b in self.blocks]))

    @property
    def nnz(self) -> int:
        return sum(b.nnz for b in self.blocks)

    def extra_on(self, device, dtype) -> torch.Tensor:
        """The stacked ``extra`` on ``device``: the blocks' device copies (each made once)
        concatenated there, so a new batch of cached meshes copies nothing from the host."""
        return torch.cat([b.extra_on(device, dtype) for b in self.blocks])

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.n_in:
            raise InputError(f"operator expects {self.n_in} input rows, got {x.shape[0]}")
        return torch.cat([b.matmul(xb) for b, xb in zip(self.blocks, x.split(self.sizes_in))])

    def __repr__(self) -> str:
        return f"BlockList({len(self.blocks)} graphs, n_basis={self.n_basis}, nnz={self.nnz})"


def _graph_blocks(op, fold: int):
    """The per-graph blocks of ``(op, fold)``: ``fold`` times the shared block, the blocks of a
    :class:`BlockList`, or the one (possibly block-diagonal) operator."""
    if isinstance(op, BlockList):
        return op.blocks
    return [op] * fold


def fold_matmul(op, fold: int, x: torch.Tensor) -> torch.Tensor:
    """``A @ x`` per graph for x [fold * n_in, C] -> [fold * n_out * L, C] (graph major).

    ``fold = B > 1``: the B graphs share ``op``, applied to each graph's rows in turn (no
    transposed copies of the features: measured faster than one product over B * C columns
    with torch's CSR kernel, see :func:`batch_operator`)."""
    blocks = _graph_blocks(op, fold)
    n_in = sum(b.n_in for b in blocks)
    if x.shape[0] != n_in:
        raise InputError(f"operator expects {n_in} rows of features, got {x.shape[0]}")
    if len(blocks) == 1:
        return blocks[0].matmul(x)
    return torch.cat([b.matmul(xb) for b, xb in zip(blocks, x.split([b.n_in for b in blocks]))])


def apply_operator(op, fold: int, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_l (A X)[i L + l] theta[l]`` for x [fold * n_in, C], theta [L, C, O].

    Per graph block: one sparse product ``A_b X_b`` [n_out * L, C] (rows point major, so the
    view [n_out, L * C] is free) and one dense GEMM with ``theta`` [L * C, O]; no copy of the
    features anywhere but the gather and put-back of a block with a locality order
    (:class:`SparseOperator`), the latter on the [n_out, O] result. Returns [fold * n_out, O].
    """
    L, C, O = theta.shape
    W = theta.reshape(L * C, O)
    blocks = _graph_blocks(op, fold)
    n_in = sum(b.n_in for b in blocks)
    if x.shape[0] != n_in:
        raise InputError(f"operator expects {n_in} rows of features, got {x.shape[0]}")

    def one(b, xb):
        # rows left in the operator's locality order until after the contraction: putting
        # them back there moves O columns instead of L * C
        return b.natural_rows(b.matmul(xb, ordered_out=True).view(b.n_out, L * C) @ W)

    if len(blocks) == 1:
        return one(blocks[0], x)
    return torch.cat([one(b, xb) for b, xb in zip(blocks, x.split([b.n_in for b in blocks]))])


# ---------------------------------------------------------------------------- input checks
def n_points(data) -> int:
    """The number of points of ``data`` (ValueError without a ``pos`` tensor [N, d])."""
    pos = getattr(data, "pos", None)
    if not torch.is_tensor(pos) or pos.dim() != 2:
        raise InputError("data has no 'pos' tensor [N, d] (point coordinates)")
    return pos.shape[0]


def check_features(x, n: int, channels: int, layer: str) -> None:
    """ValueError unless ``x`` is a floating tensor [n, channels]."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise InputError(f"{layer}: x must be a tensor [N, {channels}], "
                         f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
    if x.shape[1] != channels:
        raise InputError(f"{layer}: expected x with {channels} input channels, got {x.shape[1]}")
    if x.shape[0] != n:
        raise InputError(f"{layer}: x has {x.shape[0]} rows but data.pos has {n} points")
    if not x.is_floating_point():
        raise InputError(f"{layer}: x must be floating point, got {x.dtype}")


# ---------------------------------------------------------------------------- the cache
class OperatorCache:
    """The process-wide LRU of operators, keyed by content (see the module docstring).

    Holds, all cleared by :meth:`clear`:

    * per-geometry values (a :class:`SparseOperator`, or anything with ``nbytes``), evicted
      least recently used first while their bytes exceed ``max_bytes``;
    * assembled block-diagonal operators of batches of different meshes: at most
      ``max_batches``, counted in the same byte budget;
    * the memo of content keys (by tensor identity and in-place version), so a training loop
      that reuses the same ``Data`` objects does not rehash them every step;
    * the cell quadratures of the most recent graphs (:meth:`quadrature`), so that a
      geometry's DISCO, mollifier and encoder builds triangulate and place quadrature points
      once; outside the byte budget, bounded by :data:`QUADRATURE_CACHE_BYTES`;
    * optionally ``store``, a disk tier (:class:`graphop.layers.store.OperatorStore`, attached
      by ``graphop train``) asked before building a per-geometry operator and given what is
      built; :meth:`clear` leaves the files alone.

    Args:
        max_bytes: most bytes kept (default ``$GRAPHOP_CACHE_BYTES``, else the larger of 4 GiB
            and 40% of the available memory), counting scipy
            arrays and torch copies. Settable at any time (``operator_cache.max_bytes = ...``).
        max_batches: most assembled batch operators kept (default 16).
    """

    def __init__(self, max_bytes: int | None = None, max_batches: int = 16):
        if max_bytes is None:
            max_bytes = _default_cache_bytes()
        self.max_bytes, self.max_batches = int(max_bytes), int(max_batches)
        self._items: OrderedDict = OrderedDict()
        self._batches: OrderedDict = OrderedDict()
        self._keys: dict = {}
        self._evicted: OrderedDict = OrderedDict()    # recently evicted per-geometry keys
        self._quadrature: OrderedDict = OrderedDict()  # cell quadratures (see quadrature())
        self._warned = False
        self.hits = self.misses = self.rebuilds = 0
        #: optional disk tier (:class:`graphop.layers.store.OperatorStore`): asked on a miss of
        #: the per-geometry store, given what is built
        self.store = None

    @staticmethod
    def _size(value) -> int:
        if isinstance(value, tuple):
            return sum(OperatorCache._size(v) for v in value)
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        return int(getattr(value, "nbytes", 0))

    @property
    def nbytes(self) -> int:
        """Bytes held by every cached value (recomputed: copies grow after first use)."""
        return sum(self._size(v) for v in (*self._items.values(), *self._batches.values()))

    def get(self, key, build):
        """The value for ``key``, made by ``build()`` on a miss (per-geometry store)."""
        return self._get(self._items, key, build, None)

    def get_batch(self, key, build):
        """The value for ``key`` in the store of assembled batch operators."""
        return self._get(self._batches, key, build, self.max_batches)

    def _get(self, store: OrderedDict, key, build, max_count):
        if key in store:
            self.hits += 1
            store.move_to_end(key)
            return store[key]
        self.misses += 1
        if store is self._items and self._evicted.pop(key, None) is not None:
            self.rebuilds += 1
            self._warn_thrash()
        disk = self.store if store is self._items else None
        value = disk.load(key) if disk is not None else None
        if value is None:
            value = build()
            if disk is not None:
                disk.save(key, value)
        store[key] = value
        while max_count is not None and len(store) > max_count:
            store.popitem(last=False)
        self._evict()
        return value

    def quadrature(self, key, build):
        """The cell quadrature ``(x, w, B)`` (or None) of the graph with content ``key``, made
        by ``build()`` on a miss: a small LRU apart from the operators (it is only needed
        while a geometry's operators are built), holding the most recent graphs within
        :data:`QUADRATURE_CACHE_BYTES` (always the latest one)."""
        if key in self._quadrature:
            self._quadrature.move_to_end(key)
            return self._quadrature[key]
        value = build()
        if value is not None:                      # shared by every build: never written to
            for a in value[:2]:
                a.flags.writeable = False
        self._quadrature[key] = value

        def size(v):
            if v is None:
                return 0
            x, w, B = v
            return x.nbytes + w.nbytes + B.data.nbytes + B.indices.nbytes + B.indptr.nbytes

        total = sum(size(v) for v in self._quadrature.values())
        while len(self._quadrature) > 1 and total > QUADRATURE_CACHE_BYTES:
            _, old = self._quadrature.popitem(last=False)
            total -= size(old)
        return value

    def _warn_thrash(self) -> None:
        """One warning per process when an operator is rebuilt after its own eviction: the
        budget is smaller than what one pass over the data uses, so every pass rebuilds."""
        if self._warned:
            return
        self._warned = True
        warnings.warn(f"operator cache: an evicted operator was needed again and rebuilt; the "
                      f"budget {format_bytes(self.max_bytes)} holds less than one pass over the "
                      f"data ({format_bytes(self.nbytes)} cached now), so operators are rebuilt "
                      f"on every pass. Raise GRAPHOP_CACHE_BYTES (or operator_cache.max_bytes) "
                      f"if memory allows.", GraphopWarning, stacklevel=4)

    def _evict(self) -> None:
        total = self.nbytes
        for store in (self._batches, self._items):   # drop assembled batches first
            while len(store) > (1 if store is self._items else 0) and total > self.max_bytes:
                key, old = store.popitem(last=False)
                total -= self._size(old)
                if store is self._items:
                    self._evicted[key] = True
                    while len(self._evicted) > 4096:
                        self._evicted.popitem(last=False)

    def memo_keys(self, memo_key, tensors, compute):
        """Content keys memoised by the identity and version of ``tensors``."""
        hit = self._keys.get(memo_key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
            return hit[1]
        keys = compute()
        if len(self._keys) > 256:
            self._keys.clear()
        self._keys[memo_key] = ([weakref.ref(t) for t in tensors], keys)
        return keys

    def clear(self) -> None:
        self._items.clear()
        self._batches.clear()
        self._keys.clear()
        self._evicted.clear()
        self._quadrature.clear()
        self.hits = self.misses = self.rebuilds = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return (f"OperatorCache({len(self._items)} operators, {len(self._batches)} batches, "
                f"{self.nbytes / 2**20:.1f} MiB of {self.max_bytes / 2**20:.0f} MiB, "
                f"hits={self.hits}, misses={self.misses}, rebuilds={self.rebuilds})")


#: most bytes of cell quadratures :meth:`OperatorCache.quadrature` keeps (the latest is kept
#: whatever its size): a batch of 8 meshes of ~100k points fits
QUADRATURE_CACHE_BYTES = 512 * 2**20


def _default_cache_bytes() -> int:
    """``$GRAPHOP_CACHE_BYTES``, else the larger of 4 GiB and 40% of the available memory."""
    env = env_bytes("GRAPHOP_CACHE_BYTES")
    if env is not None:
        return env
    avail, _ = available_memory()
    return max(4 << 30, int(0.4 * avail)) if avail else 4 << 30


#: the one cache of every operator graphop builds
operator_cache = OperatorCache()


# ---------------------------------------------------------------------------- graphs + keys
@dataclass
class GraphSet:
    """The graphs of a Data/Batch as numpy slices plus per-graph content keys."""

    pos: torch.Tensor
    ptr: list
    keys: list
    periodic: list
    weight: torch.Tensor | None = None
    cells_of: object = None      # () -> each graph's cells (or None), called when first needed
    _cells: object = None
    with_cells: bool = False     # made with cells=True: integrate over cells, a cloud's own
    _cells_unknown: bool = False

    @property
    def n_graphs(self) -> int:
        return len(self.ptr) - 1

    @property
    def cells(self) -> list | None:
        """Each graph's cells ``{type: [M, k]}`` (None for a graph without any), or None for a
        set made without cells. Read from the data on first use only: a training step whose
        operators are cached never converts cells."""
        if self._cells is None and self.cells_of is not None:
            self._cells = self.cells_of()
            if self._cells is None:          # a batch without its slice record
                self._cells, self._cells_unknown = [None] * self.n_graphs, True
        return self._cells

    def slice(self, b: int):
        """``(pos [n_b, d], weight [n_b] or None, periodic box or None)`` of graph b, float64."""
        lo, hi = self.ptr[b], self.ptr[b + 1]
        p = self.pos[lo:hi].detach().cpu().double().numpy()
        w = None if self.weight is None else self.weight[lo:hi].detach().cpu().double().numpy()
        return p, w, self.periodic[b]

    def quadrature(self, b: int, mode: str = "cells"):
        """:meth:`quadrature_of` graph b under the ``quadrature`` option ``mode`` (None for
        ``"points"``, and for a torus under ``"cells-except-torus"``), memoised by the graph's
        content key in :data:`operator_cache` (:meth:`OperatorCache.quadrature`): the DISCO,
        mollifier and encoder builds of one geometry share one triangulation and one set of
        quadrature points (at 100k random points the three triangulations alone took 9.7 s)."""
        if (not self.with_cells or not uses_cells(mode)
                or (self.periodic[b] is not None and mode != "cells")):
            return None
        _ = self.cells                              # sets _cells_unknown on a bare batch
        key = (self.keys[b], self._cells_unknown) if self.keys else None
        if key is None:
            return self.quadrature_of(b)
        return operator_cache.quadrature(key, lambda: self.quadrature_of(b))

    def quadrature_of(self, b: int):
        """``(x [Q + n_b, d], w [Q + n_b], B [Q + n_b, n_b])`` of graph b's cells
        (:func:`graphop.geometry.cells.interpolating_quadrature`) and the nodes themselves
        with :data:`NODE_WEIGHT` times their weights, so that a ball around a node is never
        empty, however small; all listed in :func:`graphop.geometry.neighbors.spatial_order`
        (the compiled builds then read a ball's points from nearby memory). A planar graph
        without cells (a bare 2D point cloud) is integrated over the filtered Delaunay
        triangles of its points (:func:`graphop.geometry.triangulate.triangulate_cloud`, on
        :func:`build_threads` threads). On a torus the cells are
        unwrapped across the seam and the quadrature points wrapped into the box, and a planar
        cloud is triangulated as a cloud of the torus
        (:func:`graphop.geometry.triangulate.triangulate_periodic`). None: no cells of
        dimension >= 2 (nor a triangulable 2D cloud), or a set made without cells."""
        if not self.with_cells:
            return None
        p, w, box = self.slice(b)
        cells = None if self.cells is None else self.cells[b]
        if cells is None and p.shape[1] == 2 and not self._cells_unknown:
            tri = (triangulate_cloud(p, threads=build_threads()) if box is None
                   else triangulate_periodic(p, box))
            cells = None if tri is None else {"triangle": tri}
        if cells is None:
            return None
        rule = quadrature_rule(p, cells, box=box)
        if rule is None:
            return None
        x, wq, simp, bary = rule
        w = np.ones(len(p)) if w is None else w
        x = np.concatenate([x, p])
        order = spatial_order(x)        # the builds read a ball's points from nearby memory
        return x[order], np.concatenate([wq, NODE_WEIGHT * w])[order], interpolation_matrix(
            simp, bary, len(p), order)


#: the weight of the nodes among the cells' quadrature points (:meth:`GraphSet.quadrature`),
#: relative to their own quadrature weights: they only count in a ball that holds no cell point
NODE_WEIGHT = 1e-9


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


def _cell_keys(data) -> list:
    try:
        keys = data.keys()
    except TypeError:            # torch_geometric < 2.4: keys is a property
        keys = data.keys
    return sorted(k for k in keys if k == "face" or k.startswith("cells_"))


def _graph_cells(data, ptr: list, names: list) -> list | None:
    """Each graph's cells ``{type: [M, k] int64, local point indices}`` (None for a graph
    without any), from ``face`` [3, M] (offset by the batching) and ``cells_<type>`` [M, k]
    (not offset: split by the Batch's slice record); None when a batch of several graphs
    carries no slice record (then no graph uses its cells)."""
    n_graphs = len(ptr) - 1
    slices = getattr(data, "_slice_dict", None)
    incs = getattr(data, "_inc_dict", None)
    if n_graphs > 1 and (slices is None or incs is None):
        return None
    out = [dict() for _ in range(n_graphs)]
    for name in names:
        t = data[name]
        if not torch.is_tensor(t) or t.dim() != 2:
            continue
        conn = (t.t() if name == "face" else t).detach().cpu().long().numpy()
        ctype = "triangle" if name == "face" else name[len("cells_"):]
        for b in range(n_graphs):
            if n_graphs == 1:
                part, inc = conn, 0
            else:
                lo, hi = int(slices[name][b]), int(slices[name][b + 1])
                part, inc = conn[lo:hi], int(incs[name][b]) if name == "face" else 0
            if len(part):
                out[b][ctype] = part - inc
    return [c or None for c in out]


class HostGeometry:
    """The geometry of a Data/Batch kept on the host while the batch itself moves to a device.

    :func:`graph_set` needs the positions, weights, cells, graph offsets and torus box of a batch
    on the host: to key its operators (a sha256 digest per graph) and, on a cache miss, to build
    them. Read from a batch on a GPU, each of those is a copy back to the host and a
    synchronisation, several per training step. :func:`tag_geometry` keeps the CPU tensors of
    a batch before it moves (:func:`to_device` does both), and every later read goes to them.

    The tag binds, the first time it is read, to the tensors the batch then holds (identity and
    in-place version counter; their shapes must match the host copies), and is dropped, so that
    the batch is read as before, as soon as one of them is replaced or modified in place. It
    cannot see a change made between the tag and that first read: tag a batch immediately before
    moving it, as :func:`to_device` does.

    Args:
        data: a Data or Batch on the CPU.
    """

    #: the attribute of the Data/Batch that holds its tag (PyG keeps an attribute with a leading
    #: underscore beside its tensors, not among them: ``.to()`` and ``copy.copy`` keep it,
    #: ``keys()`` and collation never see it)
    ATTR = "_graphop_host"

    def __init__(self, data):
        pos = getattr(data, "pos", None)
        if not torch.is_tensor(pos) or pos.device.type != "cpu":
            raise InputError("tag_geometry: data.pos must be a tensor on the CPU (tag a batch "
                             "before moving it to a device)")
        self.pos = pos
        w = getattr(data, "weight", None)
        self.weight = w if torch.is_tensor(w) else None
        self.ptr = _graph_offsets(data, pos.shape[0], "data")
        per = getattr(data, "periodic", None)
        self.periodic = None if per is None else torch.as_tensor(per, dtype=torch.float64)
        self.cell_names = _cell_keys(data)
        self.cells = {k: data[k] for k in self.cell_names}
        self._slice_dict = getattr(data, "_slice_dict", None)
        self._inc_dict = getattr(data, "_inc_dict", None)
        self._host_versions = [t._version for t in self._host()]
        self._bound = None

    def _host(self) -> list:
        return [t for t in (self.pos, self.weight, *self.cells.values()) if torch.is_tensor(t)]

    @staticmethod
    def _live(data, names) -> list:
        out = []
        for k in ("pos", "weight", *names):
            t = getattr(data, k, None)
            if torch.is_tensor(t):
                out.append(t)
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cells[name]

    def matches(self, data) -> bool:
        """True while ``data`` still holds the tensors this tag describes (binds on first call)."""
        live = self._live(data, self.cell_names)
        if self._bound is None:
            host = self._host()
            if ([t._version for t in host] != self._host_versions or len(live) != len(host)
                    or any(a.shape != b.shape for a, b in zip(live, host))):
                return False
            self._bound = ([weakref.ref(t) for t in live], [t._version for t in live])
            return True
        refs, versions = self._bound
        return len(refs) == len(live) and all(r() is t and t._version == v
                                              for r, t, v in zip(refs, live, versions))

    def __repr__(self) -> str:
        return (f"HostGeometry({len(self.ptr) - 1} graphs, {self.pos.shape[0]} points, "
                f"bound={self._bound is not None})")


def tag_geometry(data):
    """Keep the geometry of ``data`` (on the CPU) on the host (:class:`HostGeometry`); returns
    ``data``."""
    setattr(data, HostGeometry.ATTR, HostGeometry(data))
    return data


def host_geometry(data) -> HostGeometry | None:
    """The valid :class:`HostGeometry` of ``data``, or None (never tagged, or a tensor it
    describes was replaced or modified in place since: the stale tag is dropped)."""
    tag = getattr(data, HostGeometry.ATTR, None)
    if not isinstance(tag, HostGeometry):
        return None
    if tag.matches(data):
        return tag
    try:
        delattr(data, HostGeometry.ATTR)
    except (AttributeError, KeyError):
        pass
    return None


def to_device(data, device, non_blocking: bool = False):
    """``data.to(device)``, tagged first (:func:`tag_geometry`) when it moves from the CPU to
    another device, so that the operators' keys and builds never read the device copy."""
    device = torch.device(device)
    pos = getattr(data, "pos", None)
    if device.type != "cpu" and torch.is_tensor(pos) and pos.device.type == "cpu":
        tag_geometry(data)
    return data.to(device, non_blocking=non_blocking)


def _graph_offsets(data, n: int, what: str) -> list:
    """The graph offsets of ``data`` as a list ``[0, n_0, n_0 + n_1, ..., n]``."""
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return [int(v) for v in ptr.tolist()]
    b = getattr(data, "batch", None)
    if b is None:
        return [0, n]
    if len(b) and bool((b[1:] < b[:-1]).any()):
        raise InputError(f"{what}.batch must be sorted (samples stored contiguously)")
    return [0] + torch.bincount(b.cpu()).cumsum(0).tolist()


def graph_set(data, *, need_weight: bool, what: str = "data", cells: bool = False) -> GraphSet:
    """Validate ``data`` (Data or Batch) and split it into graphs with content keys.

    Keys are sha256 digests of each graph's positions (+ weights, + periodic box, + its cells
    when ``cells=True``, for :meth:`GraphSet.quadrature`); they are memoised in
    :data:`operator_cache` by tensor identity and in-place version counter. A batch tagged by
    :func:`tag_geometry` (:func:`to_device`) is read from its host copy.
    """
    pos = getattr(data, "pos", None)
    if pos is None:
        raise InputError(f"{what} has no 'pos' (point coordinates [N, d])")
    if not torch.is_tensor(pos) or pos.dim() != 2 or pos.shape[1] not in (1, 2, 3):
        raise InputError(f"{what}.pos must be a tensor [N, d] with d in (1, 2, 3), "
                         f"got {tuple(getattr(pos, 'shape', ()))}")
    n = pos.shape[0]
    host = host_geometry(data)
    weight = None
    if need_weight:
        weight = getattr(data, "weight", None) if host is None else host.weight
        if weight is None:
            raise InputError(f"{what} has no 'weight' (quadrature weights [N]); "
                             "build it with Mesh.to_data() or Mesh.from_points()")
        if weight.dim() == 2 and weight.shape[1] == 1:
            weight = weight[:, 0]
        if weight.shape != (n,):
            raise InputError(f"{what}.weight must have shape [{n}], got {tuple(weight.shape)}")
    if host is None:
        ptr = _graph_offsets(data, n, what)
        per, source = getattr(data, "periodic", None), data
    else:
        pos, ptr, per, source = host.pos, host.ptr, host.periodic, host
    if per is None:
        periodic = [None] * (len(ptr) - 1)
    else:
        per = torch.as_tensor(per, dtype=torch.float64).reshape(-1, pos.shape[1]).cpu().numpy()
        if len(per) == 1:
            per = np.repeat(per, len(ptr) - 1, axis=0)
        if len(per) != len(ptr) - 1:
            raise InputError(f"{what}.periodic has {len(per)} rows for {len(ptr) - 1} graphs")
        periodic = [tuple(float(v) for v in row) for row in per]
    names = (_cell_keys(data) if host is None else host.cell_names) if cells else []
    tensors = ((pos,) if weight is None else (pos, weight)) + tuple(
        source[k] for k in names if torch.is_tensor(source[k]))
    gs = GraphSet(pos, ptr, [], periodic, weight,
                  (lambda: _graph_cells(source, ptr, names)) if names else None,
                  with_cells=bool(cells))

    def cell_arrays(b):
        c = gs.cells[b] if names else None
        return [] if c is None else [a for t in sorted(c)
                                     for a in (np.frombuffer(t.encode(), np.uint8), c[t])]

    def compute():
        p = pos.detach().cpu().numpy()
        w = None if weight is None else weight.detach().cpu().numpy()
        return [_digest(p[lo:hi], None if w is None else w[lo:hi],
                        None if pr is None else np.asarray(pr), *cell_arrays(b))
                for b, (lo, hi, pr) in enumerate(zip(ptr[:-1], ptr[1:], periodic))]

    memo_key = (tuple((id(t), t._version) for t in tensors) + (tuple(ptr), tuple(periodic))
                + (bool(cells),))
    gs.keys = operator_cache.memo_keys(memo_key, tensors, compute)
    return gs


#: how integral operators integrate over a graph (module docstring)
QUADRATURE = ("cells", "points", "cells-except-torus")


def uses_cells(quadrature: str) -> bool:
    """True when a ``quadrature`` mode integrates over cells on some graphs."""
    return quadrature != "points"


def quadrature_mode(quadrature) -> str:
    """Validate a ``quadrature`` option: ``"cells"``, ``"points"`` or ``"cells-except-torus"``
    (module docstring)."""
    if quadrature not in QUADRATURE:
        raise InputError(f"quadrature must be one of {QUADRATURE}, got {quadrature!r}")
    return str(quadrature)




#: a batch of graphs sharing one mesh is applied as one block-diagonal product (B copies of
#: the block, assembled once and cached) while it holds at most this many entries; larger ones
#: are applied graph by graph (``$GRAPHOP_MERGE_NNZ``)
MERGE_NNZ = int(float(os.environ.get("GRAPHOP_MERGE_NNZ", 4e6)))


def batch_operator(kind: str, params: tuple, keys: list, make_block):
    """The operator of a batch whose graph b has content key ``keys[b]``: ``(op, fold)``.

    ``make_block(b) -> SparseOperator`` builds graph b's block on a cache miss (each distinct
    key once). Three cases, none of which copies features:

    * one graph: ``(block, 1)``;
    * B graphs sharing one mesh: the block-diagonal of B copies of the block ``(op, 1)``
      (cached) while ``B * nnz <= MERGE_NNZ``, else ``(block, B)``, applied graph by graph;
    * different meshes: ``(BlockList, 1)``, applied graph by graph (no assembly: with one
      mesh per sample every batch is new, and assembling it would cost more than the product).

    Measured (one thread, 16x16 grids, batch 8, LocalGNO): folding the batch into the columns
    of X, the previous scheme, spent more time in the two transposed copies of the features
    than in the sparse product.
    """
    built = {}

    def block(b):
        k = keys[b]
        if k not in built:
            built[k] = operator_cache.get((kind, params, k), lambda: make_block(b))
        return built[k]

    if len(keys) == 1:
        return block(0), 1
    if len(set(keys)) == 1:
        blk, B = block(0), len(keys)
        if B * blk.nnz <= MERGE_NNZ:
            return operator_cache.get_batch((kind, params, keys[0], B),
                                            lambda: block_diagonal([blk] * B)), 1
        return blk, B
    return BlockList([block(b) for b in range(len(keys))]), 1


def point_number(i, side: str = "in") -> int:
    """The user's number of point ``i`` of the points a builder was given (``side`` "in" or
    "out"): :func:`cached_operator` lists a large operator's points in their locality order
    before it calls the builder, so a builder's message that names a point by its number names
    ``point_number(i)``. ``i`` itself outside such a build."""
    orders = getattr(_NUMBERING, "orders", None)
    order = None if orders is None else orders[side == "in"]
    return int(i) if order is None else int(order[i])


def cached_operator(kind: str, params: tuple, g_in: GraphSet, g_out: GraphSet | None, build,
                    quadrature: str = "points"):
    """The operator from the points of ``g_in`` to those of ``g_out`` (default: the same
    points) for every graph: ``(SparseOperator, fold)`` (see :func:`batch_operator`).

    ``build(pos_out, pos_in, weight_in, periodic, same) -> (csr, n_basis)`` makes one block
    (a pure function of the point sets: for an operator with a locality order,
    :func:`locality_orders`, it is called on the points listed in that order, which gives the
    block directly in the layout of its products, ``in_order``; an error is raised again from
    the points in their own order, so that it names them by the user's numbers, and a warning
    names a point by :func:`point_number`).
    With ``quadrature="cells"`` (and ``g_in`` made with ``cells=True``) a graph with cells is
    integrated at its cells' quadrature points: ``build(pos_out, x, w, periodic, False,
    interp=(B, pos_in))`` with the points, weights and interpolation of
    :meth:`GraphSet.quadrature` returns the operator on the nodes (``A_q @ B``), so that a
    chunked builder can multiply chunk by chunk.
    """
    same = g_out is None
    g_out = g_in if same else g_out
    if g_out.n_graphs != g_in.n_graphs:
        raise InputError(f"out has {g_out.n_graphs} graphs but data has {g_in.n_graphs}")

    def make(b):
        p_in, w_in, per = g_in.slice(b)
        p_out = p_in if same else g_out.slice(b)[0]
        quad = g_in.quadrature(b, quadrature)

        def build_in(o_out, o_in):
            # the block with its output / input points listed in the orders o_out / o_in
            # (None: as they are): P_out A P_in^T, built directly in that layout
            po = p_out if o_out is None else p_out[o_out]
            pi = p_in if o_in is None else p_in[o_in]
            if quad is None:
                wi = w_in if o_in is None or w_in is None else w_in[o_in]
                return build(po, pi, wi, per, same)
            x, w, B = quad
            if o_in is not None:    # B interpolates from the nodes: its columns follow them
                B = sp.csr_matrix((B.data, _inverse(o_in)[B.indices].astype(B.indices.dtype),
                                   B.indptr), shape=B.shape)
            return build(po, x, w, per, False, interp=(B, pi))

        order_out, order_in = locality_orders(p_out, p_in, same)
        if order_out is None and order_in is None:
            m, L = build_in(None, None)
            return SparseOperator(m, L, len(p_out))
        _NUMBERING.orders = (order_out, order_in)     # for point_number in the messages
        try:
            m, L = build_in(order_out, order_in)
        except GraphopError:
            _NUMBERING.orders = None
            try:                   # the same error, naming points by the user's numbers
                build_in(None, None)
            except GraphopError as err:
                raise err from None
            raise
        finally:
            _NUMBERING.orders = None
        return SparseOperator(m, L, len(p_out), order_out=order_out, order_in=order_in,
                              in_order=True)

    keys = [k if same else (k, ko) for k, ko in zip(g_in.keys, g_out.keys)]
    return batch_operator(kind, (params, same, quadrature), keys, make)
