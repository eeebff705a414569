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


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_shipped_recipes_run_with_flags_overriding_their_keys(tmp_path, capsys):
    import shutil

    for name in ("darcy", "ns", "poisson3d"):
        shutil.copy(REPO / "datasets" / f"{name}.yaml", tmp_path / f"{name}.yaml")
    small = {"darcy": ["--points", "150"], "poisson3d": ["--points", "300"],
             "ns": ["--points", "64", "--set", "grid=16", "--set", "t0=0.05",
                    "--set", "horizon=0.05"]}
    for name, extra in small.items():
        assert main(["generate", str(tmp_path / f"{name}.yaml"), "--n", "3", "--workers", "1",
                     "--quiet", *extra]) == 0, capsys.readouterr().err
        out = tmp_path / name  # the recipe's relative out, beside the recipe
        man = json.loads((out / "manifest.json").read_text())
        assert man["problem"] == name and man["n"] == 3  # --n overrides the recipe's 200
        assert man["counts"] == {"train": 2, "test": 1}  # the recipe's test_fraction 0.2
    man = json.loads((tmp_path / "darcy" / "manifest.json").read_text())
    assert man["domains"] == ["square", "disk", "lshape", "holes"] and man["points"] == [150]
    ns = json.loads((tmp_path / "ns" / "manifest.json").read_text())
    assert ns["params"]["grid"] == 16 and ns["params"]["nu"] == 1e-4  # --set over set:
    # an explicit --out wins over the recipe's
    assert main(["generate", str(tmp_path / "darcy.yaml"), "--n", "1", "--points", "150",
                 "--workers", "1", "--quiet", "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "manifest.json").is_file()


def test_recipe_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("problem: darcy\nn: 4\npoints_per_sample: 100\n")
    assert main(["generate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graphop: error: {bad}: unknown recipe key 'points_per_sample'; "
                          "valid keys: problem, n, points") and err.count("\n") == 1
    bad.write_text("problem: darcy\nn: many\n")
    assert main(["generate", str(bad)]) == 2
    assert f"{bad}: n: expected an integer, got 'many'" in capsys.readouterr().err
    assert main(["generate", "darcyy", "--out", str(tmp_path / "o")]) == 2
    assert "unknown problem 'darcyy'" in capsys.readouterr().err
    assert main(["generate", "darcy"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_generated_data_under_datasets_is_git_ignored_but_recipes_are_not():
    import subprocess

    def ignored(path):
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        return r.returncode == 0

    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        import pytest

        pytest.skip("not a git checkout")
    assert ignored("datasets/darcy/train/sample_000000.vtu")
    assert ignored("datasets/darcy/manifest.json")
    for name in ("darcy", "ns", "poisson3d"):
        assert (REPO / "datasets" / f"{name}.yaml").is_file()
        assert not ignored(f"datasets/{name}.yaml")
