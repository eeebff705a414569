"""Two processes (torchrun, gloo on CPU) take the same optimisation steps as one process with
the same global batch."""
import csv
import subprocess
import sys

import numpy as np
import torch

from graphop.training.checkpoint import load_checkpoint
from graphop.cli import main as cli
from trainkit import TINY_GNO, write_dataset

torch.set_num_threads(1)


def _history(run):
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_two_process_gloo_equals_one_process(tmp_path):
    data = write_dataset(tmp_path / "data", n_train=8, n_test=2, n=60)
    common = ["--data", str(data), "--inputs", "a", "--targets", "u", "--model", "local_gno",
              "--epochs", "2", "--batch-size", "4", "--lr", "3e-3", "--device", "cpu",
              "--no-progress", "--set", "val_fraction=0", *TINY_GNO]
    one = tmp_path / "one"
    assert cli(["train", *common, "--out", str(one)]) == 0
    two = tmp_path / "two"
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "graphop.cli.worker", *common, "--out", str(two)]
    res = subprocess.run(env_cmd, capture_output=True, text=True, timeout=240,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert np.isclose(a["train_loss"], b["train_loss"], rtol=1e-4), (a, b)
        assert np.isclose(a["val_rel_l2"], b["val_rel_l2"], rtol=1e-4), (a, b)
    c1, c2 = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert c2["train_config"]["batch_size"] == 4
    for k, v in c1["model"].items():
        assert torch.allclose(v, c2["model"][k], atol=1e-5, rtol=1e-4), k
    # only rank 0 wrote the run files
    assert sorted(p.name for p in two.glob("*.pt")) == ["best.pt", "last.pt"]
