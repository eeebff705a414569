"""Supports chosen from the training meshes ('auto'), their storage in checkpoints, and the
warnings for meshes that under-resolve a stored support (graphop.models.supports)."""
import numpy as np
import pytest
import torch

from graphop.errors import ConfigError
from graphop.geometry.domains import structured_square
from graphop.models import LocalGNO, build_model, resolve_supports
from graphop.models.supports import (dataset_support_warnings, mesh_spacing, points_per_ball,
                                     resolving_radius, support_warnings)

torch.set_num_threads(1)
TINY = dict(width=6, n_layers=1, latent_shape=(8, 8), modes=(3, 3))


def _sample(n, seed=0, dtype=torch.float32):
    m = structured_square(n)
    d = m.to_data(dtype=dtype)
    p = m.points
    a = np.sin(3 * p[:, 0] + seed) * np.cos(2 * p[:, 1])
    d.x = torch.tensor(a[:, None], dtype=dtype)
    d.y = torch.tensor((a * p[:, 0] * (1 - p[:, 0]))[:, None], dtype=dtype)
    return d


def _dense_interior_counts(pos, boundary, r):
    """Brute-force check (small meshes only): points within r of each point whose distance to
    the nearest boundary point is at least r."""
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    inner = dist[:, boundary].min(1) >= r
    return (dist <= r).sum(1)[inner]


def test_auto_disco_radius_holds_30_points_and_grows_on_coarser_meshes():
    radii = {}
    for n in (32, 16, 10):
        d = _sample(n)
        cfg = resolve_supports({"name": "local_gno", "in_channels": 1, "out_channels": 1}, [d])
        r = cfg["disco_radius"]
        counts = _dense_interior_counts(d.pos.double().numpy(), d.boundary.numpy(), r)
        assert np.median(counts) >= 30, (n, r, np.median(counts))
        # smallest such radius, to the 3 significant digits the choice is rounded to
        below = _dense_interior_counts(d.pos.double().numpy(), d.boundary.numpy(), 0.97 * r)
        assert np.median(below) < 30, (n, r)
        h = mesh_spacing(d.pos)
        assert cfg["encoder_radius"] >= 2 * h - 1e-12
        assert cfg["encoder_radius"] >= 1.5 * 1.1 / 31 - 1e-12   # 1.5 latent spacings
        radii[n] = r
    assert radii[10] > radii[16] > radii[32]
    # a 16 x 16 grid of the unit square: 37 lattice points within sqrt(10) h, h = 1/15
    assert radii[16] == pytest.approx(np.sqrt(10) / 15, rel=2e-3)
    # the old fixed default holds one point per ball of that grid
    d = _sample(16)
    assert points_per_ball(d.pos, 0.06, d.boundary) == 1


def test_coarsest_training_mesh_decides_and_user_values_win():
    fine, coarse = _sample(24), _sample(12)
    base = {"name": "local_gno", "in_channels": 1, "out_channels": 1}
    both = resolve_supports(base, [fine, coarse, fine])
    alone = resolve_supports(base, [coarse])
    assert both["disco_radius"] == alone["disco_radius"] > resolve_supports(base, [fine])["disco_radius"]
    assert base == {"name": "local_gno", "in_channels": 1, "out_channels": 1}  # not modified
    given = resolve_supports({**base, "disco_radius": 0.1, "encoder_radius": None}, [coarse])
    assert given["disco_radius"] == 0.1 and given["encoder_radius"] is None
    # only the branches the model has: gino has no DISCO radius, disco_only no encoder
    g = resolve_supports({"name": "gino", "in_channels": 1, "out_channels": 1}, [coarse])
    assert "disco_radius" not in g and g["encoder_radius"] == alone["encoder_radius"]
    dsc = resolve_supports({"name": "disco_only", "in_channels": 1, "out_channels": 1}, [coarse])
    assert dsc["disco_radius"] == alone["disco_radius"] and "encoder_radius" not in dsc
    lines = []
    resolve_supports(base, [coarse], log=lines.append)
    assert len(lines) == 1 and f"disco_radius {alone['disco_radius']:.3g}" in lines[0]
    assert "points/ball" in lines[0] and "spacing 0.0909" in lines[0]
    # a latent grid coarser than the mesh: 1.5 latent spacings wins over 2 mesh spacings
    lat = resolve_supports({**base, "latent_shape": [6, 6], "modes": [2, 2]}, [fine])
    assert lat["encoder_radius"] == pytest.approx(1.5 * 1.1 / 5, rel=1e-2)


def test_periodic_radius_counts_across_the_seam():
    rng = np.random.default_rng(0)
    pts = rng.random((600, 2))
    r, count = resolving_radius(pts, periodic=[1.0, 1.0])
    assert count >= 30
    # every point is interior on a torus: about 30 / (pi N) per unit area
    assert r == pytest.approx(np.sqrt(30 / (np.pi * 600)), rel=0.15)


def test_unresolved_auto_errors_clearly():
    d = _sample(8)
    model = LocalGNO(1, 1, **TINY)
    assert model.unresolved == ["disco_radius", "encoder_radius", "diff_kwargs.smoothing_radius"]
    with pytest.raises(ConfigError, match=r"disco_radius, encoder_radius, diff_kwargs.smoothing_radius "
                                          r"are still 'auto'.*"
                                          r"resolve_supports"):
        model(d)
    with pytest.raises(ConfigError, match="encoder_radius is still 'auto'"):
        LocalGNO(1, 1, branches=("global",), **TINY)(d)
    with pytest.raises(ConfigError, match="disco_radius must be 'auto' or a positive number"):
        build_model({"name": "local_gno", "in_channels": 1, "out_channels": 1, "disco_radius": "big"})
    # resolved: the same architecture runs, with the chosen radii in its layers
    cfg = resolve_supports({"name": "local_gno", "in_channels": 1, "out_channels": 1, **TINY}, [d])
    m = build_model(cfg)
    assert not m.unresolved and m.blocks[0].disco.radius == cfg["disco_radius"]
    assert m.encoder.radius == cfg["encoder_radius"]
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(m(d)).all()


def test_trainer_resolves_and_checkpoint_round_trips(tmp_path, capsys):
    from graphop.training.checkpoint import load_trained_model
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    train = [_sample(12, s) for s in range(4)]
    val = [_sample(12, 10)]
    cfg = TrainConfig(data="unused", inputs=["a"], targets=["u"], epochs=1, batch_size=2,
                      out=str(tmp_path / "run"), progress=False, device="cpu",
                      model={"name": "local_gno", **TINY})
    trainer = Trainer(cfg, datasets=(train, val))
    printed = capsys.readouterr().out
    mc = trainer.model_config
    expect = resolve_supports({"name": "local_gno", "in_channels": 1, "out_channels": 1, **TINY},
                              train)
    assert mc["disco_radius"] == expect["disco_radius"] and mc["encoder_radius"] == expect["encoder_radius"]
    assert f"disco_radius {mc['disco_radius']:.3g}" in printed
    assert f"encoder_radius {mc['encoder_radius']:.3g}" in printed
    trainer.fit()
    model, norm, ckpt = load_trained_model(tmp_path / "run")
    assert ckpt["model_config"]["disco_radius"] == mc["disco_radius"]
    assert model.blocks[0].disco.radius == mc["disco_radius"]
    assert model.encoder.radius == mc["encoder_radius"]
    with torch.no_grad():
        enc = norm.encode(val[0])
        assert torch.allclose(model(enc), trainer.module.eval()(enc))
    # a user's value wins over auto, and reaches the checkpoint
    cfg.model = {"name": "local_gno", **TINY, "disco_radius": 0.3}
    cfg.out = str(tmp_path / "run2")
    t2 = Trainer(cfg, datasets=(train, val))
    assert t2.model_config["disco_radius"] == 0.3
    # a model built with unresolved supports is refused by the trainer
    cfg.out = str(tmp_path / "run3")
    with pytest.raises(ConfigError, match="unresolved 'auto' supports"):
        Trainer(cfg, model=LocalGNO(1, 1, **TINY), datasets=(train, val))


def test_warnings_name_the_under_resolved_supports():
    d16 = _sample(16)
    cfg = resolve_supports({"name": "local_gno", "in_channels": 1, "out_channels": 1,
                            "branches": ["global", "disco", "diff"]}, [d16])
    assert support_warnings(cfg, d16.pos, d16.boundary) == []
    assert support_warnings(cfg, _sample(40).pos, _sample(40).boundary) == []  # finer: fine
    # 2.6x coarser: 5 points per ball, which the quadrature-normalised DISCO still handles
    # (only the grid encoder, 0.67 mesh spacings there, is named)
    (msg,) = support_warnings(cfg, _sample(6).pos, _sample(6).boundary)
    assert msg.startswith("encoder_radius")
    d5 = _sample(5)
    issues = support_warnings(cfg, d5.pos, d5.boundary)
    assert len(issues) == 3
    assert "points per DISCO ball" in issues[0] and f"disco_radius {cfg['disco_radius']:.3g}" in issues[0]
    assert "points per smoothing ball" in issues[1]
    assert "mesh spacings (spacing 0.25" in issues[2]
    old = {**cfg, "disco_radius": 0.06, "encoder_radius": None}
    (msg,) = support_warnings({**old, "branches": ["disco"]}, d16.pos, d16.boundary)
    assert msg.startswith("median 1 points per DISCO ball (disco_radius 0.06, mesh spacing 0.0667")
    # the old encoder default (1.5 latent spacings of 32 x 32 = 0.053) is 0.8 spacings of 16 x 16
    (msg,) = support_warnings({**old, "branches": ["global"]}, d16.pos, d16.boundary)
    assert "encoder_radius 0.0532 is 0.8 mesh spacings" in msg
    # a stored gino config names no branches: it is global-only
    gino = build_model({"name": "gino", "in_channels": 1, "out_channels": 1, "encoder_radius": None})
    assert "branches" not in gino.config
    assert support_warnings(gino.config, d16.pos, d16.boundary) == [msg]
    d5.source = "coarse.vtu"
    lines = dataset_support_warnings(cfg, [d16, d5, d5, _sample(4)], max_lines=1)
    assert len(lines) == 2 and lines[0].startswith("coarse.vtu (25 points) under-resolves")
    assert lines[1] == "... and 1 more mesh(es) that under-resolve the model's supports"


def test_predict_and_evaluate_print_one_warning_line(tmp_path, capsys):
    from graphop.inference.evaluate import evaluate_checkpoint
    from graphop.inference.predict import predict_file
    from graphop.io import write_mesh
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    def write(folder, n, k):
        for s in range(k):
            m = structured_square(n)
            p = m.points
            a = np.sin(3 * p[:, 0] + s) * np.cos(2 * p[:, 1])
            write_mesh(folder / f"s{s}.vtu", m.with_point_data(a=a, u=a * p[:, 0]))

    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "test").mkdir()
    write(tmp_path / "data" / "train", 14, 3)
    write(tmp_path / "data" / "test", 5, 2)
    cfg = TrainConfig(data=str(tmp_path / "data"), inputs=["a"], targets=["u"], epochs=1,
                      batch_size=2, out=str(tmp_path / "run"), progress=False, device="cpu",
                      val_fraction=0.0, model={"name": "local_gno", **TINY})
    Trainer(cfg).fit()
    capsys.readouterr()
    rep = evaluate_checkpoint(tmp_path / "run", splits=("train", "test"), plots=False,
                              progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    warn = [ln for ln in err if "warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("graphop evaluate: warning: test: ")
    assert "points per DISCO ball" in warn[0] and rep["support_warnings"] == [warn[0][27:]]
    predict_file(tmp_path / "run", tmp_path / "data" / "test" / "s0.vtu", out=tmp_path / "p.vtu")
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "s0.vtu (25 points) under-resolves" in warn[0]
    predict_file(tmp_path / "run", tmp_path / "data" / "train" / "s0.vtu", out=tmp_path / "q.vtu")
    assert "warning" not in capsys.readouterr().err


def test_smoothing_radius_auto_follows_the_disco_radius():
    d = _sample(16)
    base = {"name": "local_gno", "in_channels": 1, "out_channels": 1, **TINY,
            "diff_kwargs": {"smoothing_radius": "auto"}}
    cfg = resolve_supports(base, [d])
    assert cfg["diff_kwargs"]["smoothing_radius"] == cfg["disco_radius"]
    given = resolve_supports({**base, "diff_kwargs": {"smoothing_radius": 0.05}}, [d])
    assert given["diff_kwargs"]["smoothing_radius"] == 0.05
    # a given DISCO radius fixes the smoothing radius without data
    m = build_model({**base, "disco_radius": 0.3, "encoder_radius": 0.2})
    assert not m.unresolved and m.config["diff_kwargs"]["smoothing_radius"] == 0.3
    assert m.blocks[0].diff.smoothing_radius == 0.3



def test_large_meshes_are_measured_on_a_probe(monkeypatch):
    """Above PROBE_POINTS points the medians are taken at every k-th point (against all
    points): the auto radius and spacing must stay within 2% of the full measurement, on a
    random cloud and on a graded one, with and without a boundary."""
    import graphop.models.supports as S

    rng = np.random.default_rng(3)
    clouds = [rng.random((20000, 2)), np.stack([rng.random(20000) ** 2, rng.random(20000)], 1)]
    for pos in clouds:
        full = (S.resolving_radius(pos), S.mesh_spacing(pos), S.points_per_ball(pos, 0.03))
        monkeypatch.setattr(S, "PROBE_POINTS", 1500)
        assert len(S._probe(len(pos))) <= 1500
        probe = (S.resolving_radius(pos), S.mesh_spacing(pos), S.points_per_ball(pos, 0.03))
        monkeypatch.setattr(S, "PROBE_POINTS", 100_000)
        assert abs(probe[0][0] / full[0][0] - 1) < 0.02
        assert probe[0][1] >= 30                       # the count still holds at the probe
        assert abs(probe[1] / full[1] - 1) < 0.05
        assert abs(probe[2] / full[2] - 1) < 0.05
