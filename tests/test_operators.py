"""Sparse operators: neighbour CSR, block-diagonal assembly, both CPU backends, the cache."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import graphop.layers.sparse as ops
from graphop.geometry.neighbors import radius_neighbors
from graphop.errors import GraphopWarning, InputError
from graphop.layers.sparse import OperatorCache, SparseOperator, block_diagonal

torch.set_num_threads(1)


def test_radius_neighbors_sorted_and_complete():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(300, 2))
    nb = radius_neighbors(p, radius=0.1)
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))        # brute force, tiny test only
    want = np.argwhere(d <= 0.1)
    got = np.stack([nb.rows(), nb.indices], 1)
    np.testing.assert_array_equal(got, want)                   # argwhere is (row, col) sorted
    np.testing.assert_allclose(nb.offsets, p[nb.indices] - p[nb.rows()])


def random_operator(n_out, n_in, L, seed):
    m = sp.random(n_out * L, n_in, density=0.2, random_state=seed, format="csr")
    return SparseOperator(m, L, n_out)


def test_block_diagonal_equals_scipy_block_diag():
    blocks = [random_operator(5, 7, 3, 0), random_operator(4, 4, 3, 1), random_operator(6, 2, 3, 2)]
    got = block_diagonal(blocks)
    want = sp.block_diag([b.matrix for b in blocks], format="csr")
    assert got.n_out == 15 and got.n_in == 13
    assert abs(got.matrix - want).max() == 0


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_backends_agree_and_backward_uses_transpose(backend):
    m = sp.random(12, 9, density=0.2, random_state=3, format="csr")
    op = SparseOperator(m, 2, 6, cpu_backend=backend)
    dense = torch.tensor(op.matrix.toarray())
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    y = op.matmul(x)
    assert torch.allclose(y, dense @ x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, dense.T @ g)
    x32 = x.detach().float()
    assert op.matmul(x32).dtype == torch.float32
    assert torch.autograd.gradcheck(op.matmul, (x,))


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_product_never_reads_its_uninitialised_output(backend):
    """The product writes into ``torch.empty`` memory with beta = 0: rows without entries must
    come out zero and no stale NaN may leak in, whatever the allocator hands back."""
    m = sp.random(4000, 300, density=0.002, random_state=5, format="csr", dtype=np.float64)
    assert (np.diff(m.indptr) == 0).any()                   # some rows are empty
    op = SparseOperator(m, 1, cpu_backend=backend)
    x = torch.randn(300, 32)
    want = torch.from_numpy(m.astype(np.float32) @ x.numpy())
    for _ in range(3):
        junk = torch.full((4000, 32), float("nan"))          # freed just before the product:
        del junk                                              # its block is the likely reuse
        y = op.matmul(x)
        assert torch.isfinite(y).all()
        assert torch.allclose(y, want, atol=1e-5)


@pytest.mark.parametrize("jit_flag", ["1", "0"])
def test_permute_csr_is_scipy_indexing(monkeypatch, jit_flag):
    # rows and columns permuted, columns sorted, and the transpose: the compiled counting
    # transposes (1 and 3 threads) and the reference give scipy's m[rows][:, cols] and its
    # transpose, array for array, in float32 and float64
    rng = np.random.default_rng(6)
    m = sp.random(600, 250, density=0.05, random_state=7, format="csr")
    m.indices = m.indices.astype(np.int32)
    rows, cols = rng.permutation(600)[:550], rng.permutation(250)   # rows: any selection
    want = m[rows][:, cols]
    want.sort_indices()
    want_t = want.T.tocsr()
    want_t.sort_indices()
    monkeypatch.setenv("GRAPHOP_JIT", jit_flag)
    for threads in ("1", "3"):
        monkeypatch.setenv("GRAPHOP_BUILD_THREADS", threads)
        for dtype in (np.float64, np.float32):
            got, got_t = ops.permute_csr(m, rows, cols, dtype)
            for g, w in ((got, want), (got_t, want_t)):
                assert g.dtype == dtype and g.shape == w.shape and g.has_sorted_indices
                np.testing.assert_array_equal(g.indptr, w.indptr)
                np.testing.assert_array_equal(g.indices, w.indices)
                np.testing.assert_array_equal(g.data, w.data.astype(dtype))
    only_rows, _ = ops.permute_csr(m, rows)
    assert abs(only_rows - m[rows]).max() == 0
    only_cols, t = ops.permute_csr(m, None, cols)
    assert abs(only_cols - m[:, cols]).max() == 0 and abs(t - m[:, cols].T).max() == 0
    empty, empty_t = ops.permute_csr(sp.csr_matrix((0, 5)), None, None)
    assert empty.shape == (0, 5) and empty_t.shape == (5, 0)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("sides", ["both", "out", "in"])
def test_operator_with_locality_order_computes_the_same(backend, sides):
    # an operator carrying locality orders: every product, in every layout the autograd
    # function can ask for, equals the plain operator's; gradients through gradcheck; the
    # permuted copy really is P_out A P_in^T
    rng = np.random.default_rng(9)
    n_out, n_in, L = 40, 30, 3
    m = sp.random(n_out * L, n_in, density=0.2, random_state=8, format="csr")
    o_out = rng.permutation(n_out) if sides != "in" else None
    o_in = rng.permutation(n_in) if sides != "out" else None
    op = SparseOperator(m, L, n_out, cpu_backend=backend, order_out=o_out, order_in=o_in)
    plain = torch.tensor(m.toarray())
    assert op.ordered and "ordered" in repr(op)
    x = torch.randn(n_in, 4, dtype=torch.float64, requires_grad=True)
    y = op.matmul(x)
    assert torch.allclose(y, plain @ x)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, plain.T @ g)
    assert torch.autograd.gradcheck(op.matmul, (x,))
    # ordered output: the point blocks in order_out, put back by natural_rows
    yo = op.matmul(x, ordered_out=True)
    want = (plain @ x).detach().reshape(n_out, L * 4)
    if o_out is not None:
        want = want[torch.as_tensor(o_out)]
    assert torch.allclose(yo.detach().reshape(n_out, L * 4), want)
    assert torch.allclose(op.natural_rows(yo), plain @ x)
    assert torch.autograd.gradcheck(lambda t: op.natural_rows(op.matmul(t, ordered_out=True)),
                                    (x,))
    assert torch.autograd.gradgradcheck(lambda t: op.matmul(t, ordered_out=True), (x,))
    rows = None if o_out is None else (o_out[:, None] * L + np.arange(L)).ravel()
    pm, pt = op.permuted_csr()
    assert abs(pt - pm.T).max() == 0
    assert abs(pm - m[np.arange(n_out * L) if rows is None else rows][
        :, np.arange(n_in) if o_in is None else o_in]).max() == 0
    theta = torch.randn(L, 4, 5, dtype=torch.float64)
    want = (plain @ x).reshape(n_out, L * 4) @ theta.reshape(L * 4, 5)
    assert torch.allclose(ops.apply_operator(op, 1, x, theta), want)
    blocks = ops.BlockList([op, SparseOperator(m, L, n_out, cpu_backend=backend)])
    x2 = torch.randn(2 * n_in, 4, dtype=torch.float64)
    got = ops.apply_operator(blocks, 1, x2, theta)
    want2 = torch.cat([(plain @ xb).reshape(n_out, L * 4) @ theta.reshape(L * 4, 5)
                       for xb in x2.split(n_in)])
    assert torch.allclose(got, want2)
    assert torch.allclose(ops.apply_operator(op, 2, x2, theta), want2)


def test_block_diagonal_keeps_the_blocks_locality_orders():
    # a batch sharing an ordered mesh, merged block-diagonally: each block keeps its order
    # (offset to its rows), a block without one keeps its own order, and the product is the
    # plain block-diagonal product
    rng = np.random.default_rng(4)
    m1 = sp.random(30, 10, density=0.3, random_state=1, format="csr")
    m2 = sp.random(12, 4, density=0.3, random_state=2, format="csr")
    a = SparseOperator(m1, 3, 10, order_out=rng.permutation(10), order_in=rng.permutation(10))
    b = SparseOperator(m2, 3, 4)
    bd = block_diagonal([a, b, a])
    np.testing.assert_array_equal(bd.order_out, np.concatenate(
        [a.order_out, np.arange(4) + 10, a.order_out + 14]))
    np.testing.assert_array_equal(bd.order_in, np.concatenate(
        [a.order_in, np.arange(4) + 10, a.order_in + 14]))
    x = torch.randn(24, 3, dtype=torch.float64)
    want = torch.tensor(sp.block_diag([m1, m2, m1]).toarray()) @ x
    assert torch.allclose(bd.matmul(x), want)
    assert block_diagonal([b, b]).order_in is None


def test_inference_keeps_no_transposed_copy():
    # under no_grad an ordered operator's forward product makes only the forward copy; the
    # backward's copy comes when a gradient pass asks for it
    m = sp.random(60, 20, density=0.2, random_state=2, format="csr")
    op = SparseOperator(m, 3, 20, order_out=np.arange(20)[::-1], order_in=np.arange(20)[::-1])
    x = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        op.matmul(x)
    assert [k[2] for k in op._copies if isinstance(k[0], torch.device)] == [False]
    op.matmul(x).sum().backward()
    assert sorted(k[2] for k in op._copies if isinstance(k[0], torch.device)) == [False, True]
    assert torch.allclose(x.grad, torch.tensor(m.toarray()).sum(0)[:, None].expand(20, 2))


def test_operator_made_in_its_locality_order_is_the_same_operator():
    # an operator given as P_out A P_in^T (in_order, as cached_operator builds large ones):
    # its own-order matrix is made only when asked for and equals A array for array, its
    # product copies are the given matrix (rows sorted first) and one transpose, its products
    # and a block-diagonal batch of it are A's
    rng = np.random.default_rng(5)
    n_out, n_in, L = 12, 9, 2
    m = sp.random(n_out * L, n_in, density=0.3, random_state=3, format="csr")
    m.sort_indices()
    o_out, o_in = rng.permutation(n_out), rng.permutation(n_in)
    rows = (o_out[:, None] * L + np.arange(L)).ravel()
    p = ops.permute_csr(m, rows, o_in)[0]
    shuffled = p.copy()                      # the same matrix with unsorted rows
    for r in range(shuffled.shape[0]):
        a, b = shuffled.indptr[r], shuffled.indptr[r + 1]
        shuffled.indices[a:b] = shuffled.indices[a:b][::-1].copy()
        shuffled.data[a:b] = shuffled.data[a:b][::-1].copy()
    shuffled.has_sorted_indices = False
    natural = SparseOperator(m, L, n_out, order_out=o_out, order_in=o_in)
    for given in (p, shuffled):
        op = SparseOperator(given, L, n_out, order_out=o_out, order_in=o_in, in_order=True)
        assert op._matrix is None and op.nnz == m.nnz and op.ordered
        pm, pt = op.permuted_csr(np.float32)
        want, want_t = natural.permuted_csr(np.float32)
        for a, b in ((pm, want), (pt, want_t)):
            np.testing.assert_array_equal(a.indptr, b.indptr)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(op.matrix.indptr, m.indptr)
        np.testing.assert_array_equal(op.matrix.indices, m.indices)
        np.testing.assert_array_equal(op.matrix.data, m.data)
        x = torch.randn(n_in, 3, dtype=torch.float64)
        assert torch.allclose(op.matmul(x), torch.tensor(m.toarray()) @ x)
    fresh = SparseOperator(p, L, n_out, order_out=o_out, order_in=o_in, in_order=True)
    plain = SparseOperator(sp.random(6, 3, density=0.5, random_state=4, format="csr"), 2, 3)
    bd = block_diagonal([fresh, plain, fresh])
    assert bd.made_in_order and fresh._matrix is None    # stacked in their layout
    x = torch.randn(2 * n_in + 3, 2, dtype=torch.float64)
    want = torch.tensor(sp.block_diag([m, plain.matrix, m]).toarray()) @ x
    assert torch.allclose(bd.matmul(x), want)
    # without orders in_order means nothing: the matrix is A
    assert SparseOperator(m, L, n_out, in_order=True).matrix is m


def test_cached_operator_names_points_by_the_users_numbers_in_errors(monkeypatch):
    # a large operator is built on its points listed in the locality order; an error from the
    # builder is raised again from the points in their own order, so that a message naming a
    # point (by number, by coordinates) names the user's point
    from graphop.errors import MeshError
    from torch_geometric.data import Data

    pts = np.random.default_rng(2).random((ops.LOCALITY_MIN_POINTS + 10, 2))
    data = Data(pos=torch.tensor(pts), weight=torch.ones(len(pts), dtype=torch.float64))
    g = ops.graph_set(data, need_weight=True)
    seen = []

    def build(p_out, p_in, w, periodic, same):
        seen.append(p_out)
        raise MeshError(f"point 0 at {p_out[0].tolist()} is bad")

    with pytest.raises(MeshError) as err:
        ops.cached_operator("test-error", (), g, None, build)
    assert str(pts[0].tolist()) in str(err.value)
    assert err.value.__suppress_context__      # one error in the traceback, not two
    assert len(seen) == 2 and not np.array_equal(seen[0], pts)   # in order, then as given


@pytest.mark.parametrize("threads", ["1", "3"])
def test_stack_rows_is_scipys_vstack(monkeypatch, threads):
    # the parts of a chunked build stacked in order: the arrays of scipy's vstack, whether the
    # parts are copied in one piece or into their places on threads, index dtypes mixed
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", threads)
    monkeypatch.setattr(ops, "PARALLEL_STACK_ENTRIES", 0)
    parts = [sp.random(r, 7, density=0.4, random_state=r, format="csr") for r in (5, 0, 9, 3)]
    parts[2].indices = parts[2].indices.astype(np.int64)
    got, want = ops.stack_rows(parts), sp.vstack(parts, format="csr")
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_builders_do_not_reorder_points_cached_operator_listed_in_order(monkeypatch):
    # a builder's own spatial ordering of large outputs (ordered_build) is skipped while
    # cached_operator builds on points it has listed in their locality order already, and
    # applies again afterwards
    from torch_geometric.data import Data

    monkeypatch.setattr(ops.jit, "enabled", lambda: True)
    pts = np.random.default_rng(6).random((ops.LOCALITY_MIN_POINTS + 10, 2))
    data = Data(pos=torch.tensor(pts), weight=torch.ones(len(pts), dtype=torch.float64))
    g = ops.graph_set(data, need_weight=True)
    seen = []

    def build(p_out, p_in, w, periodic, same):
        seen.append(ops.ordered_build(10**6))
        return sp.identity(len(p_out), format="csr"), 1

    op, _ = ops.cached_operator("test-ordered-build", (), g, None, build)
    assert op.ordered and seen == [False] and ops.ordered_build(10**6)
    ops.operator_cache.clear()


def test_a_warning_names_the_users_point_on_a_large_cloud():
    # the stencil's warning about a degenerate neighbourhood names a point by number and
    # coordinates; on a cloud large enough to be built in its locality order both are the
    # user's: a line of points far from a random cloud, listed first (last in Z-order)
    import re

    from torch_geometric.data import Data

    from graphop.layers.differential import DifferentialConv

    rng = np.random.default_rng(0)
    n = ops.LOCALITY_MIN_POINTS + 100
    line = np.stack([np.linspace(0, 1, 40), np.full(40, 50.0)], axis=1)
    pts = np.concatenate([line, rng.random((n, 2))])
    data = Data(pos=torch.tensor(pts))
    ops.operator_cache.clear()
    with pytest.warns(GraphopWarning, match="spanning fewer than 2 directions") as rec:
        op, _ = DifferentialConv(1, 1, kernel_size=3, dim=2).operator(data)
    assert op.ordered
    msg = next(str(w.message) for w in rec if "spanning fewer" in str(w.message))
    got = re.search(r"point (\d+) at \[([^\]]+)\]", msg)
    i, at = int(got.group(1)), [float(v) for v in got.group(2).split(",")]
    assert i < len(line) and np.allclose(pts[i], at)
    ops.operator_cache.clear()


def test_locality_order_is_checked():
    m = sp.random(6, 4, density=0.5, random_state=1, format="csr")
    with pytest.raises(InputError, match="order_in must be a permutation of 4"):
        SparseOperator(m, 2, 3, order_in=[0, 1, 1, 3])
    with pytest.raises(InputError, match="order_out must be a permutation of 3"):
        SparseOperator(m, 2, 3, order_out=[0, 1])


def test_large_operators_get_a_locality_order(monkeypatch):
    # on a random cloud listed in random order, cached_operator gives the DISCO operator a
    # Z-order: its permuted copy's columns lie near the diagonal (the mean distance of a
    # column from its row's point falls by more than 10x), and a layer computes the same
    from graphop.data.sample import mesh_to_sample
    from graphop.geometry.mesh import Mesh
    from graphop.layers.disco import DISCOConv

    pts = np.random.default_rng(3).random((6000, 2))
    data = mesh_to_sample(Mesh.from_points(pts, measure=1.0).with_point_data(
        a=pts[:, 0], u=pts[:, 1]), ["a"], ["u"])
    layer = DISCOConv(3, 4, radius=0.05, kernel_shape=(2, 4)).double()
    x = torch.randn(6000, 3, dtype=torch.float64)
    ops.operator_cache.clear()
    monkeypatch.setattr(ops, "LOCALITY_MIN_POINTS", 10**9)
    op, _ = layer.operator(data)
    assert not op.ordered
    plain = layer(x, data)
    ops.operator_cache.clear()
    monkeypatch.setattr(ops, "LOCALITY_MIN_POINTS", 5000)
    op_o, _ = layer.operator(data)
    assert op_o.ordered
    assert torch.allclose(layer(x, data), plain, atol=1e-12)
    # built directly in that order (the points listed in it): the same matrix, term by term
    assert op_o.made_in_order
    np.testing.assert_array_equal(op_o.matrix.indptr, op.matrix.indptr)
    np.testing.assert_array_equal(op_o.matrix.indices, op.matrix.indices)
    np.testing.assert_allclose(op_o.matrix.data, op.matrix.data, rtol=0, atol=1e-14)

    def spread(m, L):
        r = np.repeat(np.arange(m.shape[0]) // L, np.diff(m.indptr))
        return np.abs(m.indices - r).mean()

    L = op_o.n_basis
    assert spread(op_o.permuted_csr()[0], L) < spread(op.matrix, L) / 10
    ops.operator_cache.clear()


def test_cache_evicts_least_recently_used_by_bytes():
    size = random_operator(2, 2, 1, 0).nbytes
    cache = OperatorCache(max_bytes=2 * size)           # room for two operators
    built = []
    with pytest.warns(GraphopWarning, match="rebuilt on every pass") as record:
        for key in ["a", "b", "a", "c", "b", "c", "a"]:
            cache.get(key, lambda: built.append(key) or random_operator(2, 2, 1, 0))
    assert len(record) == 1                       # said once per cache, not per rebuild
    # "b" was evicted by "c" (after "a" was reused), then "a" by "b", then "a" needed again
    assert built == ["a", "b", "c", "b", "a"]
    assert (cache.hits, cache.misses, cache.rebuilds, len(cache)) == (2, 5, 2, 2)
    assert cache.nbytes <= cache.max_bytes
    cache.clear()
    assert (cache.hits, cache.misses, cache.rebuilds, len(cache), cache.nbytes) == (0, 0, 0, 0, 0)


def test_cache_budget_from_environment(monkeypatch):
    from graphop.layers.sparse import _default_cache_bytes

    monkeypatch.setenv("GRAPHOP_CACHE_BYTES", "1.5e9")
    assert _default_cache_bytes() == 1_500_000_000
    monkeypatch.setenv("GRAPHOP_CACHE_BYTES", "lots")
    with pytest.raises(InputError, match="GRAPHOP_CACHE_BYTES"):
        _default_cache_bytes()
    monkeypatch.delenv("GRAPHOP_CACHE_BYTES")
    assert _default_cache_bytes() >= 4 << 30


def test_one_cache_serves_every_operator():
    """DISCO, the stencil, the latent encoder/decoder and the GNN edges share one cache, so
    clearing it drops them all."""
    from torch_geometric.data import Data

    from graphop.layers import DifferentialConv, DISCOConv, GridDecoder, GridEncoder
    from graphop.models.gnn import mesh_edges

    p = np.random.default_rng(0).random((200, 2))
    data = Data(pos=torch.tensor(p), weight=torch.full((200,), 1 / 200, dtype=torch.float64))
    ops.operator_cache.clear()
    x = torch.randn(200, 2, dtype=torch.float64)
    DISCOConv(2, 3, 0.2).double()(x, data)
    DifferentialConv(2, 3).double()(x, data)
    GridEncoder((8, 8))(x, data)
    GridDecoder((8, 8))(torch.randn(1, 2, 8, 8, dtype=torch.float64), data)
    mesh_edges(data, radius=0.1)
    assert len(ops.operator_cache) == 5 and ops.operator_cache.misses == 5
    ops.operator_cache.clear()
    assert len(ops.operator_cache) == 0


@pytest.mark.parametrize("periodic,same", [(None, True), (None, False), (1.0, True)])
def test_chunked_disco_build_equals_one_piece(periodic, same, monkeypatch):
    """Large builds go in chunks of output rows to bound their scratch memory; the chunks must
    stack to exactly the matrix of one piece (same rows, columns, values and order)."""
    import graphop.layers.disco as dm
    from graphop.layers.basis import KernelBasis

    rng = np.random.default_rng(3)
    p_in = rng.uniform(size=(700, 2))
    p_out = p_in if same else rng.uniform(size=(450, 2))
    w = rng.uniform(0.5, 1.5, size=700) / 700
    basis = KernelBasis(dim=2, kernel_shape=(3, 4))
    kw = dict(periodic=periodic, same=same)
    whole = dm.disco_matrix(p_out, p_in, w, 0.15, basis, **kw)
    monkeypatch.setattr(dm, "BUILD_CHUNK_PAIRS", 2000)     # ~30 neighbours: ~65 rows a chunk
    chunked = dm.disco_matrix(p_out, p_in, w, 0.15, basis, **kw)
    assert chunked.shape == whole.shape and chunked.nnz == whole.nnz > 0
    np.testing.assert_array_equal(chunked.indptr, whole.indptr)
    np.testing.assert_array_equal(chunked.indices, whole.indices)
    np.testing.assert_allclose(chunked.data, whole.data, rtol=1e-14, atol=0)


def test_threaded_builds_equal_one_thread(monkeypatch):
    """Chunked builds run their blocks of rows on several threads (GRAPHOP_BUILD_THREADS); the
    blocks are stacked in order, so DISCO over a cloud's cells, the mollifier gradient and the
    sphere's DISCO are the matrices one thread builds, entry for entry. An error raised in a
    block reaches the caller."""
    import graphop.layers.disco as dm
    import graphop.layers.sparse as sr
    from graphop.layers.basis import KernelBasis
    from graphop.layers.disco_sphere import sphere_disco_matrix
    from graphop.layers.stencil import mollifier_gradient_matrix

    rng = np.random.default_rng(11)
    p = rng.uniform(size=(800, 2))
    w = np.full(800, 1 / 800)
    s = rng.normal(size=(900, 3))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    ws = np.full(900, 4 * np.pi / 900)
    basis = KernelBasis(dim=2, kernel_shape=(3, 4))

    def build_all():
        return [dm.disco_matrix(p[:500], p, w, 0.12, basis),
                mollifier_gradient_matrix(p, w, 0.1, chunk_pairs=20_000),
                sphere_disco_matrix(s, s, ws, 0.3, basis, same=True)]

    monkeypatch.setattr(dm, "BUILD_CHUNK_PAIRS", 20_000)
    import graphop.layers.disco_sphere as ds
    monkeypatch.setattr(ds, "BUILD_CHUNK_PAIRS", 20_000)
    monkeypatch.setattr(sr, "PARALLEL_MIN_PAIRS", 0)
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", "1")
    one = build_all()
    calls = []
    real = sr.build_rows

    def counting(n_rows, chunk, rows, threads=None, **kw):
        calls.append((n_rows, chunk, sr.build_threads()))
        return real(n_rows, chunk, rows, threads, **kw)

    for mod in (dm, ds):
        monkeypatch.setattr(mod, "build_rows", counting)
    import graphop.layers.stencil as st
    monkeypatch.setattr(st, "build_rows", counting)
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", "3")
    three = build_all()
    assert len(calls) == 3 and all(t == 3 and -(-n // c) >= 3 for n, c, t in calls), calls
    for a, b in zip(one, three):
        assert a.shape == b.shape and a.nnz == b.nnz > 0
        np.testing.assert_array_equal(a.indptr, b.indptr)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.data, b.data)

    def failing(a):
        if a > 0:
            raise ValueError(f"block {a} failed")
        return dm.csr_from_coo(np.zeros(0, int), np.zeros(0, int), np.zeros(0), (10, 4))

    with pytest.raises(ValueError, match="block 10 failed"):
        real(30, 10, failing, threads=2)

    import threading
    import time

    ran, lock = [], threading.Lock()

    def slow(a):        # block 0 fails at once: the 39 queued behind it are dropped, not built
        if a == 0:
            raise ValueError("first block failed")
        time.sleep(0.02)
        with lock:
            ran.append(a)
        return failing(0)

    with pytest.raises(ValueError, match="first block failed"):
        real(400, 10, slow, threads=2)
    assert len(ran) <= 5, ran
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", "two")
    with pytest.raises(InputError, match="GRAPHOP_BUILD_THREADS"):
        sr.build_threads()


@pytest.mark.parametrize("periodic", [False, True])
def test_encoder_in_blocks_equals_one_piece(periodic, monkeypatch):
    """The grid encoder builds in blocks of latent nodes (each row is normalised on its own),
    on threads, with the cells' interpolation multiplied block by block: the same matrix and
    occupancy as one piece, entry for entry."""
    import graphop.layers.latent as lt
    import graphop.layers.sparse as sr

    rng = np.random.default_rng(4)
    grid = lt.LatentGrid.make((12, 12), None, 0.05, 1.0 if periodic else None)
    x = rng.uniform(size=(1500, 2))
    w = rng.uniform(0.5, 1.5, 1500) / 1500
    cols = rng.integers(0, 400, (1500, 3))
    B = sp.csr_matrix((rng.dirichlet(np.ones(3), 1500).ravel(),
                       (np.repeat(np.arange(1500), 3), cols.ravel())), shape=(1500, 400))
    whole, occ = lt.encoder_matrix(x, w, grid, 0.15, "clamp", interp=B)
    plain, occ_plain = lt.encoder_matrix(x, w, grid, 0.15, "clamp")
    np.testing.assert_allclose((plain @ B).toarray(), whole.toarray(), rtol=1e-12, atol=1e-15)
    monkeypatch.setattr(lt, "ENCODER_CHUNK_PAIRS", 3000)
    monkeypatch.setattr(sr, "PARALLEL_MIN_PAIRS", 0)
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", "2")
    parts, occ2 = lt.encoder_matrix(x, w, grid, 0.15, "clamp", interp=B)
    whole.sort_indices()
    parts.sort_indices()
    np.testing.assert_array_equal(occ2, occ)
    # with cells the neighbour rows stay in the search's order (radius_neighbors(sort=False)),
    # so the occupancy sums the same terms in another order: equal to rounding
    np.testing.assert_allclose(occ_plain, occ, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(parts.indptr, whole.indptr)
    np.testing.assert_array_equal(parts.indices, whole.indices)
    np.testing.assert_array_equal(parts.data, whole.data)
    assert occ.max() > 0.5 and whole.nnz > 0
