"""LocalGNO on the sphere: the full model with fixed parameters converges under refinement,
sphere data train and evaluate through the CLI path, sphere files are recognised on read, and
the ``auto`` supports are geodesic."""
import math

import numpy as np
import pytest
import torch

from graphop.data.sample import mesh_to_sample
from graphop.geometry.sphere import icosphere, sphere_points
from graphop.models import LocalGNO
from graphop.models.supports import resolve_supports, support_warnings
from graphop.testing import check_refinement_convergence

torch.set_num_threads(1)


def _sample(mesh):
    p = mesh.points
    a = np.sin(2 * p[:, 0]) * np.cos(3 * p[:, 2]) + p[:, 1] ** 2
    return mesh_to_sample(mesh.with_point_data(a=a), ["a"], dtype=torch.float64)


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(in_channels=1, out_channels=1, width=8, n_layers=2, manifold="sphere",
               latent_shape=(16, 32), disco_radius=0.45, encoder_radius=0.4,
               diff_kwargs={"smoothing_radius": 0.45}, **kw)
    return LocalGNO(**cfg).double().eval()


@pytest.mark.parametrize("branches", [("global",), ("global", "disco", "diff")])
def test_sphere_model_converges_on_nested_icospheres(branches):
    model = _model(branches=branches)
    meshes = [icosphere(L) for L in (3, 4, 5)]          # each keeps the previous points first
    with torch.no_grad():
        outs = [model(_sample(m)) for m in meshes]
    res = check_refinement_convergence(outs, np.arange(meshes[0].n_points), max_ratio=0.6)
    assert res["differences"][-1] < 0.05 * float(outs[-1].abs().max())


def test_sphere_model_agrees_across_point_sets():
    """One function on every point set: the model on a Gauss grid, HEALPix and Fibonacci points
    interpolates to the same values as on a fine icosphere (compared through the spherical
    decoder's smoothness: the rms difference to the finest result, at the points of each)."""
    model = _model(branches=("global", "disco"))
    fine = icosphere(5)
    with torch.no_grad():
        ref = model(_sample(fine))[:, 0].numpy()
    from scipy.spatial import cKDTree

    tree = cKDTree(fine.points)
    scale = np.sqrt(np.mean(ref ** 2))
    for kind in ("gauss", "healpix", "fibonacci", "random"):
        m = sphere_points(kind, 3000)
        with torch.no_grad():
            got = model(_sample(m))[:, 0].numpy()
        _, j = tree.query(m.points)                      # nearest fine point (spacing 0.03 rad)
        err = np.sqrt(np.mean((got - ref[j]) ** 2)) / scale
        assert err < 0.02, (kind, err)   # measured 0.2-0.25%


def test_auto_supports_on_the_sphere_are_geodesic_and_resolved():
    mesh = icosphere(3)
    cfg = resolve_supports({"name": "local_gno", "manifold": "sphere", "latent_shape": [16, 32]},
                           [_sample(mesh)])
    r = cfg["disco_radius"]
    # a cap of angle r holds N (1 - cos r) / 2 points of a uniform set
    assert 25 <= mesh.n_points * (1 - math.cos(r)) / 2 <= 40
    assert cfg["encoder_radius"] >= 2 * math.pi / 16 - 1e-9
    assert cfg["diff_kwargs"]["smoothing_radius"] == r
    assert support_warnings(cfg, mesh.points) == []
    coarse = icosphere(1).points                          # 42 points: under-resolved
    assert any("DISCO ball" in w for w in support_warnings({**cfg, "disco_radius": 0.1}, coarse))


def test_sphere_mesh_file_is_recognised(tmp_path):
    from graphop.io import read_mesh, write_mesh

    m = icosphere(3, radius=2.0)
    path = tmp_path / "s.vtu"
    write_mesh(path, m)
    got = read_mesh(path)
    assert abs(got.weights.sum() - 4 * math.pi * 4.0) < 1e-9
    assert np.allclose(got.field_data["sphere"], [0, 0, 0, 2.0])


def test_sphere_data_train_and_evaluate_end_to_end(tmp_path):
    from graphop.data.generate import generate
    from graphop.inference.evaluate import evaluate_checkpoint
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    generate("swe", tmp_path / "d", 8, points=162, seed=1, workers=1, test_fraction=0.25,
             progress=False, lmax=15, horizon=2.0, spinup=1.0)
    cfg = TrainConfig(data=str(tmp_path / "d"), inputs=["h0", "zeta0", "delta0"],
                      targets=["h1", "zeta1", "delta1"], epochs=2, batch_size=2,
                      out=str(tmp_path / "run"), progress=False,
                      model={"name": "local_gno", "width": 8, "n_layers": 2,
                             "latent_shape": [8, 16]})
    tr = Trainer(cfg)
    assert tr.model_config["manifold"] == "sphere" and tr.normalizer.coords is None
    summary = tr.fit()
    assert math.isfinite(summary["best_val_rel_l2"])
    generate("swe", tmp_path / "g", 2, points=200, domains="gauss", seed=2, workers=1,
             progress=False, lmax=15, horizon=2.0, spinup=1.0)
    res = evaluate_checkpoint(tmp_path / "run", data=tmp_path / "g", out=tmp_path / "ev",
                              plots=False, progress=False)
    assert math.isfinite(res["rel_l2"])


def test_sphere_mesh_round_trips_through_gmsh_without_bogus_physical_names(tmp_path):
    from graphop.io import read_mesh, write_mesh

    m = sphere_points("icosphere", 162)
    write_mesh(tmp_path / "s.msh", m)
    text = (tmp_path / "s.msh").read_text(errors="ignore")
    assert "sphere" not in text                         # [0, 0, 0, R] is not a [tag, dim] name
    got = read_mesh(tmp_path / "s.msh")
    assert abs(got.weights.sum() - 4 * math.pi) < 1e-9 and got.boundary_sets == {}


def test_rollout_curve_from_the_command_line(tmp_path, capsys):
    import json

    from graphop.cli import main
    from graphop.data.generate import generate
    from graphop.inference.rollout import frame_stems, rollout_mesh
    from graphop.io import read_mesh
    from graphop.errors import DataError
    from graphop.inference.predict import predict_mesh
    from graphop.training.checkpoint import load_trained_model

    kw = dict(workers=1, progress=False, lmax=15, spinup=1.0)
    generate("swe", tmp_path / "d", 6, points=162, seed=1, horizon=2.0, **kw)
    generate("swe", tmp_path / "r", 2, points=162, seed=5, horizon=6.0, n_frames=3, **kw)
    assert main(["train", "--data", str(tmp_path / "d"), "--inputs", "h0,zeta0,delta0",
                 "--targets", "h1,zeta1,delta1", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--set", "model.width=8", "--set", "model.latent_shape=[8,16]",
                 "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "r"),
                 "--no-plots", "--rollout", "3", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rollout"]
    assert res["steps"] == [1, 2, 3] and all(math.isfinite(v) for v in res["rel_l2"])
    saved = json.loads((tmp_path / "run" / "eval" / "rollout.json").read_text())
    assert len(saved["per_file"]) == 2
    # step 1 of the rollout is the one-step prediction, scored as predict scores it
    model, norm, _ = load_trained_model(tmp_path / "run")
    mesh = read_mesh(sorted((tmp_path / "r" / "train").iterdir())[0])
    one = predict_mesh(model, norm, mesh, ["h0", "zeta0", "delta0"], ["h1", "zeta1", "delta1"])[1]
    errs = rollout_mesh(model, norm, mesh, ["h0", "zeta0", "delta0"], ["h1", "zeta1", "delta1"])
    assert len(errs) == 3 and abs(errs[0] - one) < 1e-6 * max(one, 1e-12)
    assert frame_stems(["a3", "b3"], ["a4", "b4"]) == (["a", "b"], 3)
    with pytest.raises(DataError):
        frame_stems(["a0"], ["u"])
    with pytest.raises(DataError):
        rollout_mesh(model, norm, mesh, ["h0", "zeta0", "delta0"], ["h1", "zeta1", "delta1"], 4)


def test_sphere_fields_are_drawn_as_a_longitude_latitude_map(tmp_path):
    pytest.importorskip("matplotlib")
    from graphop.geometry.domains import mesh_ball
    from graphop.inference.plot import _lonlat, save_field_plot

    m = sphere_points("fibonacci", 500, radius=3.0)
    lon, lat = _lonlat(m)
    assert lon.min() >= -180 and lon.max() <= 180 and abs(lat).max() <= 90
    i = int(np.argmax(m.points[:, 2]))
    assert lat[i] > 80                                   # the top point is near the north pole
    assert _lonlat(mesh_ball(200)) is None               # a ball is not a sphere
    out = save_field_plot(m.with_point_data(f=m.points[:, 0]), tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and str(out).endswith("s.png")
