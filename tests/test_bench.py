"""The benchmark runs end to end at a small size and reports its headline keys (not timed)."""
import json
import re

import pytest

import torch

from graphop.cli import main

torch.set_num_threads(1)


def test_bench_layers_json_small(capsys):
    code = main(["bench", "layers", "--json", "--points", "1500", "--repeats", "1"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("disco_vs_naive_speedup", "disco_vs_naive_memory", "disco_vs_floor_time_ratio",
                "build_seconds", "diff_forward_s", "diff_forward_backward_s"):
        assert res[key] is None or res[key] >= 0, key
    assert res["points"] > 1000 and res["n_basis"] == 9
    assert res["naive_max_abs_diff"] < 1e-4          # the baseline computes the same operator


def test_bench_rejects_bad_points(capsys):
    assert main(["bench", "layers", "--points", "10"]) == 2
    assert "--points must be at least 100" in capsys.readouterr().err


def test_bench_train_large_case_reports_build_step_and_memory():
    from graphop.bench.layers import format_result
    from graphop.bench.train import bench_train

    res = bench_train(cases=("large",), n_points=1500, repeats=1, progress=False)
    for dim in (2, 3):
        r = res["large"][f"{dim}d_1500"]
        assert isinstance(r, dict), r            # a failed worker reports its error as text
        assert r["points"] == 1500 and r["step_s"] > 0 and r["build_s"] >= 0
        assert 0 < r["copies_s"] <= r["build_s"] + 0.05     # the forward copies, part of it
        assert r["peak_rss_gib"] > 0.05 and r["supports"]["disco_radius"] > 0
        # the numpy reference build ran in its own process, its ratio beside it
        assert r["build_reference_s"] > 0 and r["build_jit_speedup"] > 0
    text = format_result("train", res)
    assert "large" in text and "2d_1500" in text and "step_s" in text


def test_grid_cycles_interleave_epochs_and_pair_their_ratios():
    """The grid case times one epoch of every model per cycle, the order reversed every other
    cycle, after one warm-up epoch each; samples/s is the median epoch and a ratio the median
    over cycles of the peer's epoch time over graphop's in the same cycle."""
    from graphop.bench.layers import format_result
    from graphop.bench.train import SAMPLES, _grid_ratios, _interleaved

    calls = []
    # epoch times per model: warm-up first, then one per cycle; the machine "slows down" 2x
    # in cycle 2, for both models alike
    times = {"global": [9.0, 1.0, 2.0, 1.0], "neuralop_fno": [9.0, 1.25, 2.5, 1.25],
             "local_gno": [9.0, 4.0, 8.0, 4.0]}

    def runner(name):
        def run():
            calls.append(name)
            return times[name][sum(c == name for c in calls) - 1]
        return run

    out = _grid_ratios(_interleaved({k: runner(k) for k in times}, 3, "grid", lambda msg: None))
    assert calls == ["global", "neuralop_fno", "local_gno",            # warm-up
                     "global", "neuralop_fno", "local_gno",            # cycle 1
                     "local_gno", "neuralop_fno", "global",            # cycle 2, reversed
                     "global", "neuralop_fno", "local_gno"]
    assert out["global_samples_s"] == SAMPLES / 1.0 and out["local_gno_samples_s"] == SAMPLES / 4.0
    assert out["global_vs_fno_cycles"] == [1.25, 1.25, 1.25] and out["global_vs_fno"] == 1.25
    assert "local_gno_vs_local_no" not in out          # no LocalNO among the runners
    assert re.search(r"global_vs_fno_cycles +1.25, 1.25, 1.25",
                     format_result("train", {"grid_16": out}))


def test_bench_train_runs_on_the_device_it_is_given_and_refuses_a_missing_one():
    """``device`` reaches every case (here the CPU, named explicitly: the large case's worker
    reports it); a device this machine lacks fails before any work, with the reason."""
    from graphop.bench.train import bench_train
    from graphop.errors import GraphopError

    res = bench_train(cases=("large",), n_points=1200, repeats=1, progress=False, device="cpu")
    assert res["device"] == "cpu" and res["large"]["2d_1200"]["device"] == "cpu"
    with pytest.raises(GraphopError, match="unknown device"):
        bench_train(cases=("large",), device="tpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(GraphopError, match="CUDA is not available"):
            bench_train(cases=("large",), device="cuda", progress=False)


def test_peer_worker_runs_without_graphop(tmp_path, monkeypatch):
    """The neuraloperator worker runs in another interpreter that has no graphop: the peers
    module imports none of it. Here graphop is made unimportable in the worker; without
    neuraloperator it must still get as far as saying so, with its own message."""
    import subprocess
    import sys

    import graphop.bench.peers as peers

    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text(json.dumps({"kwargs": {}, "threads": 1}))
    code = ("import runpy, sys; sys.modules['graphop'] = None; "
            f"sys.argv = ['peers.py', 'grid', {str(src)!r}, {str(dst)!r}]; "
            f"runpy.run_path({peers.__file__!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if peers._importable():
        pytest.skip("neuraloperator is importable here: the worker would run the real peer")
    assert proc.returncode == 3, proc.stderr
    assert "neuraloperator (with torch-harmonics) is not importable" in proc.stderr

    # run_peer reports a failing worker and a missing interpreter as text, not an exception
    monkeypatch.delenv("GRAPHOP_NEURALOP_PYTHON", raising=False)
    assert "not importable" in peers.run_peer("grid", {})["neuralop"]
    out = peers.run_peer("grid", {}, python=sys.executable)
    assert out["neuralop"].startswith("worker failed:") and "not importable" in out["neuralop"]
    with pytest.raises(ValueError, match="unknown peer"):
        peers.run_peer("nope", {})


_STAND_IN = '''
import torch
from torch import nn


class FNO(nn.Module):
    """a stand-in with neuraloperator's constructor arguments (not its layers)"""

    def __init__(self, n_modes, in_channels, out_channels, hidden_channels, n_layers, **kw):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden_channels, 1), nn.GELU(),
                                 nn.Conv2d(hidden_channels, out_channels, 1))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > FAIL_AFTER:
            raise RuntimeError("stand-in peer gave up")
        return self.net(x)


FAIL_AFTER = 10 ** 9


class GINO(nn.Module):
    pass
'''


def _stand_in_neuralop(root, fail_after=None):
    """A package named ``neuralop`` with FNO, GINO and LocalNO classes that take
    neuraloperator's constructor arguments: enough for the worker protocol, which is what the
    tests below check (neuraloperator itself is not installed here)."""
    pkg = root / "neuralop"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    src = _STAND_IN if fail_after is None else _STAND_IN.replace("10 ** 9", str(fail_after))
    (pkg / "models" / "__init__.py").write_text(src)
    (pkg / "models" / "local_no.py").write_text(
        "from neuralop.models import FNO\n\n\nclass LocalNO(FNO):\n"
        "    def __init__(self, default_in_shape=None, **kw):\n        super().__init__(**kw)\n")


def test_grid_peers_worker_times_epochs_on_request(tmp_path, monkeypatch):
    """The grid peers stay up in another interpreter and answer one epoch at a time: their
    names and parameter counts first, then seconds per epoch; a worker that dies is reported
    with its own last words, and closing ends the process."""
    import sys

    import graphop.bench.peers as peers

    if peers._importable():
        pytest.skip("neuraloperator is importable here: grid_peers would run in-process")
    kwargs = {"n": 8, "device": "cpu", "samples": 8, "batch": 4, "width": 6, "layers": 2,
              "modes": [4, 4]}
    _stand_in_neuralop(tmp_path / "ok")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "ok"))
    session = peers.grid_peers(kwargs, python=sys.executable)
    assert not isinstance(session, dict), session
    try:
        assert session.names == ["neuralop_fno", "neuralop_local_no"]
        assert session.params == {"neuralop_fno": 1 * 6 + 6 + 6 * 1 + 1,
                                  "neuralop_local_no": 1 * 6 + 6 + 6 * 1 + 1}
        assert session.python == sys.executable
        for name in session.names * 2:
            assert 0 < session.epoch(name) < 60
    finally:
        session.close()
    assert session.proc.poll() == 0

    # the stand-in raises on its 5th forward pass: the 3rd epoch of 2 steps
    _stand_in_neuralop(tmp_path / "dies", fail_after=4)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "dies"))
    session = peers.grid_peers(kwargs, python=sys.executable)
    session.epoch("neuralop_fno")
    session.epoch("neuralop_fno")
    with pytest.raises(RuntimeError, match="worker failed: .*stand-in peer gave up"):
        session.epoch("neuralop_fno")
    assert session.proc.poll() is not None

    # an interpreter without neuraloperator says so, as a result rather than an exception
    monkeypatch.delenv("PYTHONPATH")
    out = peers.grid_peers(kwargs, python=sys.executable)
    assert out["neuralop"].startswith("worker failed:") and "not importable" in out["neuralop"]
    monkeypatch.delenv("GRAPHOP_NEURALOP_PYTHON", raising=False)
    assert "not importable" in peers.grid_peers(kwargs)["neuralop"]
