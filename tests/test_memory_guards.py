"""Guards before memory runs out: sizes are estimated and refused with one line, under a real
address-space limit (RLIMIT_AS in a subprocess), before anything large is allocated."""
import os
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from graphop.errors import MemoryLimitError
from graphop.geometry.neighbors import count_pairs, radius_neighbors
from graphop.layers.basis import KernelBasis
from graphop.layers.disco import disco_matrix
from graphop.memory import available_memory, check_memory

LIMIT = 3 << 30  # 3 GiB of address space: torch alone maps about 0.9 GB


def _limited(code: str, *args, limit: int = LIMIT, timeout: int = 300):
    """Run ``python -c code args`` with RLIMIT_AS = limit; (returncode, stderr, seconds)."""
    pre = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", pre + code, *args], capture_output=True,
                       text=True, env=env, timeout=timeout)
    return p.returncode, p.stderr.strip(), time.time() - t0


_CLI = "import sys; from graphop.cli import main; sys.exit(main(sys.argv[1:]))"


def test_available_memory_sees_the_address_space_limit():
    code, err, _ = _limited("from graphop.memory import available_memory\n"
                            "import sys; b, w = available_memory(); print(b, w, file=sys.stderr)")
    assert code == 0, err
    have, where = err.split(" ", 1)
    assert 0 < int(have) < LIMIT and "address-space limit" in where
    with pytest.raises(MemoryLimitError, match=r"x would need about 1e\+03 PB of memory, but "
                                               r"only .* is available \(.*\); try less"):
        check_memory(1e18, "x", "try less")
    check_memory(1000, "x")  # fits: no error
    assert available_memory()[0] > 0


def test_generate_a_billion_points_is_refused_in_seconds(tmp_path):
    out = tmp_path / "big"
    code, err, secs = _limited(_CLI, "generate", "darcy", "--n", "1", "--points", "1000000000",
                               "--out", str(out), "--workers", "1")
    assert code == 2, err[-2000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphop: error: generate darcy"), err
    assert re.search(r"would need about [\d.]+ TB of memory, but only [\d.]+ [MG]B is available "
                     r"\(the address-space limit \(ulimit -v\)\); use --points \d+ or fewer", err)
    assert not out.exists() and secs < 120
    # the suggested size is accepted by the same guard (it is the largest that fits)
    n_fit = int(re.search(r"--points (\d+)", err).group(1))
    from graphop.data.generate import _WORKER_BASE, sample_bytes

    assert sample_bytes("darcy", n_fit, {}) < LIMIT < sample_bytes("darcy", 2 * n_fit, {}) \
        + _WORKER_BASE


def _square(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 2))


def test_count_pairs_matches_the_radius_search():
    p, q = _square(3000, 1), _square(500, 2)
    for r in (0.02, 0.1, 0.5):
        exact = radius_neighbors(p, None, r).nnz
        assert count_pairs(p, None, r, sample=len(p)) == exact
        assert count_pairs(p, None, r, sample=400) == pytest.approx(exact, rel=0.1)
        assert count_pairs(q, p, r, sample=len(q)) == radius_neighbors(q, p, r).nnz
    # on a torus the count uses the minimum image, as the search does
    assert (count_pairs(p, None, 0.3, periodic=1.0, sample=len(p))
            == radius_neighbors(p, None, 0.3, periodic=1.0).nnz)


def test_disco_radius_that_covers_the_mesh_is_refused_with_a_radius_that_fits():
    """The case of issue #16 (--set model.disco_radius=100 on 15k points), under 3 GiB."""
    code = ("import sys, re, numpy as np\n"
            "from graphop.layers.disco import disco_matrix\n"
            "from graphop.layers.basis import KernelBasis\n"
            "from graphop.errors import MemoryLimitError\n"
            "p = np.random.default_rng(0).uniform(size=(15000, 2)); w = np.full(15000, 1/15000)\n"
            "b = KernelBasis((3, 4), 2)\n"
            "try:\n"
            "    disco_matrix(p, p, w, 100.0, b, same=True)\n"
            "except MemoryLimitError as e:\n"
            "    msg = str(e)\n"
            "print(msg, file=sys.stderr)\n"
            "r = float(re.search(r'at most ([0-9.e-]+) would fit', msg).group(1))\n"
            "A = disco_matrix(p, p, w, r, b, same=True)\n"
            "print('built', A.nnz, file=sys.stderr)\n")
    rc, err, secs = _limited(code)
    assert rc == 0, err[-2000:]
    lines = err.splitlines()
    msg = next(ln for ln in lines if ln.startswith("the DISCO operator with radius 100 on 15000 x "
                                                   "15000 points ("))
    built = lines[-1]
    assert re.search(r"nonzeros\) would need about [\d.]+ GB of memory, but only [\d.]+ [MG]B "
                     r"is available \(the address-space limit \(ulimit -v\)\); a radius of at "
                     r"most [\d.]+ would fit", msg), msg
    assert built.startswith("built ") and int(built.split()[1]) > 15000


def test_a_ball_holding_most_of_the_mesh_warns_and_builds_the_right_operator():
    p = _square(400, 3)
    w = np.full(400, 1 / 400)
    b = KernelBasis((3, 4), 2)
    with pytest.warns(UserWarning, match=r"DISCO radius 0.9: a ball holds \d+ of the 400 points "
                                         r"on average \(\d+%\), so the local operator is nearly "
                                         r"dense"):
        A = disco_matrix(p, p, w, 0.9, b, same=True)
    # the operator itself is the one the definition gives: row sums of the centre function
    nb = radius_neighbors(p, None, 0.9)
    assert A.shape == (400 * b.n_basis, 400) and A.nnz > 3 * nb.nnz / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a local radius: no warning
        disco_matrix(p, p, w, 0.1, b, same=True)


def test_train_with_a_huge_disco_radius_is_one_line(tmp_path):
    from graphop.io import write_mesh
    from trainkit import TINY_GNO, make_mesh

    for split in ("train", "test"):
        (tmp_path / "d" / split).mkdir(parents=True)
        write_mesh(tmp_path / "d" / split / "m.vtu", make_mesh(15000, 1 if split == "test" else 0))
    args = ["--threads", "1", "train", "--data", str(tmp_path / "d"), "--inputs", "a",
            "--targets", "u", "--model", "local_gno", "--epochs", "1", "--batch-size", "1",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run"),
            "--set", "val_fraction=0", *TINY_GNO, "--set", "model.disco_radius=100"]
    rc, err, _ = _limited(_CLI, *args, limit=4 << 30)
    assert rc == 2, err[-3000:]
    last = err.splitlines()[-1]
    # 15000 output points x the input points it integrates over (the cells' quadrature points)
    assert "Traceback" not in err and last.startswith("graphop: error: the DISCO operator with "
                                                      "radius 100 on 15000 x "), err
    assert "a radius of at most" in last and not (tmp_path / "run" / "last.pt").exists()


def test_out_of_memory_anywhere_in_the_cli_is_one_line(tmp_path):
    """A real allocation failure (torch's CPU allocator under RLIMIT_AS) is one line, exit 2."""
    from trainkit import write_dataset

    data = write_dataset(tmp_path / "data", n_train=2, n_test=1, n=40)
    rc, err, _ = _limited(_CLI, "train", "--data", str(data), "--inputs", "a", "--targets", "u",
                          "--model", "local_gno", "--epochs", "1", "--no-progress",
                          "--out", str(tmp_path / "run"), "--set", "model.width=64",
                          "--set", "model.latent_shape=[8192,8192]",
                          "--set", "model.modes=[4000,4000]")
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("graphop: error: out of memory (") and "too large" in err
