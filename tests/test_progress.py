"""Progress output: plain lines (never carriage-return redraws) when the stream is not a
terminal, and one switch (``--no-progress``) that silences every bar, the mesh reader's too."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graphop.data.progress import is_enabled, progress, set_enabled
from graphop.io import write_mesh
from trainkit import TINY_GNO, make_mesh

REPO = Path(__file__).resolve().parents[1]


def test_plain_lines_about_every_tenth_off_a_terminal():
    buf = io.StringIO()
    bar = progress(total=200, desc="generate darcy", unit="sample", file=buf)
    for _ in range(200):
        bar.update()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert len(lines) == 10
    assert lines[0].startswith("generate darcy: 20/200 sample (10%)")
    assert lines[-1].startswith("generate darcy: 200/200 sample (100%)")


def test_iteration_postfix_and_a_last_line_at_close():
    buf = io.StringIO()
    seen = list(progress(range(7), desc="reading meshes", unit="file", file=buf, lines=2))
    assert seen == list(range(7))
    lines = buf.getvalue().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["reading meshes: 4/7 file (57%)",
                                                   "reading meshes: 7/7 file (100%)"]
    buf = io.StringIO()
    bar = progress(total=5, desc="epoch 1/2", file=buf, lines=0)  # the caller prints per epoch
    bar.update(5)
    bar.close()
    assert buf.getvalue() == ""


def test_disabled_explicitly_or_globally_prints_nothing():
    buf = io.StringIO()
    assert list(progress(range(30), file=buf, enabled=False)) == list(range(30))
    assert buf.getvalue() == ""
    assert is_enabled()
    set_enabled(False)
    try:
        bar = progress(total=3, file=buf)
        bar.update(3)
        bar.set_postfix(loss="0.1")
        bar.close()
    finally:
        set_enabled(True)
    assert buf.getvalue() == ""


@pytest.fixture(scope="module")
def folder50(tmp_path_factory):
    """50 small training meshes (the mesh reader shows a bar from 50 files on) and 2 test ones."""
    root = tmp_path_factory.mktemp("data50")
    for split, count in (("train", 50), ("test", 2)):
        (root / split).mkdir()
        for i in range(count):
            write_mesh(root / split / f"m{i:02d}.vtu", make_mesh(30, i))
    return root


def _no_cache(root: Path) -> None:
    import shutil

    shutil.rmtree(root / ".graphop_cache", ignore_errors=True)


def _train(args, log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as fh:  # stdout and stderr to a file: not a terminal
        return subprocess.call([sys.executable, "-m", "graphop", "--threads", "1", *args],
                               stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                               timeout=300)


def test_training_log_to_a_file_has_lines_not_redraws(folder50, tmp_path):
    log = tmp_path / "train.log"
    _no_cache(folder50)
    code = _train(["train", "--data", str(folder50), "--inputs", "a", "--targets", "u",
                   "--epochs", "2", "--batch-size", "8", "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--set", "model.n_layers=1", *TINY_GNO], log)
    text = log.read_text()
    assert code == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    assert [ln.split()[0:2] for ln in lines if ln.startswith("epoch")] == [["epoch", "1/2"],
                                                                         ["epoch", "2/2"]]
    reads = [ln for ln in lines if ln.startswith("reading meshes:")]
    assert 1 <= len(reads) <= 11 and reads[-1].startswith("reading meshes: 50/50 file (100%)")
    assert len(text) < 4000  # a few dozen lines, not kilobytes of redraws


def test_no_progress_silences_every_bar_the_mesh_reader_included(folder50, tmp_path):
    log = tmp_path / "quiet.log"
    _no_cache(folder50)
    code = _train(["train", "--data", str(folder50), "--inputs", "a", "--targets", "u",
                   "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--no-progress", "--set", "model.n_layers=1", *TINY_GNO],
                  log)
    text = log.read_text()
    assert code == 0, text
    assert "reading meshes" not in text and "fitting" not in text and "%" not in text
    assert sum(ln.startswith("epoch 1/1") for ln in text.splitlines()) == 1


def test_no_progress_of_one_in_process_command_does_not_leak(tmp_path, capsys):
    from graphop.cli import main

    assert main(["--no-progress", "info", str(REPO / "meshes" / "lshape.msh")]) == 0
    assert is_enabled()
