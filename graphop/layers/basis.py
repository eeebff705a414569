"""Kernel bases psi_l on the closed unit ball, for DISCO convolutions.

A DISCO kernel is a learned combination of fixed basis functions,
``kappa(z) = sum_l theta_l psi_l(z)`` with ``z = (y - x) / r`` in the unit ball (r = the layer's
physical radius). Every basis here is a product of a *radial hat* and a *direction function*:

* radial hats: nodes ``t_k = k / n_r`` (k = 0..n_r-1), ``hat_k(t) = max(0, 1 - n_r |t - t_k|)``.
  The last hat reaches 0 at t = 1, so every psi_l is continuous on R^d (zero on and outside the
  sphere |z| = 1): the discretised integral then converges at the quadrature's full rate,
  without the O(h) error a jump at the cut-off would add.
* direction functions a_m(u), u = z / |z|:
    - d = 2, "piecewise_linear": periodic hats in the angle phi with nodes 2 pi m / n_a
      (n_a sectors; n_a = 1 means the constant function);
    - d = 3 (volumes and surfaces embedded in 3D): low-order real harmonics,
      n_a = 1: {1}; n_a = 4: {1, u_x, u_y, u_z}; n_a = 9: those plus
      {u_x u_y, u_y u_z, u_z u_x, u_x^2 - u_y^2, 3 u_z^2 - 1};
    - d = 1: n_a = 1: {1}; n_a = 2: {1, u} (u = sign of z).
* the centre hat (k = 0) is not multiplied by direction functions: at z = 0 the direction is
  undefined, and a direction-dependent function with hat_0(0) = 1 would be discontinuous there.

Exact count: ``L = 1 + (n_r - 1) * n_a``. kernel_shape (3, 4) gives L = 9 (one centre function
plus 2 rings x 4 sectors); the isotropic basis is n_a = 1, L = n_r. Basis index
``l = 0`` for the centre, ``l = 1 + (k - 1) n_a + m`` for ring k >= 1 and direction m.

The paper's DISCO layer (Liu-Schiaffini et al., ICML 2024, arXiv 2402.16845; Ocampo et al.
2023 for the spherical version) uses the same hat construction.

Shapes:
    z: [E, d] offsets scaled by 1/r; :meth:`KernelBasis.evaluate` returns sparse triples
    (edge [K], l [K], value [K]) with K <= 4 E (2D) -- never a dense [E, L] array;
    :meth:`KernelBasis.dense` gives [E, L] for tests and baselines.
"""
from __future__ import annotations

import math

import numpy as np

from graphop.errors import InputError

__all__ = ["KernelBasis", "make_basis", "BASES"]

BASES = ("piecewise_linear", "isotropic")
_CHUNK = 1 << 17


def _direction_functions(u: np.ndarray, n_a: int) -> np.ndarray:
    """Dense direction functions for d in (1, 3): u [E, d] unit vectors -> [E, n_a]."""
    d = u.shape[1]
    one = np.ones(len(u))
    if n_a == 1:
        return one[:, None]
    if d == 1:
        return np.stack([one, u[:, 0]], axis=1)
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    funcs = [one, x, y, z]
    if n_a == 9:
        funcs += [x * y, y * z, z * x, x * x - y * y, 3 * z * z - 1]
    return np.stack(funcs, axis=1)


class KernelBasis:
    """Radial hats x direction functions on the unit ball (see the module docstring).

    Args:
        kernel_shape: ``(n_r, n_a)``: radial hats (>= 1) and direction functions per ring
            (2D: any n_a >= 1 angular sectors; 3D: 1, 4 or 9; 1D: 1 or 2). An int means
            ``(n_r, 1)``, the isotropic basis.
        dim: dimension d of the offsets (1, 2 or 3).
        name: "piecewise_linear" or "isotropic" (forces n_a = 1).

    Attributes:
        n_basis: the exact number L = 1 + (n_r - 1) * n_a of basis functions.
    """

    def __init__(self, kernel_shape=(3, 4), dim: int = 2, name: str = "piecewise_linear"):
        if name not in BASES:
            raise InputError(f"unknown basis {name!r}; choose one of {BASES}")
        if isinstance(kernel_shape, (int, np.integer)):
            kernel_shape = (int(kernel_shape), 1)
        kernel_shape = tuple(int(k) for k in kernel_shape)
        if name == "isotropic":
            kernel_shape = (kernel_shape[0], 1)
        if len(kernel_shape) != 2 or kernel_shape[0] < 1 or kernel_shape[1] < 1:
            raise InputError(f"kernel_shape must be (n_r >= 1, n_a >= 1), got {kernel_shape}")
        if dim not in (1, 2, 3):
            raise InputError(f"basis dimension must be 1, 2 or 3, got {dim}")
        n_r, n_a = kernel_shape
        allowed = {1: (1, 2), 3: (1, 4, 9)}.get(dim)
        if allowed is not None and n_a not in allowed:
            raise InputError(f"in {dim}D the number of direction functions must be one of "
                             f"{allowed}, got kernel_shape {kernel_shape}")
        self.name, self.dim, self.kernel_shape = name, dim, kernel_shape
        self.n_r, self.n_a = n_r, n_a
        self.n_basis = 1 + (n_r - 1) * n_a

    @property
    def key(self) -> tuple:
        """Hashable identity used in operator cache keys."""
        return (self.name, self.dim, self.kernel_shape)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, z: np.ndarray):
        """Sparse values of all basis functions at offsets ``z`` [E, d] (scaled to the unit
        ball). Returns ``(edge, l, value)`` int64/int64/float64 arrays in edge order, zeros
        dropped (so offsets with |z| >= 1 contribute nothing)."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise InputError(f"offsets must have shape [E, {self.dim}], got {z.shape}")
        if len(z) > _CHUNK:   # cache-sized chunks: 2-3x faster than whole-array temporaries
            parts = [self._evaluate(z[a:a + _CHUNK]) for a in range(0, len(z), _CHUNK)]
            return (np.concatenate([p[0] + a for p, a in zip(parts, range(0, len(z), _CHUNK))]),
                    np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
        return self._evaluate(z)

    def _evaluate(self, z: np.ndarray):
        n_r, n_a = self.n_r, self.n_a
        t = np.sqrt(np.einsum("ed,ed->e", z, z))
        s = t * n_r
        k0 = np.floor(s).astype(np.int64)
        f = s - k0
        # the two radial pieces: ring k0 with weight 1 - f, ring k0 + 1 with weight f
        w0 = np.where(k0 < n_r, 1.0 - f, 0.0)
        w1 = np.where(k0 + 1 < n_r, f, 0.0)
        if n_a == 1:
            ls = np.stack([k0, k0 + 1], axis=1)
            vs = np.stack([w0, w1], axis=1)
        else:
            m, a = self._directions(z, t)                  # [E, q] each
            centre = (k0 == 0)[:, None]
            first = np.zeros(m.shape, dtype=bool)
            first[:, 0] = True
            # ring k0: the centre function (k0 == 0, first slot only) or ring k0 >= 1
            l0 = np.where(centre, 0, 1 + (k0[:, None] - 1) * n_a + m)
            v0 = np.where(centre, np.where(first, w0[:, None], 0.0), w0[:, None] * a)
            l1 = 1 + k0[:, None] * n_a + m
            v1 = w1[:, None] * a
            ls = np.concatenate([l0, l1], axis=1)
            vs = np.concatenate([v0, v1], axis=1)
        e, c = np.nonzero(vs)
        return e.astype(np.int64), ls[e, c], vs[e, c]

    def _directions(self, z: np.ndarray, t: np.ndarray):
        """Direction function indices and values per edge: ([E, q] int, [E, q] float)."""
        n_a = self.n_a
        if self.dim == 2:
            phi = np.arctan2(z[:, 1], z[:, 0]) * (n_a / (2 * math.pi))   # in sector units
            m0 = np.floor(phi).astype(np.int64)
            g = phi - m0
            m0 = np.mod(m0, n_a)
            m = np.stack([m0, np.where(m0 + 1 == n_a, 0, m0 + 1)], axis=1)
            return m, np.stack([1.0 - g, g], axis=1)
        u = z / np.where(t > 0, t, 1.0)[:, None]
        a = _direction_functions(u, n_a)
        return np.broadcast_to(np.arange(n_a), a.shape), a

    def entries_per_offset(self) -> float:
        """The mean number of nonzero basis functions at an offset drawn uniformly from the unit
        ball (deterministic Monte Carlo, 4096 points): how many nonzeros each neighbour pair
        adds to a DISCO matrix on a uniform mesh. At most 2 (isotropic), 4 (2D sectors) or
        2 n_a (1D/3D)."""
        if not hasattr(self, "_entries"):
            rng = np.random.default_rng(0)
            z = rng.normal(size=(4096, self.dim))
            z *= (rng.uniform(size=(4096, 1)) ** (1.0 / self.dim)
                  / np.linalg.norm(z, axis=1, keepdims=True))
            self._entries = max(len(self.evaluate(z)[0]) / len(z), 1.0)
        return self._entries

    def dense(self, z: np.ndarray) -> np.ndarray:
        """All basis functions at ``z`` as a dense [E, L] array (tests, baselines)."""
        e, l, v = self.evaluate(z)
        out = np.zeros((len(z), self.n_basis))
        np.add.at(out, (e, l), v)
        return out

    def nonnegative(self) -> np.ndarray:
        """[L] bool: ``psi_l >= 0`` on the whole ball. True for the centre, the radial-only
        (n_a = 1) and the 2D sector functions; in 1D and 3D only the constant direction function
        of each ring (the others, ``u``, ``u_x``, ``u_y``, ... change sign)."""
        out = np.ones(self.n_basis, dtype=bool)
        if self.n_a > 1 and self.dim != 2:
            for k in range(1, self.n_r):
                out[2 + (k - 1) * self.n_a: 1 + k * self.n_a] = False
        return out

    # ------------------------------------------------------------------ integrals
    def radial_integrals(self, g) -> np.ndarray:
        """``int_0^1 hat_k(t) g(t) dt`` for every radial hat k, [n_r]: Gauss-Legendre (8 nodes)
        on each linear piece of the hat, exact for polynomial g of degree <= 14. ``g(t) =
        t^(d-1)`` gives the planar measure, ``sin(r t) / r`` the geodesic one on a sphere."""
        n_r = self.n_r
        xg, wg = np.polynomial.legendre.leggauss(8)
        radial = np.zeros(n_r)
        for k in range(n_r):
            for lo, hi in ((k - 1, k), (k, k + 1)):
                lo, hi = max(lo, 0) / n_r, min(hi, n_r) / n_r
                if hi <= lo:
                    continue
                tt = 0.5 * (hi - lo) * xg + 0.5 * (hi + lo)
                hat = np.maximum(0.0, 1.0 - n_r * np.abs(tt - k / n_r))
                radial[k] += 0.5 * (hi - lo) * np.sum(wg * hat * g(tt))
        return radial

    def l1_norms(self) -> np.ndarray:
        """``int_{|z| <= 1} |psi_l(z)| dz`` for every l, [L] (used for normalisation)."""
        d, n_r, n_a = self.dim, self.n_r, self.n_a
        radial = self.radial_integrals(lambda t: t ** (d - 1))
        sphere = {1: 2.0, 2: 2 * math.pi, 3: 4 * math.pi}[d]
        if n_a == 1:
            angular = np.array([sphere])
        elif d == 2:
            angular = np.full(n_a, 2 * math.pi / n_a)
        elif d == 1:
            angular = np.array([2.0, 2.0])
        else:  # |a_m| on the sphere: Gauss-Legendre in cos(theta) x uniform in phi
            ct, wt = np.polynomial.legendre.leggauss(200)
            ph = (np.arange(400) + 0.5) * (2 * math.pi / 400)
            st = np.sqrt(1 - ct**2)
            u = np.stack([np.outer(st, np.cos(ph)).ravel(), np.outer(st, np.sin(ph)).ravel(),
                          np.repeat(ct, len(ph))], axis=1)
            w = np.repeat(wt, len(ph)) * (2 * math.pi / len(ph))
            angular = (np.abs(_direction_functions(u, n_a)) * w[:, None]).sum(axis=0)
        norms = np.empty(self.n_basis)
        norms[0] = radial[0] * sphere
        for k in range(1, n_r):
            norms[1 + (k - 1) * n_a: 1 + k * n_a] = radial[k] * angular
        return norms

    def __repr__(self) -> str:
        return (f"KernelBasis(name={self.name!r}, dim={self.dim}, kernel_shape={self.kernel_shape},"
                f" n_basis={self.n_basis})")


def make_basis(basis, kernel_shape, dim: int) -> KernelBasis:
    """A :class:`KernelBasis` from a name (or pass one through after checking ``dim``)."""
    if isinstance(basis, KernelBasis):
        if basis.dim != dim:
            raise InputError(f"basis is {basis.dim}D but the points are {dim}D")
        return basis
    return KernelBasis(kernel_shape, dim, basis)
