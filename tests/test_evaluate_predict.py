"""The command line end to end on a folder of mesh files: train, evaluate, predict (other
format, other resolution, point cloud), and every bad-input case with its message."""
import json
import os

import numpy as np
import pytest
import torch

from graphop.training.checkpoint import load_trained_model
from graphop.cli import main as cli
from graphop.io import read_mesh, write_mesh
from graphop.data.sample import mesh_to_sample
from trainkit import TINY_GNO, make_mesh, write_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = write_dataset(root / "data", n_train=6, n_test=3, n=70)
    out = root / "run"
    code = cli(["train", "--data", str(data), "--inputs", "a", "--targets", "u", "--model",
                "local_gno", "--epochs", "3", "--batch-size", "2", "--lr", "5e-3", "--out", str(out),
                "--device", "cpu", "--no-progress", *TINY_GNO])
    assert code == 0
    return root, data, out


def _rel_l2_numpy(model, normalizer, mesh):
    """Independent per-sample metric: numpy sums over the lumped-mass weights."""
    d = mesh_to_sample(mesh, ["a"], ["u"])
    with torch.no_grad():
        p = normalizer.decode(model(normalizer.encode(d))).double().numpy()[:, 0]
    u, w = mesh.point_data["u"], mesh.weights
    return float(np.sqrt(np.sum(w * (p - u) ** 2) / np.sum(w * u**2))), p


def test_evaluate_json_tables_and_pictures(run, capsys):
    root, data, out = run
    capsys.readouterr()
    assert cli(["evaluate", str(out), "--data", str(data), "--json", "--device", "cpu"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_samples"] == 3 and rep["split"] == "test"
    assert rep["splits"]["train"]["n_samples"] == 6
    model, norm, _ = load_trained_model(out / "best.pt")
    ref = [_rel_l2_numpy(model, norm, read_mesh(p))[0] for p in sorted((data / "test").glob("*.vtu"))]
    assert rep["rel_l2"] == pytest.approx(float(np.mean(ref)), rel=1e-4)
    # three test resolutions (70, 140, 280 points) -> three groups of one sample
    groups = rep["by_resolution"]["test"]
    assert len(groups) == 3 and all(g["n_samples"] == 1 for g in groups.values())
    ev = out / "eval"
    for f in ("results.md", "results.json", "sample_best.png", "sample_median.png", "sample_worst.png"):
        assert (ev / f).is_file() and (ev / f).stat().st_size > 0, f
    md = (ev / "results.md").read_text()
    assert "| test | 3 |" in md and "By resolution" in md and "By domain family" in md


def test_predict_other_format_resolution_and_point_cloud(run, capsys):
    root, data, out = run
    model, norm, _ = load_trained_model(out)
    mesh = make_mesh(300, 777)  # a resolution the model never saw
    write_mesh(root / "new.vtu", mesh)
    write_mesh(root / "new.msh", mesh)  # another format: gmsh
    capsys.readouterr()
    assert cli(["predict", str(out / "best.pt"), str(root / "new.msh"), "--out",
                str(root / "pred_msh.vtu"), "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    ref, p_ref = _rel_l2_numpy(model, norm, mesh)
    assert info["rel_l2"] == pytest.approx(ref, rel=1e-4)
    got = read_mesh(root / "pred_msh.vtu")
    assert np.allclose(got.points, mesh.points)
    assert np.allclose(got.point_data["u_pred"], p_ref, atol=1e-5)
    assert np.allclose(got.point_data["u_error"], p_ref - mesh.point_data["u"], atol=1e-5)
    # same mesh as .vtu: identical prediction (the format does not matter)
    assert cli(["predict", str(out), str(root / "new.vtu"), "--out", str(root / "pred_vtu.vtu"),
                "--device", "cpu"]) == 0
    assert "relative L2 error against the file's fields" in capsys.readouterr().out
    assert np.allclose(read_mesh(root / "pred_vtu.vtu").point_data["u_pred"], p_ref, atol=1e-5)
    # a bare point cloud without the target: the prediction is written as 'u'
    np.savez(root / "cloud.npz", points=mesh.points, a=mesh.point_data["a"])
    assert cli(["predict", str(out), str(root / "cloud.npz"), "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["point_cloud"] and info["fields"] == ["u"] and info["rel_l2"] is None
    cloud = read_mesh(root / "cloud_pred.vtu")
    pc = np.asarray(cloud.point_data["u"])
    assert pc.shape == (300,) and np.isfinite(pc).all()
    # k-NN quadrature instead of lumped mass: the same function up to a modest difference
    diff = np.sqrt(np.mean((pc - p_ref) ** 2) / np.mean(p_ref**2))
    print("point cloud vs mesh prediction, relative difference", diff)
    assert diff < 0.25


def _err(capsys):
    return capsys.readouterr().err.strip()


def test_bad_inputs_give_one_line_errors(run, tmp_path, capsys):
    root, data, out = run
    # a mesh without the model's input field
    write_mesh(tmp_path / "noa.vtu", make_mesh(80, 5, with_fields=False))
    assert cli(["predict", str(out), str(tmp_path / "noa.vtu")]) == 2
    assert "noa.vtu: no point_data field 'a'; available: " in _err(capsys)
    # missing and empty data
    assert cli(["train", "--data", str(tmp_path / "nope"), "--targets", "u", "--out",
                str(tmp_path / "r1")]) == 2
    assert "nope" in _err(capsys)
    (tmp_path / "empty").mkdir()
    assert cli(["train", "--data", str(tmp_path / "empty"), "--inputs", "a", "--targets", "u",
                "--out", str(tmp_path / "r2")]) == 2
    assert "empty" in _err(capsys)
    # NaN in a field
    bad = write_dataset(tmp_path / "nan", n_train=3, n_test=1, n=40)
    m = read_mesh(bad / "train" / "sample_001.vtu")
    a = np.array(m.point_data["a"])
    a[7] = np.nan
    write_mesh(bad / "train" / "sample_001.vtu", m.with_point_data(a=a))
    assert cli(["train", "--data", str(bad), "--inputs", "a", "--targets", "u", "--out",
                str(tmp_path / "r3"), "--no-progress"]) == 2
    msg = _err(capsys)
    assert "NaN" in msg and "sample_001" in msg and "field 'a' has NaN or inf at 1 point(s)" in msg
    assert not (tmp_path / "r3" / "last.pt").exists()
    # unknown config key
    assert cli(["train", "--data", str(data), "--targets", "u", "--set", "epoch=3"]) == 2
    assert "unknown config key 'epoch'; valid keys: data, inputs" in _err(capsys)
    # corrupted checkpoint
    broken = tmp_path / "broken.pt"
    broken.write_bytes((out / "best.pt").read_bytes()[:1000])
    assert cli(["evaluate", str(broken), "--data", str(data)]) == 2
    assert "broken.pt: corrupted or truncated checkpoint" in _err(capsys)
    # resuming with another model: refused, nothing overwritten
    before = (out / "last.pt").read_bytes()
    assert cli(["train", "--resume", str(out), "--set", "model.width=16", "--no-progress"]) == 2
    msg = _err(capsys)
    assert "checkpoint is from another model (local_gno); differences:" in msg
    assert "width: 8 in the checkpoint vs 16" in msg
    assert (out / "last.pt").read_bytes() == before
    # a fresh run into an existing run directory is refused
    assert cli(["train", "--data", str(data), "--inputs", "a", "--targets", "u", "--out", str(out)]) == 2
    assert "already holds a training run" in _err(capsys)


def test_predict_onto_its_input_is_refused_unless_asked(run, tmp_path, capsys):
    root, data, out = run
    src = tmp_path / "in.vtu"
    write_mesh(src, make_mesh(90, 9))
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.vtu").symlink_to(src)
    os.link(src, tmp_path / "hard.vtu")
    (tmp_path / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    for target in (src, tmp_path / "sub" / ".." / "in.vtu", tmp_path / "link.vtu",
                   tmp_path / "hard.vtu", tmp_path / "dirlink" / "in.vtu"):
        assert cli(["predict", str(out), str(src), "--out", str(target)]) == 2
        msg = _err(capsys)
        assert "is the input mesh file" in msg and "--overwrite" in msg and "\n" not in msg
        assert src.read_bytes() == before
    # the input named through a link, the output by its real path: the same file, refused
    assert cli(["predict", str(out), str(tmp_path / "link.vtu"), "--out", str(src)]) == 2
    assert "is the input mesh file" in _err(capsys) and src.read_bytes() == before
    # asked for explicitly: replaced by the mesh with the predicted fields
    assert cli(["predict", str(out), str(src), "--out", str(src), "--overwrite"]) == 0
    assert "u_pred" in read_mesh(src).point_data


def test_non_finite_data_errors_name_the_users_field():
    from graphop.errors import DataError

    m = make_mesh(60, 3)
    a = np.array(m.point_data["a"])
    a[[4, 11]] = np.nan
    with pytest.raises(DataError) as exc:
        mesh_to_sample(m.with_point_data(a=a), ["a"], ["u"])
    msg = str(exc.value)
    assert "input field 'a' has NaN or inf at 2 point(s) (first: point 4)" in msg
    assert "'x'" not in msg
    u = np.array(m.point_data["u"])
    u[7] = np.inf
    with pytest.raises(DataError, match=r"target field 'u' has NaN or inf at 1 point\(s\) "
                                         r"\(first: point 7\)"):
        mesh_to_sample(m.with_point_data(u=u), ["a"], ["u"])


def test_evaluate_a_flat_folder_scores_every_file(run, tmp_path, capsys):
    root, data, out = run
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(12):
        write_mesh(flat / f"case_{i:02d}.vtu", make_mesh(50 + 5 * i, 500 + i))
    capsys.readouterr()
    assert cli(["evaluate", str(out), "--data", str(flat), "--json", "--no-plots",
                "--out", str(tmp_path / "ev")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"] == "all" and rep["n_samples"] == 12 and list(rep["splits"]) == ["all"]
    model, norm, _ = load_trained_model(out / "best.pt")
    ref = [_rel_l2_numpy(model, norm, read_mesh(p))[0] for p in sorted(flat.glob("*.vtu"))]
    assert rep["rel_l2"] == pytest.approx(float(np.mean(ref)), rel=1e-4)
    # asking for the seeded split explicitly still works
    assert cli(["evaluate", str(out), "--data", str(flat), "--json", "--no-plots",
                "--splits", "test", "--out", str(tmp_path / "ev2")]) == 0
    assert json.loads(capsys.readouterr().out)["n_samples"] == 2  # round(0.2 * 12) files
    assert cli(["evaluate", str(out), "--data", str(flat), "--splits", "tset"]) == 2
    assert "unknown split(s) 'tset'; choose from train, test, all" in _err(capsys)


def test_evaluate_the_runs_own_flat_folder_keeps_the_training_split(tmp_path, capsys):
    flat = tmp_path / "own"
    flat.mkdir()
    for i in range(10):
        write_mesh(flat / f"m{i}.vtu", make_mesh(40, i))
    run_dir = tmp_path / "r"
    assert cli(["train", "--data", str(flat), "--inputs", "a", "--targets", "u", "--epochs", "1",
                "--batch-size", "4", "--out", str(run_dir), "--device", "cpu", "--no-progress",
                *TINY_GNO]) == 0
    for extra in ([], ["--data", str(flat)]):
        capsys.readouterr()
        assert cli(["evaluate", str(run_dir), "--json", "--no-plots", *extra]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["split"] == "test" and rep["n_samples"] == 2
        assert rep["splits"]["train"]["n_samples"] == 8
    help_text = _help("evaluate")
    assert "seeded 80/20" in help_text and "every file" in help_text


def _help(command: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli([command, "--help"])
    return " ".join(buf.getvalue().split())


def test_evaluate_prebuilds_many_new_meshes_and_reuses_the_store(run, tmp_path, monkeypatch,
                                                                  capsys):
    """`graphop evaluate` on 34 meshes it never saw, with 2 threads and the operator store on:
    by the training's `prebuild_workers: auto` rule (the build timing fixed at 1 s a geometry
    here, so the rule, not the machine, decides) 32 of them go to 2 worker processes; the
    scores equal an evaluation that builds everything itself, and a second evaluation loads
    every operator from the store and builds none."""
    import graphop.layers.sparse as ops
    from graphop.training import prebuild

    root, data, out = run
    flat = tmp_path / "many"
    flat.mkdir()
    for i in range(34):
        write_mesh(flat / f"case_{i:02d}.vtu", make_mesh(40 + i, 700 + i))
    real = prebuild.probe_seconds
    monkeypatch.setattr(prebuild, "probe_seconds", lambda *a: real(*a) * 0 + 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    reports = {}
    try:
        for name, store in (("off", "off"), ("first", str(tmp_path / "store")),
                            ("second", str(tmp_path / "store"))):
            monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", store)
            ops.operator_cache.clear()
            capsys.readouterr()
            assert cli(["evaluate", str(out), "--data", str(flat), "--json", "--no-plots",
                        "--no-progress", "--out", str(tmp_path / name)]) == 0
            printed = capsys.readouterr().out
            st = ops.operator_cache.store
            reports[name] = (json.loads(printed[printed.index("{"):]), printed,
                             None if st is None else (st.saves, st.loads))
    finally:
        torch.set_num_threads(threads)
        ops.operator_cache.store = None
    off, first, second = reports["off"], reports["first"], reports["second"]
    assert off[2] is None and "built or loaded" not in off[1]
    assert "graphop evaluate all: operators of 32 geometries built or loaded in 2 processes" \
        in first[1]
    saves, loads = first[2]
    assert saves > 0 and loads > 0            # the 2 probed meshes built here, 32 loaded
    # the same store object counts on: the second evaluation saved nothing, loaded everything
    assert second[2][0] == saves and second[2][1] - loads == saves + loads
    for rep in (first[0], second[0]):
        assert rep["n_samples"] == 34
        assert rep["rel_l2"] == pytest.approx(off[0]["rel_l2"], rel=1e-5)


def test_predict_twice_loads_the_operators_it_stored(run, tmp_path, monkeypatch):
    """`graphop predict` keeps a mesh's operators in the operator store: predicting on it
    again (here with the same checkpoint) builds nothing and writes the same fields."""
    import graphop.layers.sparse as ops

    root, data, out = run
    mesh_file = tmp_path / "big.vtu"
    write_mesh(mesh_file, make_mesh(300, 4242))
    monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", str(tmp_path / "store"))
    preds, counts = [], []
    try:
        for k in range(2):
            ops.operator_cache.clear()
            assert cli(["predict", str(out), str(mesh_file), "--out", str(tmp_path / f"p{k}.vtu"),
                        "--no-progress"]) == 0
            st = ops.operator_cache.store
            counts.append((st.saves, st.loads))
            preds.append(read_mesh(tmp_path / f"p{k}.vtu").point_data["u_pred"])
    finally:
        ops.operator_cache.store = None
    (s1, l1), (s2, l2) = counts
    assert s1 > 0 and l1 == 0 and s2 == s1 and l2 == s1     # the second run loaded every one
    np.testing.assert_allclose(preds[1], preds[0], rtol=1e-6, atol=1e-7)
