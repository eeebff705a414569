"""The benchmark runs end to end at a small size and reports its headline keys (not timed)."""
import json

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


def test_grid_rounds_keep_medians_and_each_rounds_ratio():
    """The grid case alternates graphop and the peers; what it reports is the median of every
    number over the rounds, each ratio's rounds beside it, and a peer's message as it came."""
    from graphop.bench.layers import format_result
    from graphop.bench.train import _median_rounds

    rounds = [{"local_gno_samples_s": 10.0, "local_gno_params": 5, "global_vs_fno": 1.3},
              {"local_gno_samples_s": 30.0, "local_gno_params": 5, "global_vs_fno": 0.9},
              {"local_gno_samples_s": 20.0, "local_gno_params": 5, "global_vs_fno": 1.0}]
    out = _median_rounds(rounds)
    assert out["local_gno_samples_s"] == 20.0 and out["local_gno_params"] == 5
    assert out["global_vs_fno"] == 1.0 and out["global_vs_fno_rounds"] == [1.3, 0.9, 1.0]
    assert "local_gno_samples_s_rounds" not in out
    msg = _median_rounds([{"neuralop": "not importable"}, {"neuralop": "not importable"}])
    assert msg == {"neuralop": "not importable"}
    assert "global_vs_fno_rounds  1.3, 0.9, 1" in format_result("train", {"grid_16": out})


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
