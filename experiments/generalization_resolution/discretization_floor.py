"""How far apart the reference solutions of two resolutions are: the 2000-point FEM solution,
interpolated linearly on its own triangles, against the 8000- and 32000-point solutions of the
same input functions (relative L2 with the fine mesh's quadrature weights). A model trained on
2000-point solutions cannot be expected to match the fine references better than this.

Run after ``graphop experiment generalization_resolution`` (it reads the test sets that run
generated under datasets/experiments/):

    python experiments/generalization_resolution/discretization_floor.py [DATASETS_DIR]
"""
import glob
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.tri import LinearTriInterpolator, Triangulation

from graphop.io import read_mesh


def test_set(root: Path, points: int, seed: int = 1000) -> list[str]:
    for d in sorted(root.glob(f"darcy-gen-{points}-*")):
        man = json.loads((d / "manifest.json").read_text())
        if man["seed"] == seed:
            return sorted(glob.glob(str(d / "train" / "*.vtu")))
    raise SystemExit(f"no {points}-point test set with seed {seed} under {root}: run the experiment first")


def main(root: Path) -> None:
    coarse = test_set(root, 2000)
    for n in (8000, 32000):
        errs = []
        for c, f in zip(coarse, test_set(root, n)):
            mc, mf = read_mesh(c), read_mesh(f)
            tri = Triangulation(mc.points[:, 0], mc.points[:, 1], mc.cells["triangle"])
            u = LinearTriInterpolator(tri, mc.point_data["u"])(mf.points[:, 0], mf.points[:, 1])
            ok = ~np.ma.getmaskarray(u)
            w, uf = mf.weights[ok], mf.point_data["u"][ok]
            errs.append(np.sqrt((w * (np.asarray(u)[ok] - uf) ** 2).sum() / (w * uf ** 2).sum()))
        print(f"2000-point solution vs the {n}-point one: relative L2 mean {np.mean(errs):.4f} "
              f"(min {min(errs):.4f}, max {max(errs):.4f}), {len(errs)} samples")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("datasets/experiments"))
