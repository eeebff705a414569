"""Training mechanics: config, metric, normalisation, learning, exact resume (also from the
middle of an epoch after a real signal), NaN handling, bad data."""
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from graphop.training.config import TrainConfig, load_config
from graphop.errors import ConfigError, DataError
from graphop.training.metrics import relative_l2
from graphop.data.normalize import Normalizer
from graphop.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted
from trainkit import PointwiseMLP, make_mesh, make_samples

torch.set_num_threads(1)


# ---------------------------------------------------------------- config
def test_config_precedence_yaml_flags_set(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: d1\ninputs: [a]\ntargets: [u]\nepochs: 7\nlr: 1.0e-2\n"
                 "model: {name: local_gno, width: 16}\n")
    cfg = load_config(p, {"epochs": 9, "data": None}, ["lr=3e-4", "model.width=32", "inputs=a,b",
                                                        "normalize_coords=false"])
    assert (cfg.data, cfg.epochs, cfg.lr) == ("d1", 9, 3e-4)
    assert cfg.model == {"name": "local_gno", "width": 32}
    assert cfg.inputs == ["a", "b"] and cfg.normalize_coords is False
    cfg2 = load_config(None, {"model": "gnn", "inputs": ""}, [])
    assert cfg2.model == {"name": "gnn"} and cfg2.inputs == []


def test_config_errors_list_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'; valid keys: data, inputs, "
                                          r"targets, model, epochs, batch_size, lr,"):
        load_config(None, None, ["lrr=1"])
    p = tmp_path / "c.yaml"
    p.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'epochz'; valid keys:.*seed"):
        load_config(p)
    with pytest.raises(ConfigError, match="epochs: expected an integer, got 'many'"):
        load_config(None, None, ["epochs=many"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, None, ["epochs"])
    with pytest.raises(ConfigError, match="no training data"):
        TrainConfig(targets=["u"]).validate()
    with pytest.raises(ConfigError, match="'val_fraction' must be in"):
        TrainConfig(data="d", targets=["u"], val_fraction=1.5).validate()


# ---------------------------------------------------------------- metric
def test_relative_l2_closed_form_and_resolution_independence():
    # y = x on the unit square, pred = y + 1: rel = sqrt(int 1 / int x^2) = sqrt(3)
    errs = []
    for n in (200, 3000):
        d = make_mesh(n, 3, with_fields=False).to_data()
        y = d.pos[:, :1].double()
        r = relative_l2(y + 1.0, y, d.weight.double())
        errs.append(abs(float(r) - math.sqrt(3.0)))
    assert errs[1] < 0.01 and errs[1] < errs[0]
    # a batch of different meshes: one vectorised call equals the per-sample values
    samples = make_samples(3)
    b = Batch.from_data_list(samples)
    pred = b.y * 1.1 + 0.05 * b.pos[:, :1]
    per = relative_l2(pred, b.y, b.weight, b.batch, b.num_graphs)
    single = [relative_l2(s.y * 1.1 + 0.05 * s.pos[:, :1], s.y, s.weight) for s in samples]
    assert torch.allclose(per, torch.cat(single), rtol=1e-5)
    assert torch.allclose(relative_l2(b.y * 1.25, b.y, b.weight, b.batch), torch.full((3,), 0.25))


# ---------------------------------------------------------------- normalisation
def test_normalizer_function_space_moments_and_one_coordinate_map():
    samples = []
    for i, n in enumerate((300, 3000)):  # very different resolutions, same function
        d = make_mesh(n, i, size=(1.0 + i, 1.0), with_fields=False).to_data()
        d.x = d.pos[:, :1] / (1.0 + i)  # f = x / L on [0, L] x [0, 1]: mean 1/2, var 1/12
        d.y = torch.ones(len(d.pos), 1) * (3.0 + i)
        samples.append(d)
    norm = Normalizer.fit(samples)
    assert abs(float(norm.inputs.mean) - 0.5) < 1e-2
    assert abs(float(norm.inputs.std) - math.sqrt(1 / 12)) < 1e-2
    assert abs(float(norm.targets.mean) - 3.5) < 1e-9 and abs(float(norm.targets.std) - 0.5) < 1e-9
    # one map for the whole set: union box [0, 2] x [0, 1] -> scale 2, never per sample
    assert norm.coords.scale == pytest.approx(2.0) and norm.coords.shift == pytest.approx((0.0, 0.0))
    e0 = norm.encode(samples[0])
    assert torch.allclose(e0.pos, samples[0].pos / 2)
    assert float(e0.weight.sum()) == pytest.approx(1.0 / 4, rel=1e-6)  # area 1 -> 1/4
    assert e0.mesh_hash.startswith(samples[0].mesh_hash + ":")
    assert torch.equal(e0.y, samples[0].y) and float(samples[0].pos.max()) == pytest.approx(1.0)
    back = Normalizer.from_state_dict(norm.state_dict())
    assert torch.allclose(back.decode(torch.zeros(2, 1)), torch.full((2, 1), 3.5, dtype=torch.float32))


def test_nan_in_input_field_is_a_data_error(tmp_path):
    tr, va = make_samples(4), make_samples(2, seed=50)
    tr[2].x[5, 0] = float("nan")
    cfg = TrainConfig(data="mem", inputs=["a"], targets=["u"], epochs=1, batch_size=2,
                      out=str(tmp_path / "r"), progress=False)
    with pytest.raises(DataError, match=r"sample 2: input field 'x' has NaN or inf at 1 point\(s\) "
                                        r"\(first: point 5\)"):
        Trainer(cfg, model=PointwiseMLP(), datasets=(tr, va))
    assert not (tmp_path / "r" / "last.pt").exists()


# ---------------------------------------------------------------- training
def _cfg(tmp_path, name, **kw):
    base = dict(data="mem", inputs=["a"], targets=["u"], epochs=4, batch_size=2, lr=5e-3,
                out=str(tmp_path / name), progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return make_samples(6), make_samples(2, seed=40)


def test_training_learns_and_writes_run_files(tmp_path):
    cfg = _cfg(tmp_path, "learn", epochs=25, lr=1e-2, batch_size=3)
    s = Trainer(cfg, model=PointwiseMLP(width=32), datasets=_data()).fit()
    hist = [float(x) for x in (tmp_path / "learn" / "metrics.csv").read_text().split("\n")[1].split(",")[:3]]
    assert s["final_train_loss"] < 0.25 * hist[1]  # train loss fell by more than 4x
    assert s["best_val_rel_l2"] < 0.25
    run = tmp_path / "learn"
    for f in ("best.pt", "last.pt", "metrics.csv", "loss_curves.png", "config.yaml", "summary.json"):
        assert (run / f).is_file(), f
    assert any((run / "tb").glob("events.out.tfevents.*"))
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 26
    # the summary records the training time: the epochs' times in metrics.csv, summed
    import csv
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert s["train_seconds"] == pytest.approx(sum(float(r["time_s"]) for r in rows), rel=1e-3)
    assert s["train_seconds"] > 0 and s["samples_per_s"] > 0
    assert json.loads((run / "summary.json").read_text())["train_seconds"] == s["train_seconds"]
    with pytest.raises(ConfigError, match="already holds a training run"):
        Trainer(cfg, model=PointwiseMLP(width=32), datasets=_data())


def _model(**kw):
    torch.manual_seed(0)
    return PointwiseMLP(**kw)


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_resume_matches_uninterrupted_run(tmp_path):
    full = Trainer(_cfg(tmp_path, "full"), model=_model(dropout=0.1), datasets=_data())
    full.fit()
    part = Trainer(_cfg(tmp_path, "part"), model=_model(dropout=0.1), datasets=_data())
    part.fit(stop_at=2)
    assert len(part.history) == 2
    resumed = Trainer.resume(tmp_path / "part", model=PointwiseMLP(dropout=0.1), datasets=_data())
    assert resumed.epoch == 2
    resumed.fit()
    for key in ("train_loss", "val_rel_l2", "lr"):
        a = [h[key] for h in full.history]
        b = [h[key] for h in resumed.history]
        assert np.allclose(a, b, rtol=1e-6, atol=0), key
    assert torch.allclose(_weights(full.module), _weights(resumed.module), atol=1e-6)
    assert len((tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()) == 5


def test_signal_mid_epoch_saves_resumable_checkpoint(tmp_path):
    full = Trainer(_cfg(tmp_path, "full", epochs=3), model=_model(dropout=0.1), datasets=_data())
    full.fit()
    model = _model(dropout=0.1)
    calls = {"n": 0}

    def send_sigterm(module, inputs, output):  # a real SIGTERM during batch 2 of epoch 2
        calls["n"] += module.training  # count training batches only
        if module.training and calls["n"] == 3 + 2:  # 3 batches per epoch, then the 2nd batch of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    hook = model.register_forward_hook(send_sigterm)
    t = Trainer(_cfg(tmp_path, "sig", epochs=3), model=model, datasets=_data())
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM in epoch 2 after batch 2/3; resumable "
                                                  r"checkpoint saved to .*last.pt") as info:
        t.fit()
    hook.remove()
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    resumed = Trainer.resume(tmp_path / "sig", model=PointwiseMLP(dropout=0.1), datasets=_data())
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 2)
    resumed.fit()
    assert np.allclose([h["train_loss"] for h in full.history],
                       [h["train_loss"] for h in resumed.history], rtol=1e-6)
    assert np.allclose([h["val_rel_l2"] for h in full.history],
                       [h["val_rel_l2"] for h in resumed.history], rtol=1e-6)


def test_nan_loss_stops_and_keeps_best_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path, "nan", epochs=5), model=PointwiseMLP(), datasets=_data())
    t.fit(stop_at=2)
    best, last = (tmp_path / "nan" / "best.pt").read_bytes(), (tmp_path / "nan" / "last.pt").read_bytes()
    with torch.no_grad():  # the weights blow up, as with a too large learning rate
        for p in t.module.parameters():
            p.mul_(1e30)
    with pytest.raises(TrainingDiverged, match=r"training loss became (nan|inf) at epoch 3, batch 1"
                                               r".*best checkpoint .*best.pt \(epoch \d"):
        t.fit()
    assert (tmp_path / "nan" / "best.pt").read_bytes() == best
    assert (tmp_path / "nan" / "last.pt").read_bytes() == last
    assert (tmp_path / "nan" / "loss_curves.png").is_file()


def test_sigterm_in_a_subprocess_then_resume_matches(tmp_path):
    """A real `graphop train` process gets SIGTERM, exits 143 with a resumable checkpoint; the
    resumed run's loss curve equals an uninterrupted run's."""
    import csv
    import subprocess
    import sys
    import time

    from graphop.training.checkpoint import load_checkpoint
    from graphop.cli import main as cli
    from trainkit import TINY_GNO, write_dataset

    data = write_dataset(tmp_path / "data", n_train=6, n_test=2, n=60)
    args = ["--data", str(data), "--inputs", "a", "--targets", "u", "--model", "local_gno",
            "--batch-size", "2", "--device", "cpu", "--no-progress", "--set", "scheduler=none",
            *TINY_GNO]
    run = tmp_path / "sig"
    proc = subprocess.Popen([sys.executable, "-m", "graphop", "train", *args, "--epochs", "1000",
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    t0 = time.time()
    while not (run / "metrics.csv").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < 180, "training did not finish an epoch"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted by SIGTERM" in err and "resumable checkpoint saved to" in err
    ck = load_checkpoint(run / "last.pt")
    done = ck["epoch"] + 1  # finish the epoch that was interrupted (or one more)
    print("interrupted at epoch", ck["epoch"], "step", ck["step_in_epoch"])
    assert cli(["train", "--resume", str(run), "--set", f"epochs={done}", "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert cli(["train", *args, "--epochs", str(done), "--out", str(ref)]) == 0

    def curve(d):
        with open(d / "metrics.csv") as f:
            return [(float(r["train_loss"]), float(r["val_rel_l2"])) for r in csv.DictReader(f)]

    assert len(curve(run)) == done
    assert np.allclose(curve(run), curve(ref), rtol=1e-5)


def test_a_yaml_value_of_the_wrong_type_names_its_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: d\ntargets: [u]\nmodel: {name: local_gno, width: wide}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == f"{p}: model.width: expected an integer, got 'wide'"
    with pytest.raises(ConfigError, match=r"^model\.disco_radius: expected 'auto' or a number, got 'big'$"):
        load_config(None, {"data": "d", "targets": ["u"]}, ["model.disco_radius=big"]).validate()
    for text, want in (("0.3", 0.3), ("auto", "auto"), ("AUTO", "auto")):
        cfg = load_config(None, {"data": "d", "targets": ["u"]}, [f"model.disco_radius={text}"])
        assert cfg.validate().model["disco_radius"] == want
    with pytest.raises(ConfigError, match=r"^model\.n_layers: expected an integer, got 2\.5$"):
        load_config(None, {"data": "d", "targets": ["u"]}, ["model.n_layers=2.5"]).validate()
    p.write_text("data: d\ntargets: [u]\nlr: fast\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: lr: expected a number, got 'fast'$"):
        load_config(p)
    cfg = load_config(None, {"data": "d", "targets": ["u"]}, ["model.width=16"]).validate()
    assert cfg.model["width"] == 16 and isinstance(cfg.model["width"], int)


@pytest.mark.parametrize("case", ["nan", "signal", "resume"])
def test_checks_read_one_step_late_behave_the_same(tmp_path, case):
    """The GPU path reads each step's loss numbers one step late (no wait for the forward pass
    in every step). Forced on the CPU (``_lagged_checks``): a diverged loss names the same
    batch and keeps the same checkpoints, a signal stops after the same batch, and the loss
    curve of a run equals the one read at once."""
    if case == "nan":
        t = Trainer(_cfg(tmp_path, "nan", epochs=5), model=PointwiseMLP(), datasets=_data())
        t._lagged_checks = True
        t.fit(stop_at=2)
        best, last = (tmp_path / "nan" / "best.pt").read_bytes(), (tmp_path / "nan" / "last.pt").read_bytes()
        with torch.no_grad():
            for p in t.module.parameters():
                p.mul_(1e30)
        with pytest.raises(TrainingDiverged, match=r"became (nan|inf) at epoch 3, batch 1"):
            t.fit()
        assert (tmp_path / "nan" / "best.pt").read_bytes() == best
        assert (tmp_path / "nan" / "last.pt").read_bytes() == last
    elif case == "signal":
        model = _model(dropout=0.1)
        calls = {"n": 0}

        def send_sigterm(module, inputs, output):
            calls["n"] += module.training
            if module.training and calls["n"] == 3 + 2:
                os.kill(os.getpid(), signal.SIGTERM)

        hook = model.register_forward_hook(send_sigterm)
        t = Trainer(_cfg(tmp_path, "sig", epochs=3), model=model, datasets=_data())
        t._lagged_checks = True
        with pytest.raises(TrainingInterrupted, match=r"SIGTERM in epoch 2 after batch 2/3"):
            t.fit()
        hook.remove()
        assert (t.epoch, t.step_in_epoch) == (1, 2)
        full = Trainer(_cfg(tmp_path, "full", epochs=3), model=_model(dropout=0.1),
                       datasets=_data())
        full.fit()
        resumed = Trainer.resume(tmp_path / "sig", model=PointwiseMLP(dropout=0.1),
                                 datasets=_data())
        resumed._lagged_checks = True
        resumed.fit()                      # the interrupted epoch's two batches were counted
        assert np.allclose([h["train_loss"] for h in full.history],
                           [h["train_loss"] for h in resumed.history], rtol=1e-6)
    else:
        runs = []
        for lagged in (False, True):
            t = Trainer(_cfg(tmp_path, f"r{lagged}"), model=_model(dropout=0.1), datasets=_data())
            t._lagged_checks = lagged
            t.fit()
            runs.append([h["train_loss"] for h in t.history])
        assert np.allclose(runs[0], runs[1], rtol=1e-12, atol=0)
