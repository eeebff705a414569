"""The compiled build kernels (graphop.jit) against their numpy references: the same neighbour
lists, the same operators entry for entry (values to 1e-12), the same errors, on the meshes users
bring: random clouds, graded points, tori, queries outside the sources, cell quadrature."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import graphop.jit as jit
from graphop.data.sample import mesh_to_sample
from graphop.errors import InputError, MeshError
from graphop.geometry.mesh import Mesh
from graphop.geometry.neighbors import PointTree, radius_neighbors
from graphop.layers.basis import KernelBasis
from graphop.layers.disco import disco_matrix
from graphop.layers.sparse import graph_set
from graphop.layers.stencil import mollifier_gradient_matrix

pytest.importorskip("numba")


def both(monkeypatch, build):
    """``build()`` with the numpy reference, then with the compiled kernels."""
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("GRAPHOP_JIT", flag)
        assert jit.enabled() == (flag == "1")
        out.append(build())
    return out


def assert_same_matrix(ref: sp.csr_matrix, fast: sp.csr_matrix, rtol=1e-12):
    ref = ref.tocsr(copy=True)
    ref.eliminate_zeros()            # the kernels never store an exact zero
    ref.sort_indices()
    assert fast.shape == ref.shape
    assert fast.has_sorted_indices
    np.testing.assert_array_equal(fast.indptr, ref.indptr)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    np.testing.assert_allclose(fast.data, ref.data, rtol=rtol, atol=rtol * abs(ref.data).max())


def graded(n, d, rng):
    """Points crowded towards a corner (spacing varies 30x): cells of very unequal counts."""
    return rng.random((n, d)) ** 3


@pytest.mark.parametrize("d, periodic, same, include_self", [
    (2, None, True, True), (2, None, False, True), (2, None, True, False), (3, None, True, True),
    (3, None, False, True), (1, None, False, True), (2, 1.0, True, True), (2, (1.0, 2.0), False, True),
    (3, 1.0, False, True), (2, 1.0, True, False)])
@pytest.mark.parametrize("points", ["uniform", "graded"])
def test_radius_neighbors_match_the_kd_tree(monkeypatch, d, periodic, same, include_self, points):
    rng = np.random.default_rng(d)
    make = graded if points == "graded" else (lambda n, d_, r: r.random((n, d_)))
    x, y = make(700, d, rng), make(900, d, rng)
    if periodic is not None:
        x, y = x * np.broadcast_to(periodic, (d,)), y * np.broadcast_to(periodic, (d,))
    r = 0.12 if d > 1 else 0.01
    ref, fast = both(monkeypatch, lambda: radius_neighbors(
        x, None if same else y, r, periodic=periodic, include_self=include_self))
    np.testing.assert_array_equal(fast.indptr, ref.indptr)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    np.testing.assert_allclose(fast.offsets, ref.offsets, atol=1e-15)
    np.testing.assert_allclose(fast.distances, ref.distances, atol=1e-15)
    assert fast.nnz > 5 * len(x)


def test_cell_search_edge_cases(monkeypatch):
    rng = np.random.default_rng(0)
    y = rng.random((500, 2))
    # queries far outside the sources, just outside, on the bounding box, huge coordinates
    x = np.array([[3.0, 3.0], [-0.05, 0.5], [1.02, 0.2], [1e12, 0.0], [-1e15, 3.0],
                  [y[:, 0].max(), y[:, 1].max()], [y[:, 0].min(), 0.5]])
    ref, fast = both(monkeypatch, lambda: radius_neighbors(x, y, 0.1))
    np.testing.assert_array_equal(fast.indptr, ref.indptr)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    assert fast.indptr[1] == 0 and fast.indptr[-1] > 0
    # a reused PointTree gives the same rows; sort=False the same sets in another order
    monkeypatch.setenv("GRAPHOP_JIT", "1")
    tree = PointTree(y)
    again = radius_neighbors(x, tree, 0.1)
    np.testing.assert_array_equal(again.indices, fast.indices)
    loose = radius_neighbors(rng.random((300, 2)), tree, 0.2, sort=False)
    tight = radius_neighbors(rng.random((300, 2)), tree, 0.2)
    assert loose.nnz > 0 and tight.nnz > 0
    q = rng.random((300, 2))
    a, b = radius_neighbors(q, tree, 0.2, sort=False), radius_neighbors(q, tree, 0.2)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    order = np.concatenate([np.argsort(a.indices[s:e]) + s
                            for s, e in zip(a.indptr[:-1], a.indptr[1:])])
    np.testing.assert_array_equal(a.indices[order], b.indices)
    np.testing.assert_allclose(a.offsets[order], b.offsets)


def test_cell_search_falls_back_on_a_small_torus(monkeypatch):
    # radius 0.4 on a unit torus: fewer than 3 cells per axis, the k-d tree serves (same pairs)
    rng = np.random.default_rng(1)
    x = rng.random((200, 2))
    ref, fast = both(monkeypatch, lambda: radius_neighbors(x, None, 0.4, periodic=1.0))
    np.testing.assert_array_equal(fast.indices, ref.indices)
    np.testing.assert_allclose(fast.offsets, ref.offsets, atol=1e-15)


CASES = [(2, (3, 4)), (2, (2, 4)), (2, (3, 1)), (2, (4, 6)), (3, (3, 4)), (3, (3, 9)),
         (3, (2, 1)), (1, (3, 2)), (1, (3, 1))]


@pytest.mark.parametrize("d, kernel_shape", CASES)
@pytest.mark.parametrize("normalize", ["quadrature", "mean", "l1", "none"])
def test_disco_kernel_matches_the_reference(monkeypatch, d, kernel_shape, normalize):
    rng = np.random.default_rng(7)
    for n, r in ((60, 0.3), (1500, 0.09)):         # under-resolved balls (blends), then fine
        x = graded(n, d, rng) if n > 100 else rng.random((n, d))
        w = rng.random(n) / n
        w[:3] = 0.0                               # zero-weight points carry nothing
        r = r / 3 if d == 1 else r
        basis = KernelBasis(kernel_shape, d)
        ref, fast = both(monkeypatch, lambda: disco_matrix(x, x, w, r, basis, same=True,
                                                           normalize=normalize))
        assert_same_matrix(ref, fast)


@pytest.mark.parametrize("periodic", [None, 1.0])
@pytest.mark.parametrize("normalize", ["quadrature", "l1"])
def test_disco_kernel_with_cell_quadrature(monkeypatch, periodic, normalize):
    # the product with the cells' interpolation B is fused into the kernel
    rng = np.random.default_rng(3)
    pts = rng.random((900, 2))
    data = mesh_to_sample(Mesh.from_points(pts, measure=1.0).with_point_data(
        a=pts[:, 0], u=pts[:, 1]), ["a"], ["u"])
    if periodic:
        data.periodic = torch.tensor([[1.0, 1.0]])
    xq, wq, B = graph_set(data, need_weight=True, what="data", cells=True).quadrature(0)
    basis = KernelBasis((3, 4), 2)
    ref, fast = both(monkeypatch, lambda: disco_matrix(
        pts, xq, wq, 0.07, basis, normalize=normalize, interp=(B, pts), periodic=periodic))
    assert_same_matrix(ref, fast)


@pytest.mark.parametrize("d, periodic, cells", [(2, None, False), (3, None, False),
                                               (2, 1.0, False), (2, None, True)])
def test_gradient_kernel_matches_the_reference(monkeypatch, d, periodic, cells):
    rng = np.random.default_rng(5)
    pts = graded(800, d, rng) if periodic is None else rng.random((800, d))
    w = np.full(len(pts), 1.0 / len(pts))
    interp, pos, weight = None, pts, w
    if cells:
        data = mesh_to_sample(Mesh.from_points(pts, measure=1.0).with_point_data(
            a=pts[:, 0], u=pts[:, 1]), ["a"], ["u"])
        pos, weight, interp = graph_set(data, need_weight=True, what="data",
                                        cells=True).quadrature(0)
    ref, fast = both(monkeypatch, lambda: mollifier_gradient_matrix(
        pos, weight, 0.15, periodic=periodic, pos_out=pts if cells else None, interp=interp))
    if cells:
        assert_same_matrix(ref, fast)
    else:                                   # every pair of the ball is stored, zeros included
        np.testing.assert_array_equal(fast.indptr, ref.indptr)
        np.testing.assert_array_equal(fast.indices, ref.indices)
        np.testing.assert_allclose(fast.data, ref.data, rtol=1e-12,
                                   atol=1e-12 * abs(ref.data).max())


def test_gradient_kernel_raises_like_the_reference(monkeypatch):
    pts = np.array([[0.0, 0.0], [0.05, 0.0], [2.0, 2.0]])
    w = np.array([1.0, 1.0, 0.0])              # the lone point's ball holds no weight
    for flag in ("0", "1"):
        monkeypatch.setenv("GRAPHOP_JIT", flag)
        with pytest.raises(MeshError, match="point 2"):
            mollifier_gradient_matrix(pts, w, 0.1)


def test_jit_switch(monkeypatch):
    monkeypatch.setenv("GRAPHOP_JIT", "maybe")
    with pytest.raises(InputError, match="GRAPHOP_JIT"):
        jit.enabled()
    monkeypatch.setenv("GRAPHOP_JIT", "off")
    assert not jit.enabled()
    monkeypatch.delenv("GRAPHOP_JIT")
    assert jit.enabled()


@pytest.mark.parametrize("periodic", [None, 1.0])
def test_count_pairs_on_the_cell_list(monkeypatch, periodic):
    # exact (every query counted) and sampled counts agree with the k-d tree's; a PointTree's
    # cell list serves the count and the search that follows
    from graphop.geometry.neighbors import count_pairs

    rng = np.random.default_rng(11)
    x, y = graded(400, 2, rng), rng.random((3000, 2))
    exact = both(monkeypatch, lambda: count_pairs(x, y, 0.08, periodic=periodic))
    assert exact[0] == exact[1] == radius_neighbors(x, y, 0.08, periodic=periodic).nnz
    sampled = both(monkeypatch, lambda: count_pairs(y, PointTree(y, periodic), 0.08,
                                                    periodic=periodic, sample=200))
    assert sampled[0] == sampled[1] > 0


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spatial_order(monkeypatch, d):
    # a permutation (the same from the compiled sort and numpy's), ties kept in order, and
    # local: consecutive points of a random cloud lie a few spacings apart, not across the box
    from graphop.geometry.neighbors import spatial_order

    rng = np.random.default_rng(d)
    for x in (rng.random((20000, d)), graded(3000, d, rng),
              np.repeat(rng.random((40, d)), 3, axis=0), np.full((7, d), 2.5)):
        ref, fast = both(monkeypatch, lambda: spatial_order(x))
        np.testing.assert_array_equal(fast, ref)
        np.testing.assert_array_equal(np.sort(fast), np.arange(len(x)))
    same = np.repeat(rng.random((40, d)), 3, axis=0)      # copies of a point keep their order
    o = spatial_order(same)
    firsts = o[np.arange(0, len(o), 3)]
    np.testing.assert_array_equal(o.reshape(-1, 3), firsts[:, None] + [0, 1, 2])
    x = rng.random((20000, d))
    step = np.linalg.norm(np.diff(x[spatial_order(x)], axis=0), axis=1).mean()
    spacing = len(x) ** (-1.0 / d)
    assert step < 3 * spacing, (step, spacing)
    assert np.linalg.norm(np.diff(x, axis=0), axis=1).mean() > 10 * spacing
    assert len(spatial_order(x[:1])) == 1 and len(spatial_order(x[:0])) == 0


def test_stack_permuted(monkeypatch):
    # blocks holding the rows of a permutation's queries, put back in query order: the rows
    # that scipy's row indexing gives, from the compiled scatter (1 and 2 threads) and from the
    # reference
    from graphop.layers.sparse import stack_permuted

    rng = np.random.default_rng(4)
    n, width = 500, 3
    full = sp.random(n * width, 300, density=0.05, random_state=5, format="csr")
    order = rng.permutation(n)
    rows = (order[:, None] * width + np.arange(width)).ravel()
    moved = full[rows]
    parts = [moved[a * width:b * width] for a, b in ((0, 170), (170, 171), (171, 500))]
    for flag, threads in (("0", "1"), ("1", "1"), ("1", "2")):
        monkeypatch.setenv("GRAPHOP_JIT", flag)
        monkeypatch.setenv("GRAPHOP_BUILD_THREADS", threads)
        got = stack_permuted(parts, order, width)
        assert (got != full).nnz == 0
        np.testing.assert_array_equal(got.indptr, full.indptr)
    with pytest.raises(ValueError, match="width rows"):
        stack_permuted(parts[:2], order, width)


@pytest.mark.parametrize("mesh", ["graded cloud", "torus cloud", "ball"])
def test_builds_in_spatial_order_give_the_same_operators(monkeypatch, mesh):
    # DISCO and the mollifier gradient over a mesh's cells (a planar cloud's triangles, on a
    # torus too, a 3D ball's tetrahedra), built with the output points in spatial order (every
    # size, through monkeypatch) on 2 threads in blocks: the matrices of the plain compiled
    # build and of the numpy reference
    import graphop.layers.sparse as sparse
    from graphop.geometry.domains import mesh_ball

    rng = np.random.default_rng(8)
    periodic, r = None, 0.06
    if mesh == "ball":
        m = mesh_ball(1500, seed=2)
        pts, r = m.points, 0.3
    else:
        pts = graded(2500, 2, rng) if mesh == "graded cloud" else rng.random((2500, 2))
        m = Mesh.from_points(pts, measure=1.0)
    data = mesh_to_sample(m.with_point_data(a=pts[:, 0], u=pts[:, 1]), ["a"], ["u"])
    if mesh == "torus cloud":
        periodic = 1.0
        data.periodic = torch.tensor([[1.0, 1.0]])
    xq, wq, B = graph_set(data, need_weight=True, what="data", cells=True).quadrature(0)
    basis = KernelBasis((3, 4), pts.shape[1])
    monkeypatch.setenv("GRAPHOP_BUILD_THREADS", "2")
    monkeypatch.setattr(sparse, "PARALLEL_MIN_PAIRS", 1000)

    def builds():
        return (disco_matrix(pts, xq, wq, r, basis, interp=(B, pts), periodic=periodic),
                mollifier_gradient_matrix(xq, wq, r, pos_out=pts, interp=B, periodic=periodic,
                                          chunk_pairs=len(pts) * 40))

    ref = both(monkeypatch, builds)[0]
    plain = builds()
    monkeypatch.setattr(sparse, "ORDERED_MIN_ROWS", 0)
    ordered = builds()
    for r_, p, o in zip(ref, plain, ordered):
        assert_same_matrix(r_, o)
        np.testing.assert_array_equal(o.indices, p.indices)
        np.testing.assert_allclose(o.data, p.data, rtol=1e-13, atol=1e-13 * abs(p.data).max())
    if mesh != "graded cloud":
        return
    # a ball without weight is reported by the point's own number, not its place in the order
    w0 = wq.copy()
    far = np.argmin(np.linalg.norm(pts - [0.9, 0.9], axis=1))
    w0[np.linalg.norm(xq - pts[far], axis=1) < 0.02] = 0.0
    with pytest.raises(MeshError, match=f"point {far} "):
        mollifier_gradient_matrix(xq, w0, 0.02, pos_out=pts, interp=B)


@pytest.mark.parametrize("periodic", [None, 1.0])
def test_cell_search_with_binary_searches(monkeypatch, periodic):
    # a cell list without a start offset per cell (DENSE_CELLS_PER_POINT 0: ~40k cells for
    # 3000 points) finds each run of cells by binary search: the k-d tree's pairs, sorted
    import graphop.geometry.neighbors as nbm

    monkeypatch.setattr(nbm, "DENSE_CELLS_PER_POINT", 0)
    rng = np.random.default_rng(12)
    x, y = graded(500, 2, rng), graded(3000, 2, rng)
    cells = nbm._cell_list(y, 0.02, None if periodic is None else np.ones(2))
    assert cells is not None and len(cells[-1]) == 0            # no start table
    ref, fast = both(monkeypatch, lambda: radius_neighbors(x, y, 0.02, periodic=periodic))
    np.testing.assert_array_equal(fast.indptr, ref.indptr)
    np.testing.assert_array_equal(fast.indices, ref.indices)
    np.testing.assert_allclose(fast.offsets, ref.offsets, atol=1e-15)
    assert fast.nnz > len(x)


def test_kernels_use_no_numba_sort_helpers():
    # numba's sorts and searches are jitted helpers whose symbols can collide between cached
    # kernels loaded in one process (numba issue 10486: a cached gradient kernel ran the cell
    # search's argsort and left its rows unsorted); the kernels carry their own
    import inspect

    import graphop.geometry.neighbors as nbm
    import graphop.layers.disco as dm
    import graphop.layers.sparse as sm
    import graphop.layers.stencil as st

    kernels = [nbm._cell_pass, nbm._morton_argsort, dm._disco_rows_kernel,
               st._gradient_rows_kernel, sm._scatter_rows, sm._zero_fill]
    for k in kernels:
        code = "\n".join(line.split("#")[0] for line in inspect.getsource(k.py_func).splitlines())
        for name in ("np.sort(", "np.argsort(", "np.searchsorted(", ".sort(", "np.unique("):
            assert name not in code, (k.__name__, name)
