"""Checkpoints: atomic writes, weights_only loading, RNG round trip, clear errors."""
import pickle
import random

import numpy as np
import pytest
import torch

from graphop.training.checkpoint import (load_checkpoint, load_model_state, resolve_checkpoint, rng_state,
                                save_checkpoint, set_rng_state)
from graphop.errors import GraphopError
from graphop.data.normalize import Normalizer
from trainkit import PointwiseMLP, make_samples

torch.set_num_threads(1)


def _state(model):
    norm = Normalizer.fit(make_samples(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    model(make_samples(1)[0]).sum().backward()
    opt.step()
    sched.step()
    return {"model_config": model.config, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "normalizer": norm.state_dict(),
            "train_config": {"inputs": ["a"], "targets": ["u"]}, "epoch": 3, "step_in_epoch": 0,
            "history": [{"epoch": 1, "train_loss": 0.5}], "best_metric": 0.25, "best_epoch": 2,
            "rng": rng_state()}


def test_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = PointwiseMLP()
    path = save_checkpoint(tmp_path / "run" / "last.pt", _state(model))
    assert path.exists() and not list(path.parent.glob(".*tmp*"))  # temp file renamed away
    # the file loads with the strictest loader torch has
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "graphop-checkpoint" and raw["epoch"] == 3
    ck = load_checkpoint(tmp_path / "run")  # a run directory resolves to its checkpoint
    other = PointwiseMLP()
    load_model_state(other, ck, expected_config=model.config)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    norm = Normalizer.from_state_dict(ck["normalizer"])
    assert norm.coords is not None and norm.targets.channels == 1
    opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    opt.load_state_dict(ck["optimizer"])
    assert opt.state_dict()["state"][0]["step"] == 1


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    st = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    model = PointwiseMLP()
    path = save_checkpoint(tmp_path / "last.pt", _state(model))
    before = path.read_bytes()
    bad = _state(model)
    bad["history"] = [object()]  # cannot go into a weights_only checkpoint
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_corrupted_truncated_empty_and_foreign_files(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", _state(PointwiseMLP()))
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphopError, match=r"trunc\.pt: corrupted or truncated checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(GraphopError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(GraphopError, match="garbage.pt: corrupted"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save(PointwiseMLP().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(GraphopError, match="not a graphop checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "graphop-checkpoint", "x": Evil()}, f, protocol=2)
    with pytest.raises(GraphopError, match="evil.pt: refusing to load.*GLOBAL print was not an allowed global"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(GraphopError, match="no checkpoint in this directory"):
        resolve_checkpoint(tmp_path / "empty_run")


def test_checkpoint_from_another_model(tmp_path):
    save_checkpoint(tmp_path / "a.pt", _state(PointwiseMLP(width=16)))
    ck = load_checkpoint(tmp_path / "a.pt")
    with pytest.raises(GraphopError, match="from another model.*width: 16 in the checkpoint vs 8"):
        load_model_state(PointwiseMLP(width=8), ck, expected_config=PointwiseMLP(width=8).config)
    with pytest.raises(GraphopError, match="from another model.*size mismatch"):
        load_model_state(PointwiseMLP(width=8), ck)


class Foreign:
    """A class a checkpoint must never hold."""


def test_errors_quote_torch_whole_but_never_its_weights_only_advice(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", _state(PointwiseMLP()))
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:1000])
    try:
        torch.load(tmp_path / "trunc.pt", weights_only=True)
    except Exception as exc:  # torch's own text, whatever this torch version says
        whole = " ".join(str(exc).split())
    with pytest.raises(GraphopError) as info:
        load_checkpoint(tmp_path / "trunc.pt")
    assert whole in str(info.value) and len(whole) > 20

    torch.save({"format": "graphop-checkpoint", "x": Foreign()}, tmp_path / "foreign.pt")
    with pytest.raises(GraphopError) as info:
        load_checkpoint(tmp_path / "foreign.pt")
    msg = str(info.value)
    assert "refusing to load" in msg and "Foreign" in msg
    for advice in ("weights_only", "add_safe_globals", "safe_globals", "\x1b["):
        assert advice not in msg, advice


def test_a_version_1_checkpoint_keeps_its_disco_normalisation(tmp_path):
    """Checkpoints of format version 1 were trained with DISCO normalised by r^d ||psi_l||_1;
    loading one rebuilds that operator ("l1"), not the newer default ("quadrature"), so the
    trained model gives the function it was trained to give."""
    from graphop.models import build_model
    from graphop.models.local_gno import LocalGNO

    torch.manual_seed(0)
    tiny = dict(width=4, n_layers=1, latent_shape=(8, 8), modes=(3, 3), disco_radius=0.3,
                encoder_radius=0.3)
    old = LocalGNO(1, 1, disco_kwargs={"normalize": "l1"}, **tiny)
    assert LocalGNO(1, 1, **tiny).config["disco_kwargs"]["normalize"] == "quadrature"
    state = _state(PointwiseMLP())
    config = dict(old.config, disco_kwargs={})          # what a version-1 run recorded
    state.update(model_config=config, model=old.state_dict())
    path = save_checkpoint(tmp_path / "v1.pt", state)
    raw = torch.load(path, weights_only=True)
    raw["version"] = 1
    torch.save(raw, path)
    ck = load_checkpoint(path)
    assert ck["model_config"]["disco_kwargs"] == {"normalize": "l1"}
    model = build_model(ck["model_config"])
    load_model_state(model, ck)
    assert model.blocks[0].disco.normalize == "l1"
    # a version-2 checkpoint is read as written
    state.update(model_config=LocalGNO(1, 1, **tiny).config)
    ck2 = load_checkpoint(save_checkpoint(tmp_path / "v2.pt", state))
    assert ck2["model_config"]["disco_kwargs"] == {"normalize": "quadrature", "quadrature": "cells"}


def test_a_version_2_checkpoint_keeps_its_plain_encoder_average(tmp_path):
    """Before version 3 the grid encoder was the plain local average (``encoder_floor=0``);
    loading such a checkpoint rebuilds that encoder, so the model gives the function it was
    trained to give, while a new model gets the floored average."""
    from graphop.models import build_model

    torch.manual_seed(0)
    cfg = dict(name="gino", in_channels=1, out_channels=1, width=4, n_layers=1,
               latent_shape=(8, 8), modes=(3, 3), encoder_radius=0.3)
    assert build_model(cfg).encoder.floor == 0.5
    old = build_model(dict(cfg, encoder_floor=0.0))
    state = _state(PointwiseMLP())
    state.update(model_config=dict(cfg), model=old.state_dict())   # what version 2 recorded
    path = save_checkpoint(tmp_path / "v2.pt", state)
    raw = torch.load(path, weights_only=True)
    raw["version"] = 2
    torch.save(raw, path)
    ck = load_checkpoint(path)
    assert ck["model_config"]["encoder_floor"] == 0.0
    model = build_model(ck["model_config"])
    load_model_state(model, ck)
    assert model.encoder.floor == 0.0
    # a version-3 checkpoint is read as written
    ck3 = load_checkpoint(save_checkpoint(tmp_path / "v3.pt", state))
    assert "encoder_floor" not in ck3["model_config"]


def test_a_version_3_checkpoint_keeps_nodal_sums_on_a_torus(tmp_path):
    """Up to version 3, ``quadrature="cells"`` summed over the nodes on a torus; version 4
    triangulates torus clouds. An older checkpoint is rebuilt with ``"cells-except-torus"``,
    so on a torus cloud it gives what it was trained to give (the nodal sums), not the new
    default's function."""
    from torch_geometric.data import Data

    from graphop.models import build_model
    from graphop.models.local_gno import LocalGNO

    torch.manual_seed(0)
    tiny = dict(width=4, n_layers=1, latent_shape=(8, 8), modes=(3, 3), disco_radius=0.2,
                encoder_radius=0.2, periodic=True)
    new = LocalGNO(1, 1, **tiny)
    legacy = LocalGNO(1, 1, quadrature="cells-except-torus", **tiny)
    legacy.load_state_dict(new.state_dict())
    state = _state(PointwiseMLP())
    state.update(model_config=new.config, model=new.state_dict())
    path = save_checkpoint(tmp_path / "v3.pt", state)
    raw = torch.load(path, weights_only=True)
    raw["version"] = 3
    torch.save(raw, path)
    ck = load_checkpoint(path)
    assert ck["model_config"]["quadrature"] == "cells-except-torus"
    assert ck["model_config"]["disco_kwargs"]["quadrature"] == "cells-except-torus"
    model = build_model(ck["model_config"])
    load_model_state(model, ck)
    pts = torch.rand(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    data = Data(pos=pts.float(), weight=torch.full((500,), 1 / 500),
                x=torch.sin(6.28 * pts[:, :1]).float(), periodic=torch.tensor([[1.0, 1.0]]))
    with torch.no_grad():
        torch.testing.assert_close(model(data), legacy(data))
        assert float((model(data) - new(data)).abs().max()) > 1e-4
    # a version-4 checkpoint is read as written
    ck4 = load_checkpoint(save_checkpoint(tmp_path / "v4.pt", state))
    assert ck4["model_config"]["quadrature"] == "cells"
