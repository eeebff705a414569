"""Radius search against brute force: same set, bipartite, periodic, duplicates; k-NN."""
import numpy as np
import pytest

from graphop.errors import InputError
from graphop.geometry.neighbors import PointTree, knn_distances, radius_neighbors


def _brute(x, y, r, box=None):
    """All (i, j, offset) with |y_j - x_i| <= r (minimum image on a torus); dense on purpose:
    a reference for small sets."""
    off = y[None, :, :] - x[:, None, :]
    if box is not None:
        off = off - box * np.round(off / box)
    d = np.linalg.norm(off, axis=-1)
    i, j = np.nonzero(d <= r)
    return i, j, off[i, j], d[i, j]


def _pairs(nb):
    return nb.rows(), nb.indices


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_radius_same_set_equals_brute_force(dim, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((300, dim))
    r = 0.25 if dim == 3 else 0.1
    nb = radius_neighbors(x, radius=r)
    i, j, off, d = _brute(x, x, r)
    rows, cols = _pairs(nb)
    assert np.array_equal(rows, i) and np.array_equal(cols, j)  # row-major, sorted columns
    np.testing.assert_allclose(nb.offsets, off, atol=1e-15)
    np.testing.assert_allclose(nb.distances, d, atol=1e-15)
    assert nb.indptr[0] == 0 and nb.indptr[-1] == nb.nnz and nb.n_source == 300
    no_self = radius_neighbors(x, radius=r, include_self=False)
    assert no_self.nnz == nb.nnz - 300
    assert not np.any(no_self.rows() == no_self.indices)


def test_radius_bipartite_equals_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.random((150, 2)), rng.random((400, 2)) * 1.2 - 0.1
    nb = radius_neighbors(x, y, radius=0.12)
    i, j, off, d = _brute(x, y, 0.12)
    rows, cols = _pairs(nb)
    assert np.array_equal(rows, i) and np.array_equal(cols, j)
    np.testing.assert_allclose(nb.offsets, off, atol=1e-15)
    assert nb.n_query == 150 and nb.n_source == 400
    assert np.array_equal(nb.counts(), np.bincount(i, minlength=150))


@pytest.mark.parametrize("box", [1.0, (1.0, 2.0)])
def test_radius_periodic_equals_minimum_image_brute_force(box):
    rng = np.random.default_rng(3)
    b = np.broadcast_to(np.asarray(box, dtype=float), (2,))
    x = rng.random((250, 2)) * b
    y = rng.random((200, 2)) * b
    for src in (None, y):
        nb = radius_neighbors(x, src, radius=0.15, periodic=box)
        ref = x if src is None else y
        i, j, off, d = _brute(x, ref, 0.15, box=b)
        rows, cols = _pairs(nb)
        assert np.array_equal(rows, i) and np.array_equal(cols, j)
        np.testing.assert_allclose(nb.offsets, off, atol=1e-12)
        np.testing.assert_allclose(nb.distances, d, atol=1e-12)
    # pairs across the boundary exist and have short minimum-image offsets
    wrap = np.abs(x[nb.rows()] - y[nb.indices]).max(axis=1) > 0.5
    assert wrap.any() and np.all(np.abs(nb.offsets[wrap]) <= 0.15 + 1e-12)
    # points outside the box are wrapped into it
    shifted = radius_neighbors(x + b * 3, y - b, radius=0.15, periodic=box)
    assert np.array_equal(shifted.indices, nb.indices)
    np.testing.assert_allclose(shifted.offsets, nb.offsets, atol=1e-9)


@pytest.mark.parametrize("box", [None, 1.0, (1.0, 2.0)])
def test_point_tree_search_equals_plain_search(box):
    """A prebuilt PointTree (reused by chunked builds) finds the same pairs, offsets and
    distances as a search that builds its own tree, on blocks of queries; a tree built for
    another box is refused."""
    rng = np.random.default_rng(4)
    b = np.ones(2) if box is None else np.broadcast_to(np.asarray(box, dtype=float), (2,))
    x, y = rng.random((240, 2)) * b, rng.random((300, 2)) * b - 0.3 * b   # y partly outside
    tree = PointTree(y, periodic=box)
    assert len(tree) == 300
    for a in (0, 100, 200):
        ref = radius_neighbors(x[a:a + 100], y, radius=0.15, periodic=box)
        got = radius_neighbors(x[a:a + 100], tree, radius=0.15, periodic=box)
        np.testing.assert_array_equal(got.indptr, ref.indptr)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.offsets, ref.offsets)
        np.testing.assert_array_equal(got.distances, ref.distances)
    other = 2.0 if box is not None else 1.0
    with pytest.raises(InputError, match="PointTree was built with periodic"):
        radius_neighbors(x, tree, radius=0.15, periodic=other)


def test_duplicates_and_no_cap_on_neighbours():
    x = np.zeros((50, 2))  # 50 copies of one point
    x = np.concatenate([x, [[1.0, 1.0]]])
    nb = radius_neighbors(x, radius=0.01)
    assert np.array_equal(nb.counts(), [50] * 50 + [1])  # every duplicate, distance 0
    assert np.all(nb.distances == 0)
    bi = radius_neighbors(x[:3], x, radius=1e-9)
    assert np.array_equal(bi.counts(), [50, 50, 50])


def test_knn_distances_equal_brute_force():
    rng = np.random.default_rng(4)
    x = rng.random((200, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(knn_distances(x, 5), np.sort(d, axis=1)[:, :5], atol=1e-15)
    box = 1.0
    off = x[:, None] - x[None]
    dp = np.linalg.norm(off - box * np.round(off / box), axis=-1)
    np.fill_diagonal(dp, np.inf)
    np.testing.assert_allclose(knn_distances(x, 3, periodic=box), np.sort(dp, axis=1)[:, :3],
                               atol=1e-12)


@pytest.mark.parametrize("kwargs,message", [
    ({"radius": 0.0}, "radius must be a positive finite number"),
    ({"radius": np.inf}, "radius must be a positive finite number"),
    ({"radius": 0.6, "periodic": 1.0}, "must be below half the periodic box"),
    ({"radius": 0.1, "periodic": -1.0}, "periodic box sizes must be positive"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        radius_neighbors(np.random.default_rng(0).random((10, 2)), **kwargs)
    with pytest.raises(ValueError, match="NaN or inf"):
        radius_neighbors(np.array([[0.0, np.nan]]), radius=1.0)
    with pytest.raises(ValueError, match="query has dimension 2 but source has 3"):
        radius_neighbors(np.zeros((2, 2)), np.zeros((2, 3)), radius=1.0)
