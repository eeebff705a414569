"""Operator-level check for grid_transfer: DISCO applied to the binary coefficient and to a
smooth field on the nested 17 / 33 / 65 node grids against the same operator on 129 x 129,
for the three normalisations, at the auto radius of the 17 x 17 grid (r = 0.198). Prints the
relative difference over all rows, interior rows and rows whose ball is cut by the boundary.

    python experiments/grid_transfer/operator_check.py      (about 1 minute, 5 GB)
"""
import numpy as np
from graphop.layers.disco import disco_matrix
from graphop.layers.basis import KernelBasis
from graphop.models.supports import resolving_radius
def grid(n):
    x = np.linspace(0, 1, n); P = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    w = np.full((n, n), 1.0 / (n - 1) ** 2); w[0] /= 2; w[-1] /= 2; w[:, 0] /= 2; w[:, -1] /= 2
    return P, w.ravel()
P17, w17 = grid(17); r, _ = resolving_radius(P17); print("r", r)

# binary coefficient from a smooth random field thresholded, and a smooth field
def fields(P):
    s = np.sin(2.3 * P[:, 0] + 0.5) * np.cos(3.1 * P[:, 1] - 0.3) + 0.5 * np.sin(5 * P[:, 0] * P[:, 1])
    return {"smooth": s, "binary": np.where(s > 0.1, 12.0, 3.0)}
b = KernelBasis((3, 4), 2, "piecewise_linear")
ops = {}
for n in (17, 33, 65, 129):
    P, w = grid(n)
    for norm in ("quadrature", "mean", "l1"):
        A = disco_matrix(P, P, w, r, b, normalize=norm, same=True)
        for f, v in fields(P).items():
            ops[n, norm, f] = (A @ v).reshape(n, n, 9)
for f in ("smooth", "binary"):
    for norm in ("quadrature", "mean", "l1"):
        ref = ops[129, norm, f]
        row = []
        for n in (17, 33, 65):
            st = 128 // (n - 1)
            R = ref[::st, ::st]; Y = ops[n, norm, f]
            inner = np.zeros((n, n), bool); k = int(np.ceil(r * (n - 1))); inner[k:-k, k:-k] = True
            e_all = np.linalg.norm(Y - R) / np.linalg.norm(R)
            e_in = np.linalg.norm((Y - R)[inner]) / np.linalg.norm(R[inner])
            e_bd = np.linalg.norm((Y - R)[~inner]) / np.linalg.norm(R[~inner])
            row.append(f"{n}: all {e_all:.3f} in {e_in:.3f} bd {e_bd:.3f}")
        print(f, norm, " | ".join(row))
