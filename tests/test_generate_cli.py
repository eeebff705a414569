"""``graphop generate`` (determinism by seed, resumability, manifest) and ``graphop plot``."""
import json

import numpy as np

from graphop.cli import main
from graphop.data.generate import generate
from graphop.io import read_mesh


def load_all(folder):
    man = json.loads((folder / "manifest.json").read_text())
    return man, [read_mesh(folder / r["file"]) for r in man["samples"]]


def test_deterministic_by_seed_not_workers(tmp_path, capsys):
    args = ["generate", "darcy", "--n", "6", "--points", "150,300", "--seed", "5",
            "--domains", "square,star", "--test-fraction", "0.5", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    assert "6 darcy samples (3 train, 3 test; 6 made" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "w1"), "--workers", "1"]) == 0
    m2, s2 = load_all(tmp_path / "w2")
    m1, s1 = load_all(tmp_path / "w1")
    assert m1["samples"] == m2["samples"]
    assert [r["family"] for r in m1["samples"]] == ["square", "star"] * 3
    sizes = [r["n_points"] for r in m1["samples"]]
    assert abs(sizes[0] - 150) < 20 and abs(sizes[2] - 300) < 30
    for a, b in zip(s1, s2):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.point_data["a"], b.point_data["a"])
        np.testing.assert_array_equal(a.point_data["u"], b.point_data["u"])
    # fixed-geometry family: one mesh shared by samples of the same size, different fields
    assert np.array_equal(s1[0].points, s1[4].points)
    assert not np.array_equal(s1[0].point_data["a"], s1[4].point_data["a"])
    assert m1["counts"] == {"train": 3, "test": 3} and m1["problem"] == "darcy"
    assert m1["command"][:3] == ["graphop", "generate", "darcy"]
    # another seed, other data
    generate("darcy", tmp_path / "s6", 2, points="150,300", domains="square,star", seed=6,
             workers=1, progress=False)
    _, s6 = load_all(tmp_path / "s6")
    assert not np.array_equal(s6[0].point_data["a"], s1[0].point_data["a"])


def test_resume_and_recipe_guard(tmp_path, capsys):
    out = tmp_path / "d"
    m = generate("poisson3d", out, 3, points=300, seed=1, workers=1, progress=False)
    assert m["_stats"]["made"] == 3
    first = (out / "train/sample_000001.vtu").read_bytes()
    (out / "train/sample_000000.vtu").unlink()
    (out / "train/sample_000002.vtu").write_text("truncated garbage")
    m = generate("poisson3d", out, 3, points=300, seed=1, workers=1, progress=False)
    assert m["_stats"] == {**m["_stats"], "made": 2, "skipped": 1}
    assert (out / "train/sample_000001.vtu").read_bytes() == first
    assert read_mesh(out / "train/sample_000002.vtu").point_data.keys() >= {"f", "u"}
    assert not list(out.rglob(".tmp-*"))
    code = main(["generate", "poisson3d", "--n", "3", "--points", "300", "--seed", "2",
                 "--out", str(out), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "different recipe (seed differ)" in err
    code = main(["generate", "darcy", "--n", "2", "--domains", "square,moon", "--out",
                 str(tmp_path / "x"), "--quiet"])
    assert code == 2 and "unknown domain(s) moon for darcy" in capsys.readouterr().err
    code = main(["generate", "ns", "--n", "2", "--set", "visc=1", "--out", str(tmp_path / "y")])
    assert code == 2 and "unknown parameter(s) for ns: visc" in capsys.readouterr().err


def test_plot_2d_3d_and_points(tmp_path, capsys):
    generate("darcy", tmp_path / "d", 1, points=200, domains="holes", workers=1, progress=False)
    generate("poisson3d", tmp_path / "p", 1, points=300, domains="blob", workers=1,
             progress=False)
    generate("ns", tmp_path / "n", 1, points=100, workers=1, progress=False, grid=16, t0=0.05,
             horizon=0.05)
    for folder in ("d", "p", "n"):
        f = tmp_path / folder / "train" / "sample_000000.vtu"
        assert main(["plot", str(f)]) == 0
        png = f.with_suffix(".png")
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    out = tmp_path / "u.png"
    assert main(["plot", str(tmp_path / "d/train/sample_000000.vtu"), "--field", "u",
                 "--out", str(out)]) == 0
    from matplotlib.image import imread

    img = imread(out)
    assert img.shape[0] > 200 and img[..., :3].std() > 0.05  # a picture, not a blank page
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "d/train/sample_000000.vtu"), "--field", "zz"]) == 2
    assert "no point_data field 'zz'; available: ['a', 'u']" in capsys.readouterr().err
