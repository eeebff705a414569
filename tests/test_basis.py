"""Kernel bases: exact counts, partition of unity, continuity, L1 norms."""
import math

import numpy as np
import pytest

from graphop.layers.basis import KernelBasis


def ball_samples(n, d, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return z * rng.uniform(size=(n, 1)) ** (1 / d)


@pytest.mark.parametrize("shape,dim,L", [((3, 4), 2, 9), ((4, 6), 2, 19), ((1, 8), 2, 1),
                                         ((5, 1), 2, 5), ((3, 4), 3, 9), ((3, 9), 3, 19),
                                         ((2, 2), 1, 3), (4, 2, 4)])
def test_exact_count_and_every_function_used(shape, dim, L):
    b = KernelBasis(shape, dim)
    assert b.n_basis == L
    vals = b.dense(ball_samples(20000, dim))
    assert vals.shape == (20000, L)
    assert (np.abs(vals).max(axis=0) > 0.2).all()          # no parameter without a function


def test_2d_hats_partition_of_unity_and_continuity():
    b = KernelBasis((3, 4), 2)
    z = ball_samples(5000, 2)
    t = np.linalg.norm(z, axis=1)
    total = b.dense(z).sum(axis=1)
    # the hats sum to 1 inside the last node t = 2/3 and fall linearly to 0 at t = 1
    np.testing.assert_allclose(total, np.minimum(1.0, 3 * (1 - t)), atol=1e-12)
    phi = np.linspace(0, 2 * np.pi, 50)
    on_sphere = np.stack([np.cos(phi), np.sin(phi)], 1)
    assert np.abs(b.dense(on_sphere)).max() < 1e-12
    # continuity across sector boundaries and at the centre
    eps = 1e-9
    a = b.dense(np.array([[0.5 * np.cos(np.pi / 2 - eps), 0.5 * np.sin(np.pi / 2 - eps)]]))
    c = b.dense(np.array([[0.5 * np.cos(np.pi / 2 + eps), 0.5 * np.sin(np.pi / 2 + eps)]]))
    assert np.abs(a - c).max() < 1e-6
    np.testing.assert_allclose(b.dense(np.zeros((1, 2))), np.eye(9)[:1])


@pytest.mark.parametrize("shape,dim", [((3, 4), 2), ((3, 1), 2), ((3, 4), 3), ((2, 9), 3),
                                       ((3, 2), 1)])
def test_l1_norms_match_monte_carlo(shape, dim):
    b = KernelBasis(shape, dim)
    z = ball_samples(1000000, dim, seed=1)
    ball = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1)
    mc = np.abs(b.dense(z)).mean(axis=0) * ball
    np.testing.assert_allclose(b.l1_norms(), mc, rtol=2e-2)


def test_isotropic_is_radial_only():
    b = KernelBasis((3, 4), 2, "isotropic")
    assert b.n_basis == 3
    z = ball_samples(100, 2)
    rot = z @ np.array([[0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(b.dense(z), b.dense(rot), atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown basis"):
        KernelBasis((3, 4), 2, "gaussian")
    with pytest.raises(ValueError, match="direction functions must be one of"):
        KernelBasis((3, 5), 3)
    with pytest.raises(ValueError, match="kernel_shape must be"):
        KernelBasis((0, 4), 2)
    with pytest.raises(ValueError, match="offsets must have shape"):
        KernelBasis((3, 4), 2).evaluate(np.zeros((3, 3)))
