"""``graphop info`` on every example mesh: text report, --json keys and closed-form values."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from graphop.cli import main
from graphop.io import read_mesh

MESHES = Path(__file__).resolve().parents[1] / "meshes"
EXAMPLES = ["lshape.msh", "disk_holes.vtu", "airfoil.msh", "torus.obj", "ball.vtu"]


def _info_json(path, capsys) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


@pytest.mark.parametrize("name", EXAMPLES)
def test_info_text_on_every_example(name, capsys):
    assert main(["info", str(MESHES / name)]) == 0
    out = capsys.readouterr().out
    for label in ("format:", "dimension:", "points:", "cells:", "weight sum:", "bounding box:",
                  "edge length:", "boundary:", "fields:", "warnings:"):
        assert label in out, label
    assert "warnings:     none" in out


@pytest.mark.parametrize("name", EXAMPLES)
def test_info_json_keys_and_consistency(name, capsys):
    s = _info_json(MESHES / name, capsys)
    for key in ("n_points", "dim", "measure", "weight_sum", "cells", "fields", "bbox",
                "edge_length", "n_boundary", "warnings", "format", "hash"):
        assert key in s, key
    assert s["weight_sum"] == pytest.approx(s["measure"], rel=1e-12)
    mesh = read_mesh(MESHES / name)
    assert s["n_points"] == mesh.n_points and s["hash"] == mesh.hash
    assert s["cells"] == {t: len(c) for t, c in mesh.cells.items()}
    assert s["edge_length"]["min"] <= s["edge_length"]["median"] <= s["edge_length"]["max"]
    assert s["warnings"] == []


def test_info_json_closed_form_values(capsys):
    ls = _info_json(MESHES / "lshape.msh", capsys)
    assert ls["format"] == "gmsh" and ls["dim"] == 2
    assert ls["measure"] == pytest.approx(3.0, rel=1e-12)  # [0,2]^2 minus [1,2]^2
    assert ls["bbox"] == {"min": [0.0, 0.0], "max": [2.0, 2.0]}
    assert set(ls["boundary_sets"]) == {"bottom", "right", "reentrant", "top", "left"}
    assert ls["fields"] == {"u": [ls["n_points"]]}
    dh = _info_json(MESHES / "disk_holes.vtu", capsys)
    assert dh["fields"]["grad_u"] == [dh["n_points"], 2]
    # inscribed polygons: each circle's area deficit is about pi h^2 / 6
    exact = math.pi * (1 - 0.25**2 - 2 * 0.2**2)
    assert abs(exact - dh["measure"]) < 4 * math.pi * dh["edge_length"]["max"] ** 2 / 6
    tor = _info_json(MESHES / "torus.obj", capsys)
    assert tor["dim"] == 3 and tor["top_dim"] == 2 and tor["n_boundary"] == 0
    assert tor["measure"] == pytest.approx(4 * math.pi**2 * 0.35, rel=0.01)
    ball = _info_json(MESHES / "ball.vtu", capsys)
    assert ball["cells"] == {"tetra": ball["cells"]["tetra"]} and ball["top_dim"] == 3
    assert ball["measure"] == pytest.approx(4 / 3 * math.pi, rel=0.02)
    af = _info_json(MESHES / "airfoil.msh", capsys)
    assert set(af["boundary_sets"]) == {"inlet", "outlet", "walls", "airfoil"}
    # channel 4.5 x 3 minus the NACA 0012 section (area 0.0821 for chord 1)
    assert af["measure"] == pytest.approx(13.5 - 0.0821, abs=2e-3)


def test_info_on_point_cloud_and_warnings(tmp_path, capsys):
    pts = np.random.default_rng(0).random((200, 2))
    pts[5] = pts[4]  # a duplicate point
    np.savez(tmp_path / "pc.npz", points=pts, u=pts[:, 0])
    assert main(["info", str(tmp_path / "pc.npz")]) == 0
    out = capsys.readouterr().out
    assert "point cloud" in out and "nn distance:" in out
    assert "1 pair(s) of duplicate points" in out
    s = _info_json(tmp_path / "pc.npz", capsys)
    assert s["cells"] == {} and s["top_dim"] == 0
    assert s["warnings"] == ["1 pair(s) of duplicate points"]


def test_example_meshes_match_their_recipe():
    """meshes/make_meshes.py is deterministic and the committed files are its output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_meshes", MESHES / "make_meshes.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for name, make in [("lshape.msh", recipe.lshape), ("airfoil.msh", recipe.airfoil),
                       ("disk_holes.vtu", recipe.disk_holes)]:
        made, stored = make(), read_mesh(MESHES / name)
        assert made.hash == stored.hash, name
        for k, v in made.point_data.items():
            np.testing.assert_allclose(stored.point_data[k], v, rtol=1e-12, atol=1e-15)
