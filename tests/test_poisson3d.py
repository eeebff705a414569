"""3D Poisson on tetrahedral meshes of random shapes (P1 FEM)."""
import numpy as np
import pytest

from graphop.data.fem import boundary_nodes, l2_error, p1_gradients
from graphop.data.poisson3d import (SHAPES_3D, kuhn_cube_mesh, poisson3d_sample, shape_mesh,
                                    solve_poisson)
from graphop.geometry.cells import cell_measures
from graphop.geometry.mesh import Mesh


def exact_u(p):
    return np.sin(p[:, 0]) * np.cos(0.7 * p[:, 1]) * np.exp(0.5 * p[:, 2])


def source(p):  # -Laplace(u) = (1 + 0.49 - 0.25) u
    return 1.24 * exact_u(p)


@pytest.mark.parametrize("shape", ["ball", "blob"])
def test_manufactured_solution_second_order(shape):
    hs, errs = [], []
    for n in (200, 1500, 8000):
        p, t = shape_mesh(shape, n, np.random.default_rng(11))
        u = solve_poisson(p, t, f=source(p), g=exact_u(p))
        hs.append(len(p) ** (-1 / 3))
        errs.append(l2_error(p, t, u, exact_u))
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert order > 1.8, (shape, order, errs)


def test_variable_coefficient_and_constants():
    p, t = shape_mesh("blob", 500, np.random.default_rng(2))
    # u = 1 solves -div(k grad u) = 0 with u = 1 on the boundary, for any k
    k = np.random.default_rng(0).uniform(1, 5, len(t))
    np.testing.assert_allclose(solve_poisson(p, t, f=0.0, g=1.0, coeff=k), 1.0, atol=1e-12)
    # a linear function is harmonic and in P1: reproduced exactly (constant coefficient)
    lin = p @ np.array([0.3, -1.0, 2.0]) + 0.5
    np.testing.assert_allclose(solve_poisson(p, t, f=0.0, g=lin, coeff=3.0), lin, atol=1e-10)


def test_meshes_are_valid():
    p, t = kuhn_cube_mesh(3)
    assert t.shape == (6 * 27, 4)
    assert cell_measures(p, "tetra", t).sum() == pytest.approx(8.0)
    for shape in SHAPES_3D:
        p, t = shape_mesh(shape, 3000, np.random.default_rng(4))
        vol, _ = p1_gradients(p, t)
        assert np.all(cell_measures(p, "tetra", t, signed=True) > 0)
        m = Mesh(p, {"tetra": t})
        assert 0.8 * 3000 < m.n_points < 1.2 * 3000 and m.warnings() == []
        assert vol.sum() == pytest.approx(m.measure)
        if shape == "ball":
            assert m.measure == pytest.approx(4 * np.pi / 3, rel=0.02)
    a, _ = shape_mesh("blob", 500, np.random.default_rng(1))
    b, _ = shape_mesh("blob", 500, np.random.default_rng(2))
    assert not np.allclose(a, b)


def test_sample():
    p, t = shape_mesh("ball", 800, np.random.default_rng(0))
    s = poisson3d_sample(p, t, np.random.default_rng(3))
    b = boundary_nodes(t, len(p))
    assert np.all(s["u"][b] == 0) and np.std(s["f"]) > 0
    # the discrete equation holds: K u = M f at interior nodes
    from graphop.data.fem import load_vector, stiffness_matrix

    r = stiffness_matrix(p, t) @ s["u"] - load_vector(p, t, s["f"])
    assert np.abs(r[~b]).max() < 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="unknown 3D shape"):
        shape_mesh("torus", 100)
    with pytest.raises(ValueError, match="3D Poisson"):
        solve_poisson(np.zeros((4, 2)), np.array([[0, 1, 2, 3]]))
