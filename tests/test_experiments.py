"""Tests of the experiment runner: config validation, the parameter-budget matcher, the
uniform-weights and point-cloud wrappers, the mesh-type writer and one tiny end-to-end run."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from graphop.errors import ConfigError
from graphop.experiments.sets import PointCloudView, UniformWeights, write_meshtype_set
from graphop.experiments.runner import (count_parameters, evaluate_errors, load_experiment,
                                 match_parameters, validate_experiment)
from graphop.geometry.mesh import Mesh
from graphop.training.metrics import relative_l2
from graphop.data.normalize import Normalizer

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

BASE = {
    "problem": "darcy", "inputs": ["a"], "targets": ["u"], "seeds": [0],
    "train": {"n": 4, "points": 100},
    "tests": {"t": {"n": 2, "points": 100, "seed": 5}},
    "variants": {"m": {"model": {"name": "gnn", "hidden": 4}}},
}


def _write(tmp_path, cfg, name="exp"):
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.mark.parametrize("path, bad, msg", [
    ((), {"epochs": 3}, "unknown key(s) epochs"),
    (("variants", "m"), {"widht": 3}, "variants.m: unknown key(s) widht"),
    (("variants", "m"), {"training": {"epoks": 3}}, "variants.m.training: unknown key(s) epoks"),
    (("tests", "t"), {"pointz": 3}, "tests.t: unknown key(s) pointz"),
    (("tests", "t"), {"mesh": {"structure": "tri"}}, "tests.t.mesh: unknown key(s) structure"),
    (("train",), {"mesh": {"bogus": 1}}, "train.mesh: unknown key(s) bogus"),
])
def test_unknown_keys_are_errors(tmp_path, path, bad, msg):
    cfg = json.loads(json.dumps(BASE))
    node = cfg
    for k in path:
        node = node[k]
    node.update(bad)
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_experiment(_write(tmp_path, cfg))


def test_training_keys_and_references_are_checked():
    cfg = json.loads(json.dumps(BASE))
    cfg["training"] = {"epochs": 2, "model": {}}
    with pytest.raises(ConfigError, match=r"training: unknown key\(s\) model"):
        validate_experiment(cfg)
    cfg["training"] = {"epochs": 2}
    cfg["tests"]["c"] = {"from": "nope", "point_cloud": True}
    with pytest.raises(ConfigError, match="tests.c.from must name a generated test set"):
        validate_experiment(cfg)
    del cfg["tests"]["c"]
    cfg["budget"] = {"reference": "other"}
    with pytest.raises(ConfigError, match="budget.reference 'other' is not a variant"):
        validate_experiment(cfg)
    del cfg["budget"]
    cfg["seeds"] = []
    with pytest.raises(ConfigError, match="seeds must be a non-empty list"):
        validate_experiment(cfg)


def test_quick_section_is_deep_merged_and_required(tmp_path):
    cfg = json.loads(json.dumps(BASE))
    cfg["quick"] = {"train": {"n": 2}, "seeds": [3, 4], "variants": {"m": {"model": {"hidden": 2}}}}
    d = _write(tmp_path, cfg)
    q = load_experiment(d, quick=True)
    assert q["train"] == {"n": 2, "points": 100}
    assert q["seeds"] == [3, 4]
    assert q["variants"]["m"]["model"] == {"name": "gnn", "hidden": 2}
    full = load_experiment(d)
    assert full["train"]["n"] == 4 and "quick" not in full
    del cfg["quick"]
    with pytest.raises(ConfigError, match="no 'quick' section"):
        load_experiment(_write(tmp_path, cfg, "other"), quick=True)


def test_variant_selection(tmp_path):
    cfg = json.loads(json.dumps(BASE))
    cfg["variants"] = {"a": {"model": {"name": "gnn", "hidden": 4}},
                       "b": {"model": {"name": "gnn", "hidden": 5}, "tune": "hidden"},
                       "c": {"model": {"name": "gnn", "hidden": 6}, "tune": "hidden"}}
    cfg["budget"] = {"reference": "a"}
    cfg["compare"] = "b"
    d = _write(tmp_path, cfg)
    sel = load_experiment(d, variants=["c", "a"])
    assert list(sel["variants"]) == ["a", "c"]             # the config's order
    assert sel["variants_in_config"] == ["a", "b", "c"] and "compare" not in sel
    assert load_experiment(d, variants=["a", "b"])["compare"] == "b"
    with pytest.raises(ConfigError, match="no variant 'd'"):
        load_experiment(d, variants=["a", "d"])
    with pytest.raises(ConfigError, match="must include 'a'"):
        load_experiment(d, variants=["b"])


def test_committed_configs_are_valid():
    names = sorted(p.parent.name for p in (REPO / "experiments").glob("*/config.yaml"))
    assert {"ablation_darcy", "ablation_ns", "ablation_poisson3d", "generalization_resolution",
            "generalization_meshtype", "generalization_domain",
            "generalization_ns_density"} <= set(names)
    for n in names:
        for quick in (False, True):
            cfg = load_experiment(REPO / "experiments" / n, quick=quick)
            if n.startswith("ablation"):
                assert len(cfg["seeds"]) >= 2 and cfg["budget"]["tolerance"] <= 0.1


def test_match_parameters_finds_the_closest_width():
    base = {"name": "local_gno", "in_channels": 1, "out_channels": 1, "dim": 2,
            "latent_shape": [8, 8], "modes": [3, 3], "n_layers": 2}
    target = count_parameters({**base, "width": 12})
    cfg, n = match_parameters({**base, "branches": ["global"]}, "width", target, 0.1, hi=64)
    w = cfg["width"]
    assert n == count_parameters(cfg) and abs(n - target) <= 0.1 * target
    for other in (w - 1, w + 1):  # no neighbouring width is closer
        assert abs(count_parameters({**cfg, "width": other}) - target) >= abs(n - target)
    assert w > 12  # without the local branches a wider model has the same budget
    with pytest.raises(ConfigError, match="cannot match"):
        match_parameters({**base, "branches": ["global"]}, "width", target, 0.1, lo=1, hi=3)


def _square_data(n=6):
    from graphop.geometry.domains import mesh_domain

    m = mesh_domain("square", 80, seed=1, perturb=0.3)
    m = Mesh(m.points[:, :2], {"triangle": m.cells["triangle"]})
    d = m.to_data(fields=[])
    d.x = torch.sin(3 * d.pos[:, :1])
    d.y = d.pos[:, :1] ** 2 + 0.5
    return m, d


def test_uniform_weights_wrapper():
    m, d = _square_data()
    u = UniformWeights([d])[0]
    n = d.pos.shape[0]
    assert torch.allclose(u.weight, torch.full((n,), float(d.weight.sum()) / n))
    assert torch.isclose(u.weight.sum(), d.weight.sum())
    assert torch.equal(u.weight_true, d.weight) and torch.equal(u.pos, d.pos)
    assert u.mesh_hash == d.mesh_hash + ":uniform"
    assert d.weight.std() > 0  # the original is untouched and was not uniform

    class Const(torch.nn.Module):  # predicts 1 everywhere
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, data):
            return torch.ones(data.pos.shape[0], 1) + 0 * self.p

    norm = Normalizer()
    e_uniform = evaluate_errors(Const(), norm, UniformWeights([d]))
    e_true = relative_l2(torch.ones(n, 1), d.y, d.weight)
    e_flat = relative_l2(torch.ones(n, 1), d.y, u.weight)
    assert np.isclose(e_uniform[0], float(e_true), rtol=1e-6)  # measured with the quadrature
    assert not np.isclose(float(e_flat), float(e_true), rtol=1e-4)


def test_point_cloud_view_drops_cells_and_keeps_measure():
    m, d = _square_data()
    c = PointCloudView([d])[0]
    assert getattr(c, "face", None) is None
    assert torch.equal(c.pos, d.pos) and torch.equal(c.y, d.y) and torch.equal(c.x, d.x)
    assert torch.isclose(c.weight.double().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)
    assert not torch.allclose(c.weight, d.weight)
    assert c.mesh_hash != d.mesh_hash


def test_meshtype_writer_quads(tmp_path):
    from graphop.io import read_mesh

    root = write_meshtype_set(tmp_path / "q", 2, 100, 7, {"structured": "quad"}, {})
    files = sorted((root / "train").glob("*.vtu"))
    assert len(files) == 2
    m = read_mesh(files[0])
    assert set(m.cells) == {"quad"} and m.n_points == 100
    assert np.isclose(m.weights.sum(), 1.0)
    u, a = m.point_data["u"], m.point_data["a"]
    assert np.allclose(u[m.boundary], 0.0) and (u[~m.boundary] > 0).all()
    assert set(np.unique(a)) <= {3.0, 12.0}
    with pytest.raises(ConfigError, match="unknown mesh option"):
        write_meshtype_set(tmp_path / "z", 1, 100, 0, {"bogus": 1}, {})


def _tiny_config():
    return {
        "description": "tiny", "problem": "darcy", "inputs": ["a"], "targets": ["u"],
        "seeds": [0, 1],
        "train": {"n": 6, "points": 120, "domains": ["square", "disk"], "seed": 0},
        "tests": {"mesh": {"n": 2, "points": 120, "domains": ["square", "disk"], "seed": 9},
                  "cloud": {"from": "mesh", "point_cloud": True},
                  "quad": {"n": 1, "points": 100, "seed": 9, "mesh": {"structured": "quad"}}},
        "training": {"epochs": 1, "batch_size": 2, "val_fraction": 0.2},
        "budget": {"reference": "lgno", "tolerance": 0.1},
        "variants": {
            "lgno": {"model": {"name": "local_gno", "width": 6, "n_layers": 1,
                               "latent_shape": [8, 8], "modes": [3, 3]}},
            "gnn": {"model": {"name": "gnn", "n_layers": 1}, "tune": "hidden"},
            "lgno_uw": {"model": {"name": "local_gno", "width": 6, "n_layers": 1,
                                  "latent_shape": [8, 8], "modes": [3, 3]},
                        "uniform_weights": True, "training": {"epochs": 2}}},
        "compare": "lgno",
        "figures": {"resolution": ["mesh", "quad"], "sample": "mesh"},
        "quick": {"training": {"epochs": 1}},
    }


def test_tiny_experiment_end_to_end(tmp_path):
    from graphop.experiments.runner import run_experiment

    cfg = _tiny_config()
    folder = _write(tmp_path, cfg, "tiny")
    res = run_experiment(folder, quick=True, datasets_dir=tmp_path / "data",
                         runs_dir=tmp_path / "runs", workers=1, device="cpu", progress=False,
                         log=lambda *a: None, variants=["lgno_uw", "gnn", "lgno"])
    for f in ("results-quick.md", "results-quick.json", "errors-quick.png",
              "error_vs_resolution-quick.png", "sample_prediction-quick.png"):
        assert (folder / f).is_file(), f
    assert not (folder / "results.md").exists()
    js = json.loads((folder / "results-quick.json").read_text())
    assert js["quick"] is True and js["config"]["seeds"] == [0, 1]
    assert set(js) >= {"commit", "config", "runs", "summary", "variants", "test_sets", "wall_s"}
    assert len(js["runs"]) == 6  # 3 variants x 2 seeds
    # a variant's own training keys override the experiment's
    assert {(r["variant"], r["epochs"]) for r in js["runs"]} == {("lgno", 1), ("gnn", 1),
                                                                ("lgno_uw", 2)}
    counts = {v: js["variants"][v]["n_parameters"] for v in js["variants"]}
    assert abs(counts["gnn"] - counts["lgno"]) <= 0.1 * counts["lgno"]
    for v in js["variants"]:
        for t in ("mesh", "cloud", "quad"):
            vals = [r["tests"][t]["rel_l2"] for r in js["runs"] if r["variant"] == v]
            s = js["summary"][v][t]
            assert s["n_seeds"] == 2 and np.isclose(s["mean"], np.mean(vals))
            assert np.isclose(s["std"], np.std(vals, ddof=1)) and np.isfinite(vals).all()
    assert js["test_sets"]["quad"]["mean_points"] == 100
    md = (folder / "results-quick.md").read_text()
    assert "QUICK" in md and "| lgno |" in md and "Change against `lgno`" in md
    assert "variants run: gnn, lgno, lgno_uw (not run: none)" in md
    assert res["summary"] == js["summary"]


def test_parallel_jobs_reproduce_the_serial_run(tmp_path):
    """jobs=2 trains the (variant, seed) runs in spawned processes; every run is seeded alike,
    so the errors equal those of jobs=1, the runs keep the config's order, and each worker's
    training log lands next to its run directory."""
    from graphop.experiments.runner import run_experiment

    cfg = _tiny_config()
    cfg["variants"] = {k: cfg["variants"][k] for k in ("lgno", "lgno_uw")}
    cfg["tests"] = {"mesh": cfg["tests"]["mesh"]}
    cfg["figures"] = {"sample": "mesh"}
    res = {}
    for jobs in (1, 2):
        folder = _write(tmp_path / f"j{jobs}", cfg, "tiny")
        res[jobs] = run_experiment(folder, quick=True, datasets_dir=tmp_path / "data",
                                   runs_dir=tmp_path / f"runs{jobs}", workers=1, device="cpu",
                                   progress=False, log=lambda *a: None, jobs=jobs)
    assert res[2]["jobs"] == 2
    assert [(r["variant"], r["seed"]) for r in res[2]["runs"]] == \
        [(r["variant"], r["seed"]) for r in res[1]["runs"]]
    for a, b in zip(res[1]["runs"], res[2]["runs"]):
        np.testing.assert_allclose(a["tests"]["mesh"]["per_sample"],
                                   b["tests"]["mesh"]["per_sample"], rtol=1e-6)
    assert (tmp_path / "runs2" / "lgno-s1.log").read_text().count("epoch 1/1") == 1
    assert (tmp_path / "j2" / "tiny" / "sample_prediction-quick.png").is_file()


def _sleeping_worker(path):
    import os
    import time

    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_training_workers_die_with_a_killed_experiment(tmp_path):
    """A killed `graphop experiment` must not leave its training processes running (orphans
    once held 11 GB and both cores of this machine for 40 minutes)."""
    import os
    import signal
    import subprocess
    import time

    marker = tmp_path / "worker.pid"
    script = (
        "import concurrent.futures, multiprocessing, time\n"
        "from graphop.experiments.runner import _init_worker\n"
        "from tests.test_experiments import _sleeping_worker\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    ex = concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx,\n"
        "                                                initializer=_init_worker, initargs=(1,))\n"
        f"    ex.submit(_sleeping_worker, {str(marker)!r})\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 300   # a spawned worker imports torch: slow on a busy machine
        while time.monotonic() < deadline and not (marker.exists() and marker.read_text()):
            time.sleep(0.1)
        pid = int(marker.read_text())
        parent.kill()                       # SIGKILL: no cleanup code of the parent runs
        parent.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return
            if state in ("Z", "X"):         # dead, waiting to be reaped by init
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the training worker outlived its killed parent")
    finally:
        parent.kill()
