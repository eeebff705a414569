"""The same code on a GPU (issue #15, item 5): operators as torch CSR on the device, a LocalGNO
training step that matches the CPU's, and operators built once per geometry, not per device.

Marked ``cuda`` and skipped without a CUDA device; ``experiments/device_check.sh`` runs them
(``pytest -m cuda``) with the benchmarks on a GPU machine.
"""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from graphop.geometry.domains import mesh_domain
from graphop.layers.sparse import operator_cache
from graphop.models.local_gno import LocalGNO

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _samples():
    """Two irregular meshes (cells) and a torus cloud, with smooth inputs and targets."""
    out = []
    for seed in (0, 1):
        m = mesh_domain("square", 400, seed=seed, perturb=0.3)
        d = m.to_data()
        d.x = torch.sin(3 * d.pos[:, :1]) * torch.cos(2 * d.pos[:, 1:2])
        d.y = torch.cos(d.x)
        out.append(d)
    g = torch.Generator().manual_seed(2)
    p = torch.rand(500, 2, generator=g)
    torus = Data(pos=p, weight=torch.full((500,), 1 / 500), x=torch.sin(6.2832 * p[:, :1]),
                 y=torch.cos(6.2832 * p[:, 1:2]), periodic=torch.tensor([[1.0, 1.0]]))
    return out, torus


def _model(periodic=False):
    torch.manual_seed(0)
    return LocalGNO(1, 1, width=16, n_layers=2, latent_shape=(16, 16), modes=(6, 6),
                    disco_radius=0.15, encoder_radius=0.15, periodic=periodic)


def _step(model, batch):
    """(output, loss, parameter gradients) of one forward and backward pass."""
    model.zero_grad()
    out = model(batch)
    loss = torch.nn.functional.mse_loss(out, batch.y)
    loss.backward()
    return out.detach().cpu(), float(loss), [p.grad.detach().cpu().clone()
                                             for p in model.parameters()]


@pytest.mark.parametrize("which", ["meshes", "torus"])
def test_a_training_step_on_the_gpu_matches_the_cpu(which):
    meshes, torus = _samples()
    batch = Batch.from_data_list(meshes) if which == "meshes" else Batch.from_data_list([torus])
    model = _model(periodic=which == "torus")
    out_c, loss_c, grads_c = _step(model, batch)
    model.cuda()
    out_g, loss_g, grads_g = _step(model, batch.cuda())
    torch.testing.assert_close(out_g, out_c, rtol=1e-3, atol=1e-4)
    assert loss_g == pytest.approx(loss_c, rel=1e-3)
    for gc, gg in zip(grads_c, grads_g):
        torch.testing.assert_close(gg, gc, rtol=1e-2, atol=1e-4)


def test_operators_are_built_once_and_applied_on_the_device():
    """The GPU step reuses the operators the CPU step built (one build per geometry, copied to
    the device once): a second device step misses nothing."""
    meshes, _ = _samples()
    batch = Batch.from_data_list(meshes)
    model = _model()
    operator_cache.clear()
    _step(model, batch)
    built = operator_cache.misses
    model.cuda()
    gpu = batch.cuda()
    _step(model, gpu)
    _step(model, gpu)
    assert operator_cache.misses == built
    copies = [k for op in operator_cache._items.values()
              for k in getattr(op, "_copies", {}) if isinstance(k, tuple)]
    assert any(isinstance(k[0], torch.device) and k[0].type == "cuda" for k in copies)


def test_float64_on_the_gpu_matches_float64_on_the_cpu_closely():
    meshes, _ = _samples()
    batch = Batch.from_data_list(meshes)
    for k in ("pos", "weight", "x", "y"):
        batch[k] = batch[k].double()
    model = _model().double()
    out_c, _, _ = _step(model, batch)
    out_g, _, _ = _step(model.cuda(), batch.cuda())
    np.testing.assert_allclose(out_g.numpy(), out_c.numpy(), rtol=1e-9, atol=1e-10)


def test_a_warm_step_never_synchronises_with_the_host():
    """A batch moved by ``to_device`` (its geometry kept on the host) whose operators are cached:
    a forward and backward pass makes no synchronising CUDA call (no read back of positions,
    graph offsets or torus box, no copy of the encoder's occupancy or of the box per step)."""
    import warnings

    from graphop.layers.sparse import to_device

    meshes, torus = _samples()
    for data, periodic in ((meshes, False), ([torus], True)):
        model = _model(periodic=periodic).cuda()
        for _ in range(2):                      # builds, copies to the device; then warm
            batch = to_device(Batch.from_data_list(data), "cuda")
            model(batch).square().mean().backward()
        torch.cuda.synchronize()
        batch = to_device(Batch.from_data_list(data), "cuda")
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model(batch).square().mean().backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        assert not syncs, syncs[:3]


def test_training_on_the_gpu_follows_the_cpu_run(tmp_path):
    """``Trainer`` with ``device: cuda`` (pinned batches, geometry kept on the host, each step's
    loss read one step late) gives the CPU run's loss curve for a LocalGNO on irregular meshes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from trainkit import make_samples

    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    curves = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        cfg = TrainConfig(data="mem", inputs=["a"], targets=["u"], epochs=3, batch_size=2,
                          lr=1e-3, out=str(tmp_path / device), progress=False, seed=3,
                          device=device, operator_store=False,
                          model={"name": "local_gno", "width": 8, "n_layers": 2,
                                 "latent_shape": [8, 8], "modes": [3, 3]})
        t = Trainer(cfg, datasets=(make_samples(6, n=80), make_samples(2, n=80, seed=40)))
        t.fit()
        curves.append([h["train_loss"] for h in t.history])
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-3)
