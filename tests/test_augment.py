"""Mesh augmentation by subsampling (graphop.data.augment) and its use in training."""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from graphop.data.augment import AugmentedDataset, augmented, subsample
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
    with pytest.raises(ConfigError, match="augment must be one of none, subsample"):
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


def test_training_with_augmentation_sees_new_meshes_and_validates_on_full_ones(tmp_path):
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    train = [_sample(structured_square(12), torch.float32) for _ in range(4)]
    for i, t in enumerate(train):
        t.y = t.y * (1 + 0.1 * i)
    val = [_sample(structured_square(12), torch.float32)]
    cfg = TrainConfig(data="unused", inputs=["a"], targets=["u"], epochs=2, batch_size=2,
                      out=str(tmp_path / "run"), progress=False, device="cpu",
                      augment="subsample", augment_fraction=0.5,
                      model={"name": "local_gno", "width": 6, "n_layers": 1,
                             "latent_shape": [8, 8], "modes": [3, 3]})
    tr = Trainer(cfg, datasets=(train, val))
    assert isinstance(tr.train_set, AugmentedDataset)
    seen = []
    orig = tr.module.forward

    def spy(data):
        seen.append((tr.module.training, int(data.pos.shape[0])))
        return orig(data)

    tr.module.forward = spy
    summary = tr.fit()
    assert summary["epochs_completed"] == 2 and np.isfinite(summary["best_val_rel_l2"])
    n_b = int(train[0].boundary.sum())
    sub = n_b + round(0.5 * (144 - n_b))
    assert {n for training, n in seen if training} == {2 * sub}      # two subsampled meshes
    assert {n for training, n in seen if not training} == {144}      # validation: full mesh
    # the supports were chosen on the subsampled (coarser) meshes the model trains on
    full = Trainer(TrainConfig(**{**cfg.to_dict(), "augment": "none", "out": str(tmp_path / "b")}),
                   datasets=(train, val))
    assert tr.model_config["disco_radius"] > full.model_config["disco_radius"]
    with pytest.raises(ConfigError, match="augment must be none or subsample"):
        TrainConfig(**{**cfg.to_dict(), "augment": "jitter"}).validate()
