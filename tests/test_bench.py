"""The benchmark runs end to end at a small size and reports its headline keys (not timed)."""
import json

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
