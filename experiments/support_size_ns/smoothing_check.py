"""How much does the differential branch move between nested torus clouds, and what does a
larger smoothing radius buy? No training: a DifferentialConv (the default kernel gradient of
the mollified field, triangulated torus quadrature) with fixed random weights, applied to

* the Navier-Stokes inputs w0 of the support_size_ns full test set (16,384-point Monte Carlo
  clouds) and to a nested random quarter of each cloud (4096 points, the training density,
  weights 1/P): the relative change of the output at the shared points (mesh dependence);
* a smooth periodic field f = sin(2 pi x) cos(4 pi y) + 0.5 cos(6 pi x + 2 pi y) on the same
  4096-point clouds: the relative error of the raw gradient estimate D(M_rho f) against the
  exact gradient of f (the bias a larger radius costs).

The smoothing radius is c times the `auto` DISCO radius of the full configuration (0.0472),
c in 1 (the default: the smoothing radius follows the DISCO radius), 1.5, 2 and 3.

    python experiments/support_size_ns/smoothing_check.py [N_SAMPLES]
"""
import sys
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

R_AUTO = 0.0472


def _nested(data, idx):
    return Data(pos=data.pos[idx], weight=torch.full((len(idx),), 1.0 / len(idx),
                                                     dtype=data.pos.dtype),
                periodic=data.periodic)


def _field(pos):
    x, y = pos[:, 0], pos[:, 1]
    tp = 2 * np.pi
    f = np.sin(tp * x) * np.cos(2 * tp * y) + 0.5 * np.cos(3 * tp * x + tp * y)
    gx = tp * np.cos(tp * x) * np.cos(2 * tp * y) - 1.5 * tp * np.sin(3 * tp * x + tp * y)
    gy = -2 * tp * np.sin(tp * x) * np.sin(2 * tp * y) - 0.5 * tp * np.sin(3 * tp * x + tp * y)
    return f, np.stack([gx, gy], 1)


def main():
    from graphop.experiments import runner
    from graphop.layers.differential import DifferentialConv

    n_samples = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    torch.set_num_threads(1)
    repo = Path(__file__).resolve().parents[2]
    cfg = runner.load_experiment(repo / "experiments" / "support_size_ns")
    _, _, sets, _ = runner.experiment_data(cfg, repo / "datasets" / "experiments")
    fine = sets["fine_4x"][:n_samples]
    rng = np.random.default_rng(0)
    print(f"{n_samples} samples; smoothing radius = c x {R_AUTO}")
    print("c     change 16384 -> nested 4096 (w0)   gradient error at 4096 (smooth f)")
    for c in (1.0, 1.5, 2.0, 3.0):
        torch.manual_seed(0)
        conv = DifferentialConv(1, 8, bias=False, smoothing_radius=c * R_AUTO).double()
        change, bias = [], []
        for d in fine:
            d = Data(pos=d.pos.double(), weight=d.weight.double(), x=d.x.double(),
                     periodic=d.periodic)
            idx = torch.as_tensor(np.sort(rng.choice(len(d.pos), len(d.pos) // 4,
                                                     replace=False)))
            sub = _nested(d, idx)
            x = d.x[:, :1]
            with torch.no_grad():
                y_fine = conv(x, d)[idx]
                y_sub = conv(x[idx], sub)
            change.append(float((y_fine - y_sub).norm() / y_fine.norm()))
            f, g = _field(sub.pos.numpy())
            op, fold = conv.gradient_operator(sub)
            est = op.matmul(torch.as_tensor(f)[:, None]).view(-1, 2).numpy()
            bias.append(float(np.linalg.norm(est - g) / np.linalg.norm(g)))
        print(f"{c:<5} {np.mean(change):.4f}                              {np.mean(bias):.4f}")


if __name__ == "__main__":
    main()
