"""One process per run directory: the run lock (two trainings at once, --resume of a live run)
and the clean-up of checkpoint temporaries that a killed writer left behind."""
import os
import subprocess
import sys

import pytest
import torch

from graphop.cli import main as cli
from graphop.training.checkpoint import load_checkpoint, remove_stale_temporaries
from graphop.training.runlock import RunLockedError, claim_run_dir, release_run_dir
from trainkit import TINY_GNO, write_dataset

torch.set_num_threads(1)

_HOLD = ("import sys, time\n"
         "from graphop.training.runlock import claim_run_dir\n"
         "claim_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)\n")


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    """A live process (not this one) that holds the run lock on a folder 'run'."""
    run = tmp_path_factory.mktemp("held") / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def _data_args(data):
    return ["--data", str(data), "--inputs", "a", "--targets", "u", "--model", "local_gno",
            "--batch-size", "2", "--device", "cpu", "--no-progress", *TINY_GNO]


def test_second_process_is_refused_with_the_holders_pid(holder, capsys):
    run, proc = holder
    with pytest.raises(RunLockedError, match=rf"{run}: process {proc.pid} on .* is already "
                                             r"training in this run directory"):
        claim_run_dir(run)
    assert (run / ".lock").read_text().split()[0] == str(proc.pid)


def test_train_and_resume_into_a_live_run_are_refused(holder, tmp_path, capsys):
    run, proc = holder
    data = write_dataset(tmp_path / "data", n_train=4, n_test=2, n=40)
    assert cli(["train", *_data_args(data), "--epochs", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"process {proc.pid}" in err, err
    assert not (run / "last.pt").exists() and not (run / "config.yaml").exists()
    (run / "config.yaml").write_text(f"data: {data}\ninputs: [a]\ntargets: [u]\n")
    (run / "last.pt").write_bytes(b"not read: the lock comes first")
    assert cli(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graphop: error:") and f"process {proc.pid}" in err, err


def test_two_trainings_started_at_once_into_one_new_out(tmp_path):
    """The race of issue #16: both used to exit 0 with mixed files. Now exactly one trains."""
    data = write_dataset(tmp_path / "data", n_train=4, n_test=2, n=40)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "graphop", "--threads", "1", "train", *_data_args(data), "--epochs", "2",
           "--out", str(run)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-1500:] for o in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1].strip().splitlines()
    assert len(err) == 1 and f"process {procs[winner].pid}" in err[0], err
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 2 and len(ck["history"]) == 2
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    # the winner has exited, and its lock went with it
    claim_run_dir(run)
    assert (run / ".lock").read_text().split()[0] == str(os.getpid())
    release_run_dir(run)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_checkpoint_temporaries_are_removed_on_resume(holder, tmp_path):
    _, live = holder
    dead = _dead_pid()
    run = tmp_path / "r"
    run.mkdir()
    stale = run / f".best.pt.tmp{dead}"
    stale.write_bytes(b"x" * 1000)
    busy = run / f".last.pt.tmp{live.pid}"   # a live writer's: kept
    busy.write_bytes(b"y")
    other = run / "notes.tmp123"              # not a checkpoint temporary: kept
    other.write_text("mine")
    assert remove_stale_temporaries(run) == [stale]
    assert not stale.exists() and busy.exists() and other.exists()
    # through `graphop train --resume`: the run's own lock clears what a kill -9 left
    data = write_dataset(tmp_path / "data", n_train=4, n_test=2, n=40)
    out = tmp_path / "run2"
    assert cli(["train", *_data_args(data), "--epochs", "1", "--out", str(out)]) == 0
    left = out / f".best.pt.tmp{dead}"
    left.write_bytes(b"z" * 1000)
    assert cli(["train", "--resume", str(out), "--set", "epochs=2", "--no-progress"]) == 0
    assert not left.exists() and load_checkpoint(out / "last.pt")["epoch"] == 2
