"""Tests of the nested-grid Darcy sets (graphop.experiments.sets.write_nested_grid_set): one fine
solve per sample, restricted to coarse grids that nest in it, as the FNO Darcy benchmark does."""
import json

import numpy as np
import pytest
import torch

from graphop.errors import ConfigError
from graphop.experiments.runner import validate_experiment
from graphop.experiments.sets import build_set, load_set, nested_grid_sizes
from graphop.io import read_mesh

torch.set_num_threads(1)
FINE = 33 * 33   # 9, 17 and 33 nest in 33 (cheap to solve)


def _spec(points, n=3, seed=5, structured="quad"):
    return {"n": n, "points": points, "seed": seed,
            "mesh": {"structured": structured, "solve_points": FINE}}


def _samples(root):
    return [read_mesh(p) for p in sorted((root / "train").glob("sample_*.vtu"))]


def test_every_resolution_holds_the_same_functions(tmp_path):
    r9 = build_set("darcy", _spec(81), {}, tmp_path)
    r17 = build_set("darcy", _spec(289), {}, tmp_path)
    r33 = build_set("darcy", _spec(1089), {}, tmp_path)
    assert len({r9, r17, r33}) == 3
    # one fine solve per sample, shared by the three sets
    caches = sorted(tmp_path.glob("darcy-fine-*"))
    assert len(caches) == 1 and len(list(caches[0].glob("sample_*.npz"))) == 3
    s9, s17, s33 = _samples(r9), _samples(r17), _samples(r33)
    assert [len(s) for s in (s9, s17, s33)] == [3, 3, 3]
    for m9, m17, m33 in zip(s9, s17, s33):
        assert (m9.n_points, m17.n_points, m33.n_points) == (81, 289, 1089)
        assert list(m17.cells) == ["quad"] and len(m17.cells["quad"]) == 16 * 16
        g17 = m17.points[:, :2].reshape(17, 17, 2)
        g33 = m33.points[:, :2].reshape(33, 33, 2)
        g9 = m9.points[:, :2].reshape(9, 9, 2)
        assert np.array_equal(g17, g33[::2, ::2]) and np.array_equal(g9, g17[::2, ::2])
        for k in ("a", "u"):
            f17 = m17.point_data[k].reshape(17, 17)
            assert np.array_equal(f17, m33.point_data[k].reshape(33, 33)[::2, ::2]), k
            assert np.array_equal(m9.point_data[k].reshape(9, 9), f17[::2, ::2]), k
        # the binary coefficient of the FNO benchmark, at the nodes
        assert set(np.unique(m33.point_data["a"]).tolist()) == {3.0, 12.0}
        assert np.abs(m17.weights.sum() - 1.0) < 1e-12 and np.abs(m33.weights.sum() - 1.0) < 1e-12
        u = m33.point_data["u"].reshape(33, 33)
        assert np.all(u[0] == 0) and np.all(u[:, -1] == 0) and u.max() > 0   # u = 0 on the boundary
    # different samples are different functions; the same seed gives the same set again
    assert not np.array_equal(s17[0].point_data["a"], s17[1].point_data["a"])
    again = build_set("darcy", _spec(289, seed=6), {}, tmp_path / "other")
    assert not np.array_equal(_samples(again)[0].point_data["u"], s17[0].point_data["u"])


def test_triangle_grid_has_the_same_nodal_data_and_loads_as_a_dataset(tmp_path):
    rq = build_set("darcy", _spec(289, n=2), {}, tmp_path)
    rt = build_set("darcy", _spec(289, n=2, structured="tri"), {}, tmp_path)
    for q, t in zip(_samples(rq), _samples(rt)):
        assert "triangle" in t.cells and len(t.cells["triangle"]) == 2 * 16 * 16
        assert np.array_equal(q.point_data["u"], t.point_data["u"])
    ds = load_set(rq, ["a"], ["u"])
    d = ds[0]
    assert d.x.shape == (289, 1) and d.y.shape == (289, 1)
    assert abs(float(d.weight.double().sum()) - 1.0) < 1e-6


def test_the_coarse_targets_come_from_the_fine_solve(tmp_path):
    """u at the 17 x 17 nodes is the 33 x 33 solution there, not a 17 x 17 solve: the two differ
    by the coarse grid's discretisation error (small but not zero)."""
    from graphop.data.darcy import darcy_sample
    from graphop.geometry.domains import structured_square

    m17 = _samples(build_set("darcy", _spec(289, n=1), {}, tmp_path))[0]
    c = structured_square(17, quad=False)
    direct = darcy_sample(c.points[:, :2], c.cells["triangle"], np.random.default_rng([5, 0]))
    assert np.array_equal(direct["a"], m17.point_data["a"])
    diff = np.abs(direct["u"] - m17.point_data["u"]).max() / np.abs(direct["u"]).max()
    assert 1e-4 < diff < 0.2, diff


@pytest.mark.parametrize("points, mesh, msg", [
    (300, {"structured": "quad", "solve_points": 16641}, "points=300 must be the node count n*n"),
    (400, {"structured": "quad", "solve_points": 16641}, "the 20 x 20 grid (points=400) does not nest"),
    (289, {"structured": "quad", "solve_points": 16000}, "mesh.solve_points=16000 must be"),
    (4225, {"structured": "quad", "solve_points": 1089}, "does not nest in the 33 x 33 grid"),
    (289, {"solve_points": 16641}, "solve_points needs structured: quad or tri"),
    (289, {"structured": "quad", "perturb": 0.2, "solve_points": 16641}, "unperturbed grid"),
])
def test_bad_nested_specs_are_one_line_config_errors(points, mesh, msg):
    cfg = {"problem": "darcy", "inputs": ["a"], "targets": ["u"], "seeds": [0],
           "train": {"n": 4, "points": 289, "seed": 0,
                     "mesh": {"structured": "quad", "solve_points": 16641}},
           "tests": {"t": {"n": 2, "points": points, "seed": 5, "mesh": mesh}},
           "variants": {"m": {"model": {"name": "fno"}}}}
    with pytest.raises(ConfigError) as info:
        validate_experiment(json.loads(json.dumps(cfg)))
    text = str(info.value)
    assert "\n" not in text and text.startswith("experiment: tests.t.mesh: ") and msg in text
    assert nested_grid_sizes(289, {"structured": "quad", "solve_points": 16641}) == (17, 129)
