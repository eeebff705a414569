"""Mesh augmentation by subsampling and by refinement (graphop.data.augment) and its use in
training."""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from graphop.data.augment import AugmentedDataset, augmented, refinable, refine, subsample
from graphop.errors import ConfigError
from graphop.geometry.domains import mesh_domain, structured_square

torch.set_num_threads(1)


def _field(p):
    return np.stack([np.sin(3 * p[:, 0]) * np.cos(2 * p[:, 1]), p[:, 0] ** 2 - p[:, 1]], 1)


def _sample(mesh, dtype=torch.float64):
    d = mesh.to_data(dtype=dtype)
    f = _field(mesh.points[:, :2])
    d.x = torch.tensor(f[:, :1], dtype=dtype)
    d.y = torch.tensor(f[:, 1:], dtype=dtype)
    return d


def test_subsample_keeps_exact_values_boundary_and_measure():
    m = mesh_domain("disk", 800)
    d = _sample(m)
    s = subsample(d, np.random.default_rng(0), fraction=0.6)
    n_b, n_in = int(d.boundary.sum()), int((~d.boundary).sum())
    assert s.pos.shape[0] == n_b + round(0.6 * n_in)
    assert int(s.boundary.sum()) == n_b  # every boundary point kept
    # the kept points carry their exact field values
    f = _field(s.pos.numpy())
    assert torch.allclose(s.x, torch.tensor(f[:, :1]), atol=1e-12)
    assert torch.allclose(s.y, torch.tensor(f[:, 1:]), atol=1e-12)
    # the weights are the mesh's own, gathered: same total measure, all positive
    assert float(s.weight.sum()) == pytest.approx(float(d.weight.sum()), rel=1e-12)
    assert float(s.weight.sum()) == pytest.approx(m.measure, rel=1e-12)
    assert (s.weight > 0).all()
    # ... and still a quadrature: integral of x^2 + y over the disk (radius 1) is pi/4
    q = float((s.weight * (s.pos[:, 0] ** 2 + s.pos[:, 1])).sum())
    assert q == pytest.approx(np.pi / 4, abs=0.02)
    # cells are gone (they referred to removed points); the original is untouched
    assert "face" not in s.keys() and "face" in d.keys() and d.pos.shape[0] == m.n_points
    assert s.mesh_hash != d.mesh_hash and s.mesh_hash.startswith(d.mesh_hash)


def test_subsample_is_deterministic_per_seed_and_epoch():
    d = _sample(structured_square(20))
    a = subsample(d, np.random.default_rng([3, 1, 7]), 0.7)
    b = subsample(d, np.random.default_rng([3, 1, 7]), 0.7)
    c = subsample(d, np.random.default_rng([3, 2, 7]), 0.7)
    assert torch.equal(a.pos, b.pos) and torch.equal(a.weight, b.weight)
    assert a.pos.shape == c.pos.shape and not torch.equal(a.pos, c.pos)
    ds = AugmentedDataset([d, d], fraction=0.7, seed=3)
    ds.set_epoch(1)
    e1 = ds[0]
    assert torch.equal(ds[0].pos, e1.pos)          # same epoch, same mesh
    assert not torch.equal(ds[1].pos, e1.pos)      # other sample index, other draw
    ds.set_epoch(2)
    assert not torch.equal(ds[0].pos, e1.pos)      # a new mesh every epoch
    # samples of one epoch batch together (same keys)
    b = Batch.from_data_list([ds[0], ds[1]])
    assert b.num_graphs == 2 and b.pos.shape[0] == ds[0].pos.shape[0] + ds[1].pos.shape[0]
    plain = [d]
    assert augmented(plain, "none") is plain
    with pytest.raises(ConfigError, match="augment must be one of auto, none, subsample"):
        augmented([d], "jitter")
    with pytest.raises(ConfigError, match=r"augment_fraction must be in \(0, 1\]"):
        subsample(d, np.random.default_rng(0), 1.5)


def test_subsample_on_a_torus_gathers_weights_across_the_seam():
    rng = np.random.default_rng(1)
    from graphop import Mesh

    pts = rng.random((500, 2))
    m = Mesh.from_points(pts, measure=1.0)
    d = _sample(m)
    d.periodic = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    s = subsample(d, np.random.default_rng(0), 0.5)
    assert s.pos.shape[0] == 250 and torch.equal(s.periodic, d.periodic)
    assert float(s.weight.sum()) == pytest.approx(1.0, rel=1e-12)
    # every point's weight goes to its nearest kept point in the minimum-image distance
    # (checked by brute force: a point at x = 0.99 belongs to a kept point at x = 0.01)
    p, q = d.pos.numpy(), s.pos.numpy()
    diff = p[:, None] - q[None]
    diff -= np.round(diff)
    owner = np.linalg.norm(diff, axis=-1).argmin(1)
    expect = np.bincount(owner, weights=d.weight.numpy(), minlength=len(q))
    assert np.allclose(s.weight.numpy(), expect, rtol=1e-12, atol=0)
    plain = np.linalg.norm(p[:, None] - q[None], axis=-1).argmin(1)
    assert (plain != owner).sum() > 5   # the seam matters for this cloud


def _fit_and_watch(tmp_path, **augment):
    """Train a tiny LocalGNO for 2 epochs on four 12 x 12 grids with ``augment`` keys; returns
    (trainer, config, train set, val set, [(training?, points of each forward batch)])."""
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    train = [_sample(structured_square(12), torch.float32) for _ in range(4)]
    for i, t in enumerate(train):
        t.y = t.y * (1 + 0.1 * i)
    val = [_sample(structured_square(12), torch.float32)]
    cfg = TrainConfig(data="unused", inputs=["a"], targets=["u"], epochs=2, batch_size=2,
                      out=str(tmp_path / "run"), progress=False, device="cpu", **augment,
                      model={"name": "local_gno", "width": 6, "n_layers": 1,
                             "latent_shape": [8, 8], "modes": [3, 3]})
    tr = Trainer(cfg, datasets=(train, val))
    seen = []
    orig = tr.module.forward

    def spy(data):
        seen.append((tr.module.training, int(data.pos.shape[0])))
        return orig(data)

    tr.module.forward = spy
    summary = tr.fit()
    assert summary["epochs_completed"] == 2 and np.isfinite(summary["best_val_rel_l2"])
    return tr, cfg, train, val, seen


def test_training_with_augmentation_sees_new_meshes_and_validates_on_full_ones(tmp_path):
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    tr, cfg, train, val, seen = _fit_and_watch(tmp_path, augment="subsample", augment_fraction=0.5)
    assert isinstance(tr.train_set, AugmentedDataset)
    n_b = int(train[0].boundary.sum())
    sub = n_b + round(0.5 * (144 - n_b))
    assert {n for training, n in seen if training} == {2 * sub}      # two subsampled meshes
    assert {n for training, n in seen if not training} == {144}      # validation: full mesh
    # the supports were chosen on the subsampled (coarser) meshes the model trains on
    full = Trainer(TrainConfig(**{**cfg.to_dict(), "augment": "none", "out": str(tmp_path / "b")}),
                   datasets=(train, val))
    assert tr.model_config["disco_radius"] > full.model_config["disco_radius"]
    with pytest.raises(ConfigError, match="augment must be auto, none, subsample or refine"):
        TrainConfig(**{**cfg.to_dict(), "augment": "jitter"}).validate()


# ------------------------------------------------------------------------------- refinement
def _cells(d):
    out = {}
    for k in d.keys():
        if k == "face":
            out["triangle"] = d.face.t().numpy()
        elif k.startswith("cells_"):
            out[k[len("cells_"):]] = d[k].numpy()
    return out


def _p1_moments(d, f):
    """Integrals of f_h * (1, x, y) over the mesh, f_h the piecewise-linear function of the
    nodal values f on the cells' simplices: exact on triangles (degree-2 rule, quadratic
    integrands), so two meshes carry the same piecewise-linear function only if these agree to
    rounding; on tetrahedra (centroid rule, degree 1) the integral of f_h alone."""
    from graphop.geometry.cells import interpolating_quadrature

    x, w, B = interpolating_quadrature(d.pos.double().numpy(), _cells(d))
    fh = B @ f
    k = x.shape[1] if d.pos.shape[1] == 2 else 0
    return np.array([(w * fh).sum()] + [(w * fh * x[:, j]).sum() for j in range(k)])


@pytest.mark.parametrize("kind", ["quad", "tri", "lshape", "graded_quad", "tetra"])
def test_refine_carries_the_same_piecewise_linear_function(kind):
    from graphop.geometry.cells import cell_measures, simplices

    if kind == "tetra":
        from graphop import Mesh
        from scipy.spatial import Delaunay

        rng = np.random.default_rng(0)
        pts = np.concatenate([rng.random((60, 3)), np.array(np.meshgrid(*[[0, 1]] * 3)).reshape(3, -1).T])
        m = Mesh(pts, {"tetra": Delaunay(pts).simplices})
    elif kind == "lshape":
        m = mesh_domain("lshape", 400, seed=3)
    elif kind == "graded_quad":
        m = mesh_domain("square", 81, structured="quad")
        m = type(m)(m.points ** 3, m.cells)              # ~100x spacing variation
    else:
        m = mesh_domain("square", 81, structured="quad" if kind == "quad" else "tri")
    d = _sample(m)
    r = refine(d, target_weight=0.0)
    n, cells = d.pos.shape[0], _cells(d)
    top = simplices(cells).shape[1] - 1
    # the original points come first, unchanged, with their values
    assert torch.equal(r.pos[:n], d.pos) and torch.equal(r.x[:n], d.x)
    # 4 children per 2D cell, 8 per tetrahedron; the measure is kept and every child is positive
    parents = sum(len(c) for t, c in cells.items() if t in ("triangle", "quad", "tetra"))
    kids = sum(len(c) for t, c in _cells(r).items() if t in ("triangle", "quad", "tetra"))
    assert kids == (8 if top == 3 else 4) * parents
    for t, c in _cells(r).items():
        if t in ("triangle", "quad", "tetra"):
            assert (cell_measures(r.pos.double().numpy(), t, c) > 0).all()
    assert float(r.weight.sum()) == pytest.approx(float(d.weight.sum()), rel=1e-12)
    # the same piecewise-linear function for a strongly curved field (x y and sin): a centre
    # value taken as the 4-corner average (bilinear) instead of the diagonal's midpoint fails
    p = d.pos.double().numpy()
    for f in (p[:, 0] * p[:, 1], np.sin(5 * p[:, 0]) * np.cos(4 * p[:, 1])):
        ff = torch.tensor(f)
        d2 = d.clone()
        d2.x = ff[:, None]
        fr = refine(d2).x[:, 0].numpy()
        assert np.allclose(_p1_moments(r, fr), _p1_moments(d, f), rtol=0, atol=1e-13)
    # the loss counts the original points only, with their weights
    assert torch.equal(r.loss_weight[:n], d.weight) and (r.loss_weight[n:] == 0).all()


def test_refine_marks_boundary_midpoints_only():
    d = _sample(structured_square(9))
    r = refine(d, target_weight=0.0)
    p = r.pos.numpy()
    on_edge = np.isclose(p, 0).any(1) | np.isclose(p, 1).any(1)
    assert np.array_equal(r.boundary.numpy(), on_edge)
    assert int(r.boundary.sum()) == 2 * int(d.boundary.sum())
    m = mesh_domain("disk", 300, seed=1)
    d = _sample(m)
    r = refine(d, target_weight=0.0)
    n = d.pos.shape[0]
    rad = np.linalg.norm(r.pos.numpy(), axis=1)
    # a midpoint of a boundary chord lies just inside the circle; an interior one well inside
    new_b = r.boundary.numpy()[n:]
    assert new_b.sum() == d.boundary.sum()
    assert rad[n:][new_b].min() > 0.99 and rad[n:][~new_b].max() < 0.995


def test_refined_loss_ignores_the_new_points():
    from graphop.training.metrics import relative_l2_loss

    d = _sample(mesh_domain("lshape", 300, seed=2))
    r = refine(d, target_weight=0.0)
    n = d.pos.shape[0]
    pred = r.y.clone()
    pred[n:] += 5.0                                   # garbage at the new points only
    assert float(relative_l2_loss(pred, r)) == 0.0
    pred[:n] *= 1.1
    assert float(relative_l2_loss(pred, r)) == pytest.approx(0.1, rel=1e-9)
    b = Batch.from_data_list([r, r])
    assert float(relative_l2_loss(torch.cat([pred, pred]), b)) == pytest.approx(0.1, rel=1e-9)


def test_refined_loss_with_target_weight_counts_the_interpolated_targets():
    """augment_target_weight t: loss weights (1 - t) w_orig + t w_refined. With t = 1 the loss
    is the refined mesh's quadrature of the error against the P1 target: an error only at the
    new points counts in proportion to their share of the refined weights."""
    from graphop.training.metrics import relative_l2_loss

    d = _sample(mesh_domain("square", 200, seed=4))
    n = d.pos.shape[0]
    full, half = refine(d), refine(d, target_weight=0.5)             # the default: t = 1
    assert torch.equal(full.loss_weight, full.weight)
    assert torch.allclose(half.loss_weight, 0.5 * refine(d, target_weight=0.0).loss_weight + 0.5 * full.weight)
    assert float(full.loss_weight.sum()) == pytest.approx(float(d.weight.sum()), rel=1e-12)
    pred = full.y.clone()
    pred[n:] *= 1.2                                   # 20% off at the new points only
    w, y = full.weight, full.y[:, 0]
    share = float((w[n:] * y[n:] ** 2).sum() / (w * y ** 2).sum())
    assert 0.3 < share < 0.9
    assert float(relative_l2_loss(pred, full)) == pytest.approx(0.2 * share ** 0.5, rel=1e-9)
    assert float(relative_l2_loss(pred, refine(d, target_weight=0.0))) == 0.0
    ds = AugmentedDataset([d], mode="refine", probability=1.0, target_weight=1.0)
    assert torch.equal(ds[0].loss_weight, ds[0].weight)
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="augment_target_weight"):
            refine(d, target_weight=bad)
        with pytest.raises(ConfigError, match="augment_target_weight"):
            AugmentedDataset([d], mode="refine", target_weight=bad)


def test_refine_dataset_draws_per_epoch_and_leaves_clouds_alone():
    from graphop import Mesh

    grid = _sample(structured_square(9))
    cloud = _sample(Mesh.from_points(np.random.default_rng(0).random((100, 2)), measure=1.0))
    assert refinable(grid) and not refinable(cloud)
    torus = grid.clone()
    torus.periodic = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert not refinable(torus)
    with pytest.raises(Exception, match="refine needs"):
        refine(cloud)
    ds = AugmentedDataset([grid] * 40 + [cloud], seed=1, mode="refine", probability=0.5)
    sizes = [ds[i].pos.shape[0] for i in range(40)]
    assert set(sizes) == {81, 289} and 8 <= sizes.count(289) <= 32
    assert [ds[i].pos.shape[0] for i in range(40)] == sizes          # reproducible
    ds.set_epoch(1)
    assert [ds[i].pos.shape[0] for i in range(40)] != sizes          # a new draw each epoch
    assert ds[40].pos.shape[0] == 100 and torch.equal(ds[40].loss_weight, cloud.weight)
    # refined and plain samples batch together
    b = Batch.from_data_list([ds[i] for i in range(6)])
    assert b.loss_weight.shape == b.weight.shape
    never = AugmentedDataset([grid], mode="refine", probability=0.0)
    assert never[0].pos.shape[0] == 81
    with pytest.raises(ConfigError, match="augment_probability"):
        AugmentedDataset([grid], mode="refine", probability=1.5)


def test_training_with_refinement_keeps_the_supports_of_the_data(tmp_path):
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    tr, cfg, train, val, seen = _fit_and_watch(tmp_path, augment="refine",
                                               augment_probability=1.0)
    assert {n for training, n in seen if training} == {2 * 23 * 23}   # refined 12 x 12 grids
    assert {n for training, n in seen if not training} == {144}
    full = Trainer(TrainConfig(**{**cfg.to_dict(), "augment": "none", "out": str(tmp_path / "b")}),
                   datasets=(train, val))
    assert tr.model_config["disco_radius"] == full.model_config["disco_radius"]
    with pytest.raises(ConfigError, match="augment_probability"):
        TrainConfig(**{**cfg.to_dict(), "augment_probability": -0.1}).validate()
    with pytest.raises(ConfigError, match="augment_target_weight"):
        TrainConfig(**{**cfg.to_dict(), "augment_target_weight": 2.0}).validate()


# ------------------------------------------------------------------------------ augment: auto
def test_auto_refines_one_shared_mesh_for_mesh_operators_only():
    from graphop import Mesh
    from graphop.data.augment import count_meshes, resolve_augment

    grid = _sample(structured_square(9))
    same = [grid] * 5
    bare = grid.clone()
    del bare.mesh_hash                                 # no mesh_hash: told by content
    moved = bare.clone()
    moved.pos = moved.pos * 1.01
    several = [bare, moved]
    assert count_meshes([bare, bare.clone()]) == 1
    cloud = _sample(Mesh.from_points(np.random.default_rng(0).random((60, 2)), measure=1.0))
    assert count_meshes(same) == 1 and count_meshes(several) == 2
    assert resolve_augment("auto", same)[0] == "refine"
    assert resolve_augment("auto", same, "local_gno")[0] == "refine"
    assert resolve_augment("auto", several)[0] == "none"
    assert resolve_augment("auto", [cloud] * 3)[0] == "none"
    assert resolve_augment("auto", same, "fno")[0] == "none"      # a grid model
    assert resolve_augment("auto", same, "gnn")[0] == "none"      # not convergent
    assert resolve_augment("subsample", same) == ("subsample", "given")
    assert isinstance(augmented(same, "auto"), AugmentedDataset)
    assert augmented(several, "auto") is several
    # a triangulated sphere is a surface: its chord midpoints would leave the sphere
    from graphop.geometry.sphere import icosphere
    s = icosphere(1)
    ds = s.to_data()
    assert not refinable(ds) and resolve_augment("auto", [ds, ds])[0] == "none"


def test_trainer_resolves_auto_prints_it_and_saves_the_choice(tmp_path, capsys):
    import yaml

    tr, cfg, train, val, seen = _fit_and_watch(tmp_path)          # the default: auto
    assert cfg.augment == "auto" and tr.cfg.augment == "refine"
    assert {n for training, n in seen if training} <= {2 * 144, 144 + 23 * 23, 2 * 23 * 23}
    assert "augment auto -> refine (all 4 training samples share one mesh" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["augment"] == "refine"
