"""The differential stencil is well-posed at every point of the hard point sets (issue #12)."""
import numpy as np
import pytest

from graphop.layers.stencil import (MAX_GROWTH, MU, coefficient_bound, local_scale, stencil_info,
                                    stencil_offsets)
from graphop.testing import check_stencil, hard_point_sets, monte_carlo_points

SETS = hard_point_sets(seed=0)


@pytest.mark.parametrize("name", sorted(SETS))
def test_linear_exact_and_bounded_at_every_point(name):
    pts, box = SETS[name]
    r = check_stencil(pts, box)
    print(f"{name}: {len(pts)} points, {r}")
    assert r["coef_max"] <= coefficient_bound(3, pts.shape[1])
    # measured 2.1-3.7 on these sets (the d-th-neighbour spacing gave up to 56); the bound C is
    # 41 (2D) / 61 (3D), so this also pins the typical size
    assert r["coef_max"] < 6
    # +-1 noise: max response within a small multiple of the median once 1/h is factored out
    # (measured <= 3.7; 29-37 with the d-th-neighbour spacing on clouds and anisotropic cells)
    assert r["noise_ratio"] < 8


def test_degenerate_neighbourhoods_grow_and_grid_points_do_not():
    pts, _ = SETS["interleaved_boundary"]
    m, info, _ = stencil_info(pts)
    on_bnd = ((pts < 1e-12) | (pts > 1 - 1e-12)).any(axis=1)
    grown = info.growth > 1
    assert grown.any() and grown[on_bnd].mean() > 0.3 and not grown[~on_bnd].any()
    assert (info.lambda_min >= MU).all() and len(info.degenerate) == 0
    # regular grid, corners included: no growth, h is the grid width at interior points
    n, w = 9, 0.125
    a = np.arange(n) * w
    g = np.stack(np.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)
    _, info, coef = stencil_info(g)
    inner = ((g > 0) & (g < a[-1])).all(axis=1)
    assert (info.growth == 1).all()
    np.testing.assert_allclose(info.h[inner], w, rtol=1e-12)
    np.testing.assert_allclose(coef[inner], 1.0, rtol=1e-12)   # one neighbour with weight 1


def test_check_fails_on_points_of_a_lower_dimensional_set():
    """Points on a line in 2D cannot span both directions: the check must say so."""
    t = np.random.default_rng(1).uniform(size=200)
    pts = np.stack([t, 0.5 * t], axis=1)
    _, info, coef = stencil_info(pts)
    assert len(info.degenerate) == len(pts) and info.growth.max() <= MAX_GROWTH * (1 + 1e-12)
    assert coef.max() <= coefficient_bound(3, 2)      # still bounded (truncated inverse)
    with pytest.raises(AssertionError, match="degenerate neighbourhood at the growth cap"):
        check_stencil(pts)


def test_flat_surface_in_3d_is_exact_along_the_surface():
    rng = np.random.default_rng(2)
    uv = rng.uniform(size=(400, 2))
    pts = np.c_[uv, 0.1 * uv[:, 0]]
    m, info, coef = stencil_info(pts)
    assert len(info.degenerate) == len(pts)           # reported, not hidden
    f = 2 * uv[:, 0] - uv[:, 1]                       # linear along the surface
    grad = np.array([2.0, -1.0, 0.0])
    grad = grad - (grad @ [-0.1, 0, 1]) / 1.01 * np.array([-0.1, 0, 1])   # tangent part
    want = stencil_offsets(3, 3) @ grad
    # exact along the surface wherever both tangent directions reach MU (away from the patch's
    # edges, where the grown box sees points on one side only)
    inner = ((uv > 0.2) & (uv < 0.8)).all(axis=1)
    np.testing.assert_allclose((m @ f).reshape(len(pts), -1)[inner], np.broadcast_to(
        want, (inner.sum(), len(want))), atol=1e-9)
    assert coef.max() <= coefficient_bound(3, 3)


def test_scale_tends_to_zero_under_refinement():
    hs = []
    for n in (500, 2000, 8000):
        _, info, _ = stencil_info(monte_carlo_points(n, seed=3))
        hs.append((np.median(info.h), info.h.max(), info.h.min()))
    for (med0, max0, _), (med1, max1, min1) in zip(hs[:-1], hs[1:]):
        assert 0.4 < med1 / med0 < 0.6 and max1 < 0.7 * max0   # h ~ N^(-1/2)
        assert min1 > 0.25 * med1                            # no tiny h on a random cloud


def test_bad_input_messages():
    p = np.zeros((12, 2))
    with pytest.raises(ValueError, match=r"point 0 coincides with all of its 8 nearest"):
        local_scale(p)
    with pytest.raises(ValueError, match="needs at least 3 points in 2D, got 2"):
        local_scale(np.eye(2))
