"""The operator store (graphop.layers.store): operators on disk, keyed by content and
hyperparameters, loaded instead of rebuilt, never read when they do not match."""
import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

import graphop.layers.sparse as ops
from graphop.errors import GraphopWarning
from graphop.layers import DifferentialConv, DISCOConv, GridEncoder
from graphop.layers.sparse import SparseOperator
from graphop.layers.store import OperatorStore, code_digest


@pytest.fixture
def store(tmp_path):
    ops.operator_cache.clear()
    old = ops.operator_cache.store
    ops.operator_cache.store = OperatorStore(tmp_path)
    yield ops.operator_cache.store
    ops.operator_cache.store = old
    ops.operator_cache.clear()


def _data(n=300, seed=0):
    p = np.random.default_rng(seed).random((n, 2))
    return Data(pos=torch.tensor(p), weight=torch.full((n,), 1.0 / n, dtype=torch.float64))


def _layers():
    torch.manual_seed(0)
    return [DISCOConv(2, 3, 0.2).double(), DifferentialConv(2, 3).double(),
            lambda x, d: GridEncoder((8, 8))(x, d)]


def test_second_pass_loads_every_operator_and_gives_the_same_outputs(store):
    data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
    first = [f(x, data) for f in _layers()]
    assert store.saves == 3 and store.loads == 0
    assert store.root.name == f"operators-{code_digest()}"
    ops.operator_cache.clear()                       # a new run: nothing in memory
    second = [f(x, data) for f in _layers()]
    assert store.loads == 3 and store.saves == 3     # nothing built, nothing written
    for a, b in zip(first, second):
        a, b = (a, b) if torch.is_tensor(a) else (a[0], b[0])
        assert torch.equal(a, b)


def test_locality_orders_travel_with_the_operator(store, monkeypatch):
    # an operator built with a locality order loads with the same order (and the same matrix)
    monkeypatch.setattr(ops, "LOCALITY_MIN_POINTS", 100)
    data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
    layer = DISCOConv(2, 3, 0.2).double()
    built, _ = layer.operator(data)
    first = layer(x, data)
    assert built.ordered and store.saves == 1
    ops.operator_cache.clear()
    loaded, _ = layer.operator(data)
    assert store.loads == 1 and loaded is not built
    np.testing.assert_array_equal(loaded.order_in, built.order_in)
    np.testing.assert_array_equal(loaded.order_out, built.order_out)
    # saved and loaded in the layout it was built in: the own-order matrix is not made
    assert built.made_in_order and loaded.made_in_order
    assert loaded._matrix is None
    assert abs(loaded.matrix - built.matrix).max() == 0
    assert torch.equal(layer(x, data), first)
    # an operator given in the points' own order (with orders) is saved in it
    plain = SparseOperator(built.matrix, built.n_basis, order_out=built.order_out,
                           order_in=built.order_in)
    store.save(("plain", 1), plain)
    back = store.load(("plain", 1))
    assert not back.made_in_order and abs(back.matrix - built.matrix).max() == 0


def test_a_changed_hyperparameter_or_mesh_is_a_different_file(store):
    data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
    DISCOConv(2, 3, 0.2).double()(x, data)
    DISCOConv(2, 3, 0.25).double()(x, data)          # another radius
    DISCOConv(2, 3, 0.2, normalize="l1").double()(x, data)
    DISCOConv(2, 3, 0.2).double()(x, _data(seed=1))  # another mesh
    assert store.saves == 4 and store.loads == 0
    assert len(list(store.root.glob("*.npz"))) == 4


def test_a_damaged_file_is_deleted_and_rebuilt(store):
    data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
    conv = DISCOConv(2, 3, 0.2).double()
    y = conv(x, data)
    (path,) = store.root.glob("*.npz")
    path.write_bytes(b"not an npz file")
    ops.operator_cache.clear()
    assert torch.equal(conv(x, data), y)
    assert store.failures == 1 and store.loads == 0 and store.saves == 2


def test_the_folder_is_pruned_to_its_budget_least_recently_used_first(tmp_path):
    data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
    ops.operator_cache.clear()
    probe = OperatorStore(tmp_path / "probe")
    ops.operator_cache.store = probe
    try:
        DISCOConv(2, 3, 0.2).double()(x, data)
        one = probe.nbytes
        small = OperatorStore(tmp_path / "small", max_bytes=int(2.5 * one))
        ops.operator_cache.store = small
        for i, r in enumerate((0.2, 0.201, 0.202, 0.203)):
            ops.operator_cache.clear()
            DISCOConv(2, 3, r).double()(x, data)
            os.utime(small.path(next(iter(ops.operator_cache._items))), (1e9 + i, 1e9 + i))
        assert small.nbytes <= small.max_bytes
        assert len(list(small.root.glob("*.npz"))) == 2     # the two newest survive
    finally:
        ops.operator_cache.store = None
        ops.operator_cache.clear()


def test_an_unwritable_folder_warns_once_and_builds_in_memory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / f"operators-{code_digest()}").write_text("a file where the folder should be")
    ops.operator_cache.clear()
    ops.operator_cache.store = OperatorStore(ro)
    try:
        data, x = _data(), torch.randn(300, 2, dtype=torch.float64)
        with pytest.warns(GraphopWarning, match="cannot write"):
            y = DISCOConv(2, 3, 0.2).double()(x, data)
        assert torch.isfinite(y).all() and ops.operator_cache.store.saves == 0
    finally:
        ops.operator_cache.store = None
        ops.operator_cache.clear()


def test_graphop_training_reuses_the_store_across_runs(tmp_path, monkeypatch):
    """Two training runs on the same data: the second builds no operator (all loaded) and
    trains exactly as the first did."""
    from trainkit import make_samples

    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", str(tmp_path / "store"))
    train, val = make_samples(4, n=80), make_samples(2, n=80, seed=40)
    model = {"name": "local_gno", "width": 8, "n_layers": 2, "latent_shape": [8, 8],
             "modes": [3, 3]}
    results = []
    for run in ("a", "b"):
        ops.operator_cache.clear()
        cfg = TrainConfig(data="mem", inputs=["a"], targets=["u"], epochs=2, batch_size=2,
                          out=str(tmp_path / run), progress=False, model=dict(model))
        results.append(Trainer(cfg, datasets=(train, val)).fit())
        store = ops.operator_cache.store
        results[-1]["store"] = (store.loads, store.saves)
    ops.operator_cache.store = None
    loads_a, saves_a = results[0]["store"]
    loads_b, saves_b = results[1]["store"]
    assert saves_a > 0 and loads_a == 0
    assert saves_b == saves_a and loads_b == saves_a          # second run: every operator loaded
    assert results[1]["final_train_loss"] == pytest.approx(results[0]["final_train_loss"],
                                                           rel=1e-6)


def test_off_means_off(tmp_path, monkeypatch):
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import attach_operator_store

    monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", "off")
    assert attach_operator_store(TrainConfig()) is None and ops.operator_cache.store is None
    monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", str(tmp_path))
    assert attach_operator_store(TrainConfig(operator_store=False)) is None
    store = attach_operator_store(TrainConfig())
    assert store is not None and store.root.parent == tmp_path
    ops.operator_cache.store = None


def test_operators_prebuilt_in_worker_processes_are_what_the_first_epoch_loads(tmp_path,
                                                                               monkeypatch):
    """prebuild_workers=2: two processes build every distinct geometry's operators into the
    store before the first epoch; the training process then builds none (every operator
    loaded) and trains exactly as a run that built them itself."""
    from trainkit import make_samples

    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    train, val = make_samples(9, n=80), make_samples(2, n=80, seed=40)
    model = {"name": "local_gno", "width": 8, "n_layers": 2, "latent_shape": [8, 8],
             "modes": [3, 3]}
    results = {}
    for workers in ("0", "2"):
        monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", str(tmp_path / f"store{workers}"))
        ops.operator_cache.clear()
        cfg = TrainConfig(data="mem", inputs=["a"], targets=["u"], epochs=1, batch_size=3,
                          out=str(tmp_path / workers), progress=False, model=dict(model),
                          prebuild_workers=workers)
        trainer = Trainer(cfg, datasets=(train, val))
        assert len(ops.operator_cache) == 0              # nothing built in this process yet
        summary = trainer.fit()
        store = ops.operator_cache.store
        results[workers] = (summary["final_train_loss"], store.loads, store.saves,
                            len(list(store.root.glob("*.npz"))))
    ops.operator_cache.store = None
    loss0, loads0, saves0, files0 = results["0"]
    loss2, loads2, saves2, files2 = results["2"]
    assert saves0 > 0 and loads0 == 0
    assert saves2 == 0 and loads2 == saves0 and files2 == files0
    assert loss2 == pytest.approx(loss0, rel=1e-6)


def test_distinct_geometries_and_the_auto_rule():
    from trainkit import make_samples

    from graphop.training.config import ConfigError, TrainConfig
    from graphop.training.prebuild import MIN_GEOMETRIES, auto_workers, distinct_samples

    a, b = make_samples(2, n=60)
    c = a.clone()
    c.x = c.x + 1.0                          # other fields, same geometry
    assert len(distinct_samples([[a, b, c], [b]])) == 2
    assert auto_workers(100, threads=1) == 0
    assert auto_workers(MIN_GEOMETRIES - 1, threads=4) == 0
    assert auto_workers(100, threads=2) == 2
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="prebuild_workers"):
            TrainConfig(data="x", targets=["u"], prebuild_workers=bad).validate()
    assert TrainConfig(data="x", targets=["u"], prebuild_workers=3).validate().prebuild_workers == "3"


@pytest.mark.parametrize("probe", [0.01, 1.0])
def test_auto_prebuilds_only_what_is_slow_to_build(tmp_path, monkeypatch, capsys, probe):
    """``prebuild_workers: auto`` with 2 threads and 32 meshes: the first two geometries are
    built in the training process and the second is timed (here the timing is fixed at
    ``probe`` seconds, so the rule, not the machine's load, decides). 32 x 0.01 s < MIN_SECONDS:
    nothing is prebuilt. 32 x 1 s: the other 30 go to 2 workers, and the training process
    stores only the first two geometries' operators and loads every other."""
    from trainkit import make_samples

    from graphop.training import prebuild
    from graphop.training.config import TrainConfig
    from graphop.training.trainer import Trainer

    real = prebuild.probe_seconds
    monkeypatch.setattr(prebuild, "probe_seconds", lambda *a: real(*a) * 0 + probe)
    monkeypatch.setenv("GRAPHOP_OPERATOR_STORE", str(tmp_path / "store"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train, val = make_samples(30, n=60), make_samples(2, n=60, seed=70)
        ops.operator_cache.clear()
        cfg = TrainConfig(data="mem", inputs=["a"], targets=["u"], epochs=1, batch_size=8,
                          out=str(tmp_path / "run"), progress=False,
                          model={"name": "local_gno", "width": 4, "n_layers": 1,
                                 "latent_shape": [6, 6], "modes": [2, 2],
                                 "disco_radius": 0.3, "encoder_radius": 0.3})
        trainer = Trainer(cfg, datasets=(train, val))
        probed = ops.operator_cache.store.saves
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    store = ops.operator_cache.store
    ops.operator_cache.store = None
    printed = capsys.readouterr().out
    per_geometry = probed // 2                       # the two probed geometries, built here
    assert per_geometry > 0 and probed == 2 * per_geometry
    if probe < prebuild.MIN_SECONDS / 32:
        assert "built or loaded in" not in printed
        assert store.loads == 0 and store.saves == 32 * per_geometry
    else:
        assert "operators of 30 geometries built or loaded in 2 processes" in printed
        assert store.saves == 2 * per_geometry and store.loads == 30 * per_geometry
