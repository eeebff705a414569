"""Shallow-water equations on the rotating sphere, spectral transform method (numpy + ducc0).

The setting of the spherical FNO benchmark (Bonev et al., "Spherical Fourier Neural Operators",
ICML 2023) and of the Williamson et al. (1992) test suite.

Equations (vector-invariant form, SI units, radius ``R``, rotation rate ``Omega`` about the unit
axis ``a`` (default the z axis), gravity ``g``; x the unit position vector):

    d zeta / dt  = -div((zeta + f) u)
    d delta / dt =  curl((zeta + f) u) - Laplace(phi + |u|^2 / 2)
    d phi / dt   = -div(phi u)

    f = 2 Omega (a . x),   u = grad(chi) + k x grad(psi),   Laplace psi = zeta,  Laplace chi = delta

with relative vorticity ``zeta = k . curl u``, divergence ``delta = div u``, geopotential
``phi = g h`` (h the fluid depth) and ``k`` the outward unit normal. Defaults are Earth-like:
R = 6.37122e6 m, Omega = 7.292e-5 1/s, g = 9.80616 m/s^2, mean depth 1e4 m (mean geopotential
phi_bar = g * 1e4 = 9.80616e4 m^2/s^2, gravity-wave speed sqrt(phi_bar) ~ 313 m/s, as in the SFNO
data set). No nondimensionalisation inside the solver; :func:`swe_sample` scales its output.

Space. Every prognostic field is a real, band-limited series in orthonormal spherical harmonics
(healpy/ducc0 storage: m = 0..L, then l = m..L, complex coefficients of m >= 0, the field being
sum_l a_l0 Y_l0 + 2 Re sum_{m>0} a_lm Y_lm). Triangular truncation at degree L = ``lmax``. The
Gauss-Legendre grid has nlat = ceil((3 L + 2) / 2) rings and nlon = 2 nlat >= 3 L + 2 longitudes,
the alias-free ("3/2-rule") grid for quadratic products: every product above is of two degree-L
fields (f is degree 1), its Galerkin projection onto degree <= L is computed *exactly* by the GL
quadrature (degree <= 3 L + 1 <= 2 nlat - 1), so there is no aliasing and no extra 2/3 filter.

Transforms (ducc0.sht, Reinecke): the inverse Laplacian is diagonal, Laplace Y_lm = -l(l+1)/R^2
Y_lm. The velocity comes from one spin-1 synthesis: in ducc0's convention a spin-1 field with
gradient ("E") coefficients E_lm and curl ("B") coefficients B_lm synthesises to the components
(e_theta, e_lambda) of grad(e) + k x grad(b) where e_lm = E_lm / sqrt(l(l+1)) (the same for b), so

    E_lm = sqrt(l(l+1)) chi_lm / R = -R delta_lm / sqrt(l(l+1)),
    B_lm = sqrt(l(l+1)) psi_lm / R = -R zeta_lm  / sqrt(l(l+1)),

and u_east = component along e_lambda, v_north = -component along e_theta (theta = colatitude).
Conversely a spin-1 analysis of a vector field A on the grid gives E, B with
div A = -sqrt(l(l+1)) E_lm / R and curl A = -sqrt(l(l+1)) B_lm / R: the divergence *and* curl of
(zeta + f) u come from one spin-1 analysis. One tendency evaluation costs 3 syntheses (spin-1 u, v;
zeta; phi) and 3 analyses (spin-1 (zeta + f) u; spin-1 phi u, gradient part only; |u|^2 / 2).

Time. Classical RK4 with a fixed step on the nonlinear tendencies, then the hyperdiffusion as an
exact integrating factor per step (Lie splitting):

    a_lm <- a_lm exp(-dt (l(l+1) / (L(L+1)))^p / tau)

applied to zeta, delta and phi (the mean phi_00 is untouched, l = 0), i.e. a (-Laplace)^p =
nabla^(2p) hyperdiffusion (default p = 4: nabla^8) whose e-folding time at the truncation
degree L is ``tau`` (default 3 hours). The default step is
dt = 1.5 R / (sqrt(L(L+1)) (sqrt(phi_bar) + 100 m/s)) (gravity waves plus a 100 m/s advection
bound, about half the RK4 stability limit 2.8 on the imaginary axis): 364 s at L = 63 with the
default depth.

Diagnostics (GL quadrature, exact for band-limited integrands of degree <= 2 nlat - 1, which
covers the cubic energy density):
mass = int phi dA / g (the fluid volume, m^3), total energy = int (phi |u|^2 / 2 + phi^2 / 2) dA
/ g (kinetic plus potential energy per unit density, m^5/s^2; dominated by the rest state, so
:meth:`ShallowWaterSolver.available_energy` also subtracts the rest-state part), potential
enstrophy = int g (zeta + f)^2 / (2 phi) dA. The continuous equations conserve all three; the
discrete system conserves mass exactly, energy up to time-stepping and hyperdiffusion.

Shapes:
    spectral state: :class:`SWEState` with ``coeffs`` [3, nalm] complex (phi, zeta, delta);
    grid fields [nlat, nlon] (ring 0 nearest the north pole, lon_j = 2 pi j / nlon);
    points [N, 3] (any nonzero vectors, normalised) -> values [N].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphop.errors import InputError

try:
    import ducc0
except ImportError as _exc:  # pragma: no cover - the dependency is declared in pyproject
    raise ImportError("graphop.data.swe needs ducc0: pip install ducc0") from _exc

__all__ = ["SWEState", "ShallowWaterSolver", "williamson_axis", "williamson2",
           "random_initial_state", "swe_sample", "SWE_SCALES", "SWE_FIELDS", "EARTH"]

#: Earth-like default constants (SI): radius, rotation rate, gravity, mean depth
EARTH = dict(radius=6.37122e6, omega=7.292e-5, gravity=9.80616, mean_depth=1.0e4)

#: output units of :func:`swe_sample`: the height anomaly in units of 1000 m, zeta in units of
#: |Omega|, delta in units of |Omega| / 10, u and v in units of 20 m/s (rms values of about 0.2 to
#: 2 at the defaults); "zeta" and "delta" are multiples of the solver's |Omega|
SWE_SCALES = dict(h=1000.0, zeta=1.0, delta=0.1, u=20.0, v=20.0)

#: fields :func:`swe_sample` can return
SWE_FIELDS = ("h", "zeta", "delta", "u", "v")

_EPS_GENERAL = 1e-12  # accuracy asked of ducc0.sht.synthesis_general (its floor is 2e-13)


@dataclass
class SWEState:
    """A spectral shallow-water state.

    Attributes:
        coeffs: [3, nalm] complex128 spherical-harmonic coefficients of (phi, zeta, delta) in the
            ducc0 storage of the solver's ``lmax`` (m-major, m >= 0; m = 0 entries real).
        time: simulated time in seconds.
    """
    coeffs: np.ndarray
    time: float = 0.0

    @property
    def phi(self) -> np.ndarray:
        """Geopotential coefficients [nalm]."""
        return self.coeffs[0]

    @property
    def zeta(self) -> np.ndarray:
        """Relative vorticity coefficients [nalm]."""
        return self.coeffs[1]

    @property
    def delta(self) -> np.ndarray:
        """Divergence coefficients [nalm]."""
        return self.coeffs[2]

    def copy(self) -> "SWEState":
        """An independent copy."""
        return SWEState(self.coeffs.copy(), float(self.time))


def williamson_axis(alpha: float) -> np.ndarray:
    """The rotation (and flow) axis of Williamson test case 2 with tilt ``alpha``:
    n = (-sin alpha, 0, cos alpha), so that f = 2 Omega (-cos lon cos lat sin alpha + sin lat cos
    alpha) as in Williamson et al. (1992), eq. (94)."""
    return np.array([-math.sin(alpha), 0.0, math.cos(alpha)])


def _as_points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"points must be an array [N, 3] of 3D coordinates, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise InputError("points contain NaN or inf")
    r = np.linalg.norm(p, axis=1)
    if (r == 0).any():
        raise InputError(f"points must be nonzero vectors (point {int(np.flatnonzero(r == 0)[0])} "
                         f"is the origin)")
    return p / r[:, None]


@dataclass
class ShallowWaterSolver:
    """Spectral-transform shallow-water solver on the sphere (see the module docstring).

    Args:
        lmax: triangular truncation degree L (>= 2).
        radius, omega, gravity: sphere radius (m), rotation rate (1/s, may be 0 or negative),
            gravity (m/s^2); Earth-like defaults (:data:`EARTH`).
        mean_depth: mean fluid depth (m) used by :func:`random_initial_state` and the default
            step (default 1e4 m: phi_bar = g * 1e4).
        rotation_axis: unit vector of the rotation axis (default z); f = 2 Omega (axis . x).
        hyperdiffusion_order: p in the (-Laplace)^p damping rate (l(l+1)/(L(L+1)))^p / tau
            (default 4: nabla^8; 0 disables the damping).
        hyperdiffusion_time: e-folding time tau (s) at degree L (default 3 hours; inf disables).
        dt: time step (s); default 1.5 R / (sqrt(L(L+1)) (sqrt(g mean_depth) + 100)).
        nlat: GL rings (default ceil((3 L + 2) / 2), alias-free; must be >= L + 1);
            nlon = 2 nlat.
        nthreads: threads for ducc0 (default 1).

    Attributes (derived): ``nlat``, ``nlon``, ``nalm``, ``ell`` [nalm] and ``em`` [nalm] (degree
    and order of each coefficient), ``theta`` [nlat] colatitudes, ``lon`` [nlon], ``area``
    [nlat, 1] quadrature area of one grid cell (sum over the grid = 4 pi R^2), ``coriolis`` grid
    f [nlat, nlon].
    """
    lmax: int = 63
    radius: float = EARTH["radius"]
    omega: float = EARTH["omega"]
    gravity: float = EARTH["gravity"]
    mean_depth: float = EARTH["mean_depth"]
    rotation_axis: tuple = (0.0, 0.0, 1.0)
    hyperdiffusion_order: int = 4
    hyperdiffusion_time: float = 3 * 3600.0
    dt: float | None = None
    nlat: int | None = None
    nthreads: int = 1
    # derived
    nlon: int = field(init=False)
    nalm: int = field(init=False)

    def __post_init__(self):
        if isinstance(self.lmax, bool) or not isinstance(self.lmax, (int, np.integer)):
            raise InputError(f"lmax must be an integer >= 2, got {self.lmax!r}")
        self.lmax = int(self.lmax)
        if self.lmax < 2:
            raise InputError(f"lmax must be >= 2, got {self.lmax}")
        for name in ("radius", "gravity", "mean_depth"):
            v = float(getattr(self, name))
            if not (np.isfinite(v) and v > 0):
                raise InputError(f"{name} must be a positive number, got {v}")
            setattr(self, name, v)
        if not np.isfinite(self.omega):
            raise InputError(f"omega must be finite, got {self.omega}")
        axis = np.asarray(self.rotation_axis, dtype=np.float64)
        if axis.shape != (3,) or not np.isfinite(axis).all() or np.linalg.norm(axis) == 0:
            raise InputError(f"rotation_axis must be a nonzero 3-vector, got {self.rotation_axis}")
        self.rotation_axis = tuple(axis / np.linalg.norm(axis))
        if self.hyperdiffusion_order < 0 or not self.hyperdiffusion_time > 0:
            raise InputError("hyperdiffusion_order must be >= 0 and hyperdiffusion_time > 0, got "
                             f"{self.hyperdiffusion_order} and {self.hyperdiffusion_time}")
        L = self.lmax
        if self.nlat is None:
            self.nlat = (3 * L + 3) // 2  # = ceil((3 L + 2) / 2)
        if self.nlat < L + 1:
            raise InputError(f"nlat must be >= lmax + 1 = {L + 1} for an exact GL analysis, "
                             f"got {self.nlat}")
        self.nlat = int(self.nlat)
        self.nlon = 2 * self.nlat
        if self.dt is None:
            self.dt = 1.5 * self.radius / (math.sqrt(L * (L + 1))
                                           * (math.sqrt(self.gravity * self.mean_depth) + 100.0))
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise InputError(f"dt must be positive, got {self.dt}")
        self.dt = float(self.dt)
        self.nalm = (L + 1) * (L + 2) // 2
        self.em = np.concatenate([np.full(L + 1 - m, m) for m in range(L + 1)])
        self.ell = np.concatenate([np.arange(m, L + 1) for m in range(L + 1)])
        ll1 = (self.ell * (self.ell + 1)).astype(np.float64)
        self._ll1 = ll1
        safe = np.where(ll1 > 0, ll1, 1.0)
        self._inv_ll1 = np.where(ll1 > 0, 1.0 / safe, 0.0)
        self._sq = np.sqrt(ll1)                       # sqrt(l(l+1))
        self._inv_sq = np.where(ll1 > 0, 1.0 / np.sqrt(safe), 0.0)
        self.theta = ducc0.misc.GL_thetas(self.nlat)
        self.lon = 2 * np.pi * np.arange(self.nlon) / self.nlon
        w = ducc0.sht.get_gridweights("GL", self.nlat) / self.nlon
        self.area = (self.radius**2 * w)[:, None]
        self.coriolis = 2.0 * self.omega * (self.grid_points() @ np.asarray(self.rotation_axis))

    # ----------------------------------------------------------------- transforms
    def grid_points(self) -> np.ndarray:
        """Unit 3D coordinates of the GL grid nodes, [nlat, nlon, 3]."""
        st, ct = np.sin(self.theta)[:, None], np.cos(self.theta)[:, None]
        return np.stack([st * np.cos(self.lon), st * np.sin(self.lon),
                         np.broadcast_to(ct, (self.nlat, self.nlon))], axis=-1)

    def synthesis(self, alm: np.ndarray) -> np.ndarray:
        """Grid values [nlat, nlon] of the real field with coefficients ``alm`` [nalm]."""
        return ducc0.sht.synthesis_2d(alm=np.ascontiguousarray(alm)[None], spin=0,
                                      lmax=self.lmax, geometry="GL", ntheta=self.nlat,
                                      nphi=self.nlon, nthreads=self.nthreads)[0]

    def analysis(self, grid: np.ndarray) -> np.ndarray:
        """Coefficients [nalm] of the projection onto degree <= lmax of a grid field [nlat, nlon]
        (GL quadrature: exact for band-limited fields of degree <= 2 nlat - 1 - lmax)."""
        g = np.asarray(grid, dtype=np.float64)
        if g.shape != (self.nlat, self.nlon):
            raise InputError(f"grid field must be [{self.nlat}, {self.nlon}], got {g.shape}")
        return ducc0.sht.analysis_2d(map=np.ascontiguousarray(g)[None], spin=0, lmax=self.lmax,
                                     geometry="GL", nthreads=self.nthreads)[0]

    def laplacian(self, alm: np.ndarray) -> np.ndarray:
        """Laplace Y_lm = -l(l+1) / R^2 Y_lm, applied to coefficients [nalm]."""
        return -self._ll1 / self.radius**2 * alm

    def inverse_laplacian(self, alm: np.ndarray) -> np.ndarray:
        """The zero-mean solution of Laplace psi = alm: psi_lm = -R^2 alm_lm / (l(l+1)),
        psi_00 = 0 (the l = 0 part of ``alm`` is ignored)."""
        return -self.radius**2 * self._inv_ll1 * alm

    def velocity(self, zeta: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid velocity (u east, v north) [nlat, nlon] of vorticity and divergence coefficients,
        u = grad chi + k x grad psi by one spin-1 synthesis (see the module docstring)."""
        eb = np.stack([-self.radius * self._inv_sq * delta, -self.radius * self._inv_sq * zeta])
        m = ducc0.sht.synthesis_2d(alm=eb, spin=1, lmax=self.lmax, geometry="GL",
                                   ntheta=self.nlat, nphi=self.nlon, nthreads=self.nthreads)
        return m[1], -m[0]

    def _div_curl(self, a_th, a_la, curl: bool = True):
        """Coefficients of div A and (if ``curl``) curl A of the grid vector field with
        components (e_theta, e_lambda), projected to degree <= lmax."""
        m = np.stack([a_th, a_la])
        if curl:
            eb = ducc0.sht.analysis_2d(map=m, spin=1, lmax=self.lmax, geometry="GL",
                                       nthreads=self.nthreads)
            s = -self._sq / self.radius
            return s * eb[0], s * eb[1]
        e = ducc0.sht.adjoint_synthesis(
            map=(m * self._ring_w[None, :, None]).reshape(2, -1), theta=self.theta,
            lmax=self.lmax, nphi=np.full(self.nlat, self.nlon, dtype=np.uintp),
            phi0=np.zeros(self.nlat), ringstart=np.arange(self.nlat, dtype=np.uintp) * self.nlon,
            spin=1, mode="GRAD_ONLY", nthreads=self.nthreads)
        return -self._sq / self.radius * e[0], None

    @property
    def _ring_w(self) -> np.ndarray:
        return self.area[:, 0] / self.radius**2

    # ----------------------------------------------------------------- states
    def from_grid(self, phi, zeta, delta=None, time: float = 0.0) -> SWEState:
        """The state whose fields are the degree-<=lmax projections of the grid fields
        (``delta`` default 0)."""
        d = np.zeros((self.nlat, self.nlon)) if delta is None else delta
        return SWEState(np.stack([self.analysis(phi), self.analysis(zeta), self.analysis(d)]),
                        float(time))

    def _check(self, state) -> SWEState:
        if not isinstance(state, SWEState):
            raise InputError(f"expected an SWEState, got {type(state).__name__}")
        if state.coeffs.shape != (3, self.nalm):
            raise InputError(f"state coefficients must be [3, {self.nalm}] for lmax={self.lmax}, "
                             f"got {state.coeffs.shape}")
        return state

    def to_grid(self, state: SWEState) -> tuple[np.ndarray, ...]:
        """(phi, zeta, delta, u, v) on the GL grid, each [nlat, nlon] (u east, v north, SI)."""
        c = self._check(state).coeffs
        u, v = self.velocity(c[1], c[2])
        return self.synthesis(c[0]), self.synthesis(c[1]), self.synthesis(c[2]), u, v

    def evaluate_at(self, state: SWEState, points) -> dict[str, np.ndarray]:
        """Exact spectral values of the fields at arbitrary points on the sphere.

        Args:
            state: the spectral state.
            points: [N, 3] coordinates (normalised to the unit sphere; lon = atan2(y, x),
                colatitude = arccos(z)).

        Returns:
            {"phi", "zeta", "delta", "u", "v"}: each [N] (SI; u east, v north). Evaluated with
            ducc0.sht.synthesis_general (NUFFT-based, relative accuracy ~1e-12); at a pole the
            local east/north directions are those of the limit along lon = atan2(y, x).
        """
        c = self._check(state).coeffs
        p = _as_points(points)
        loc = np.stack([np.arccos(np.clip(p[:, 2], -1.0, 1.0)),
                        np.mod(np.arctan2(p[:, 1], p[:, 0]), 2 * np.pi)], axis=1)
        loc = np.ascontiguousarray(loc)
        kw = dict(lmax=self.lmax, loc=loc, epsilon=_EPS_GENERAL, nthreads=self.nthreads)
        out = {}
        for name, a in zip(("phi", "zeta", "delta"), c):
            out[name] = ducc0.sht.synthesis_general(alm=np.ascontiguousarray(a)[None], spin=0,
                                                    **kw)[0]
        eb = np.stack([-self.radius * self._inv_sq * c[2], -self.radius * self._inv_sq * c[1]])
        m = ducc0.sht.synthesis_general(alm=eb, spin=1, **kw)
        out["u"], out["v"] = m[1], -m[0]
        return out

    # ----------------------------------------------------------------- dynamics
    def tendency(self, coeffs: np.ndarray) -> np.ndarray:
        """d/dt of (phi, zeta, delta) coefficients [3, nalm] (the nonlinear terms of the module
        docstring, without hyperdiffusion)."""
        phi_c, zeta_c, delta_c = coeffs
        u, v = self.velocity(zeta_c, delta_c)
        u_th, u_la = -v, u
        eta = self.synthesis(zeta_c) + self.coriolis
        phi = self.synthesis(phi_c)
        div_a, curl_a = self._div_curl(eta * u_th, eta * u_la)
        div_f, _ = self._div_curl(phi * u_th, phi * u_la, curl=False)
        ke = self.analysis(0.5 * (u * u + v * v))
        out = np.empty_like(coeffs)
        out[0] = -div_f
        out[1] = -div_a
        out[2] = curl_a - self.laplacian(phi_c + ke)
        return out

    def damping(self, dt: float) -> np.ndarray:
        """Hyperdiffusion factors exp(-dt (l(l+1)/(L(L+1)))^p / tau), [nalm]."""
        if self.hyperdiffusion_order == 0 or not np.isfinite(self.hyperdiffusion_time):
            return np.ones(self.nalm)
        L = self.lmax
        rate = (self._ll1 / (L * (L + 1))) ** self.hyperdiffusion_order / self.hyperdiffusion_time
        return np.exp(-dt * rate)

    def step(self, state: SWEState, n_steps: int = 1, dt: float | None = None) -> SWEState:
        """``n_steps`` RK4 steps of size ``dt`` (default the solver's), each followed by the
        hyperdiffusion factor. Returns a new state (time advanced by n_steps * dt)."""
        c = self._check(state).coeffs.copy()
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 0:
            raise InputError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        h = self.dt if dt is None else float(dt)
        if not (np.isfinite(h) and h > 0):
            raise InputError(f"dt must be positive, got {dt}")
        damp = self.damping(h)
        for _ in range(int(n_steps)):
            k1 = self.tendency(c)
            k2 = self.tendency(c + 0.5 * h * k1)
            k3 = self.tendency(c + 0.5 * h * k2)
            k4 = self.tendency(c + h * k3)
            c = (c + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)) * damp[None]
            if not np.isfinite(c).all():
                raise InputError(f"the integration blew up at t = {state.time + h:.6g} s: "
                                 f"reduce dt (now {h:.6g} s) or the flow amplitude")
        return SWEState(c, float(state.time + n_steps * h))

    def integrate(self, state: SWEState, duration: float) -> SWEState:
        """Advance by ``duration`` seconds (>= 0) in n = ceil(duration / dt) equal RK4 steps of
        size duration / n <= dt."""
        if not (np.isfinite(duration) and duration >= 0):
            raise InputError(f"duration must be >= 0, got {duration}")
        n = int(math.ceil(duration / self.dt - 1e-9))
        if n == 0:
            return self._check(state).copy()
        return self.step(state, n, duration / n)

    # ----------------------------------------------------------------- diagnostics
    def total_mass(self, state: SWEState) -> float:
        """int phi dA / g = sum_ij area_i phi_ij / g (the fluid volume, m^3)."""
        phi = self.synthesis(self._check(state).coeffs[0])
        return float((self.area * phi).sum() / self.gravity)

    def total_energy(self, state: SWEState) -> float:
        """int (phi |u|^2 / 2 + phi^2 / 2) dA / g (m^5/s^2), GL quadrature."""
        phi, _, _, u, v = self.to_grid(state)
        return float((self.area * (0.5 * phi * (u * u + v * v) + 0.5 * phi * phi)).sum()
                     / self.gravity)

    def available_energy(self, state: SWEState) -> float:
        """Total energy minus the energy of the fluid at rest with the same mass:
        int (phi |u|^2 / 2 + (phi - phi_mean)^2 / 2) dA / g (m^5/s^2; equal to
        total_energy - int phi_mean^2 / 2 dA / g because int (phi - phi_mean) dA = 0)."""
        phi, _, _, u, v = self.to_grid(state)
        dphi = phi - (self.area * phi).sum() / (4 * np.pi * self.radius**2)
        return float((self.area * (0.5 * phi * (u * u + v * v) + 0.5 * dphi * dphi)).sum()
                     / self.gravity)

    def potential_enstrophy(self, state: SWEState) -> float:
        """int g (zeta + f)^2 / (2 phi) dA (m^2/s^2), GL quadrature (approximate: not a
        polynomial integrand)."""
        phi, zeta, _, _, _ = self.to_grid(state)
        return float((self.area * self.gravity * (zeta + self.coriolis) ** 2 / (2 * phi)).sum())


def williamson2(solver: ShallowWaterSolver, alpha: float = 0.0,
                u0: float | None = None, gh0: float = 2.94e4) -> SWEState:
    """Williamson et al. (1992) test case 2: steady, nonlinear, zonal geostrophic flow.

    With n = :func:`williamson_axis` (alpha) and x the unit position,

        u = u0 (n x x) (solid-body rotation about n),   psi = -R u0 (n . x),
        zeta = 2 u0 (n . x) / R,
        phi = gh0 - (R Omega u0 + u0^2 / 2) (n . x)^2,  delta = 0,

    an exact steady solution when the solver rotates about n (f = 2 Omega (n . x)).

    Args:
        solver: a :class:`ShallowWaterSolver` whose ``rotation_axis`` is williamson_axis(alpha).
        alpha: tilt of the flow (and rotation) axis from the z axis (radians).
        u0: flow speed at the flow's equator (default 2 pi R / 12 days).
        gh0: the geopotential at the flow's poles' reference (default 2.94e4 m^2/s^2).

    Returns:
        the initial (and exact) state; its fields have degree <= 2, so the state is exact.
    """
    n = williamson_axis(alpha)
    if not np.allclose(np.asarray(solver.rotation_axis), n, atol=1e-12):
        raise InputError(f"Williamson case 2 with alpha={alpha} needs a solver rotating about "
                         f"williamson_axis(alpha) = {n.tolist()}, got {list(solver.rotation_axis)}")
    R, om = solver.radius, solver.omega
    if u0 is None:
        u0 = 2 * np.pi * R / (12 * 86400.0)
    nx = solver.grid_points() @ n
    phi = gh0 - (R * om * u0 + 0.5 * u0**2) * nx**2
    zeta = 2.0 * u0 / R * nx
    return solver.from_grid(phi, zeta)


def _grf_coeffs(solver: ShallowWaterSolver, rng: np.random.Generator, alpha: float, tau: float,
                rms: float, l_cut: int) -> np.ndarray:
    """A zero-mean isotropic random field with C_l ~ (l(l+1) + tau^2)^(-alpha) for
    1 <= l <= l_cut, scaled so its area-rms is exactly ``rms`` (Parseval:
    rms^2 = (sum_l a_l0^2 + 2 sum_{m>0} |a_lm|^2) / (4 pi))."""
    ell, em = solver.ell, solver.em
    c_l = np.where((ell >= 1) & (ell <= l_cut), (ell * (ell + 1) + tau**2) ** (-float(alpha)), 0.0)
    z = rng.standard_normal(solver.nalm) + 1j * rng.standard_normal(solver.nalm)
    z = np.where(em == 0, z.real, z / np.sqrt(2.0))
    a = np.sqrt(c_l) * z
    norm = np.sum(np.where(em == 0, 1.0, 2.0) * np.abs(a) ** 2) / (4 * np.pi)
    return a * (rms / np.sqrt(norm)) if norm > 0 else a


def random_initial_state(solver: ShallowWaterSolver, rng: np.random.Generator, *,
                         vorticity_rms: float = 0.2, alpha: float = 2.0, tau: float = 3.0,
                         l_cut: int | None = None, height_noise: float = 0.0,
                         balance: bool = True) -> SWEState:
    """A random, nonlinearly balanced initial state.

    Algorithm:

    1. relative vorticity zeta: an isotropic Gaussian random field on the sphere with angular
       power C_l ~ (l(l+1) + tau^2)^(-alpha) for 1 <= l <= l_cut (spectral law of the
       (-Laplace_{S^2} + tau^2)^(-alpha) covariance), rescaled so its area-rms is exactly
       ``vorticity_rms * Omega`` (|Omega| of the solver, or 7.292e-5 when omega = 0);
    2. divergence 0;
    3. phi = g * mean_depth + phi_b with phi_b the solution of the nonlinear balance equation
       Laplace phi_b = curl((zeta + f) u) - Laplace(|u|^2 / 2) (so d delta/dt = 0 at t = 0; for a
       solid-body flow this is the Williamson-2 height), if ``balance``;
    4. plus an unbalanced height anomaly g * eta, eta a GRF of the same law with area-rms
       ``height_noise`` metres (default 0).

    Args:
        solver: the solver (its lmax, constants and mean_depth).
        rng: numpy Generator.
        vorticity_rms: rms relative vorticity in units of Omega (default 0.2, i.e. ~1.5e-5 1/s:
            rms winds of about 30-50 m/s, height anomalies of about 600 m rms at the defaults).
        alpha, tau: spectrum exponent and shift (defaults 2.0, 3.0).
        l_cut: highest random degree (default lmax // 2, leaving the upper half of the spectrum
            for the cascade).
        height_noise: rms of the unbalanced height anomaly (m).
        balance: add the balanced height (default True).

    Returns:
        the state at time 0.

    Raises:
        InputError: bad parameters, or a state whose depth is not positive everywhere.
    """
    if vorticity_rms < 0 or height_noise < 0 or alpha < 0:
        raise InputError("vorticity_rms, height_noise and alpha must be non-negative, got "
                         f"{vorticity_rms}, {height_noise}, {alpha}")
    L = solver.lmax
    l_cut = max(1, L // 2) if l_cut is None else int(l_cut)
    if not 1 <= l_cut <= L:
        raise InputError(f"l_cut must be in 1..{L}, got {l_cut}")
    om = abs(solver.omega) if solver.omega != 0 else EARTH["omega"]
    coeffs = np.zeros((3, solver.nalm), dtype=np.complex128)
    coeffs[1] = _grf_coeffs(solver, rng, alpha, tau, vorticity_rms * om, l_cut)
    coeffs[0, 0] = solver.gravity * solver.mean_depth * np.sqrt(4 * np.pi)   # Y_00 = 1/sqrt(4 pi)
    if balance:
        t = solver.tendency(coeffs)[2]  # curl(eta u) - Laplace(phi_bar + K) = curl - Laplace K
        coeffs[0] += solver.inverse_laplacian(t)
    if height_noise > 0:
        coeffs[0] += solver.gravity * _grf_coeffs(solver, rng, alpha, tau, height_noise, l_cut)
    state = SWEState(coeffs, 0.0)
    hmin = solver.synthesis(coeffs[0]).min() / solver.gravity
    if hmin <= 0.05 * solver.mean_depth:
        raise InputError(f"the random state has a minimum depth {hmin:.4g} m <= 5% of the mean "
                         f"depth {solver.mean_depth:g} m: lower vorticity_rms or height_noise")
    return state


_SOLVER_KEYS = ("radius", "omega", "gravity", "mean_depth", "rotation_axis", "hyperdiffusion_order",
                "hyperdiffusion_time", "dt", "nlat", "nthreads")
_INIT_KEYS = ("vorticity_rms", "alpha", "tau", "l_cut", "height_noise", "balance")


def _scaled(solver: ShallowWaterSolver, vals: dict, phi_bar: float, names) -> dict:
    om = abs(solver.omega) if solver.omega != 0 else EARTH["omega"]
    scale = dict(SWE_SCALES, zeta=SWE_SCALES["zeta"] * om, delta=SWE_SCALES["delta"] * om)
    out = {}
    for nm in names:
        if nm == "h":
            out[nm] = (vals["phi"] - phi_bar) / solver.gravity / scale["h"]
        else:
            out[nm] = vals[nm] / scale[nm]
    return out


def swe_sample(rng: np.random.Generator, points, *, lmax: int = 63, horizon: float = 6 * 3600.0,
               n_frames: int = 1, spinup: float = 6 * 3600.0, fields=("h", "zeta", "delta"),
               **params) -> dict[str, np.ndarray]:
    """One sample of the shallow-water map state(t0) -> state(t0 + k horizon / n_frames).

    A :func:`random_initial_state` (balanced, random vorticity) is run for ``spinup`` seconds to
    t0, then to t0 + horizon, recording ``n_frames`` equally spaced frames; every field is
    evaluated exactly at ``points`` (:meth:`ShallowWaterSolver.evaluate_at`).

    Output scales (O(1) values at the defaults, :data:`SWE_SCALES`): ``h`` = height anomaly
    (phi - phi_bar) / g in units of 1000 m (phi_bar = g * mean_depth, the conserved mean);
    ``zeta`` in units of |Omega|; ``delta`` in units of |Omega| / 10; ``u``, ``v`` (east, north)
    in units of 20 m/s. At the defaults the rms values are about 0.8 (h), 0.2 (zeta), 0.35
    (delta; exactly 0 at t = 0 without spin-up), 1.4 (u, v).

    Args:
        rng: numpy Generator (the only source of randomness).
        points: [N, 3] coordinates on (or off, then projected to) the unit sphere.
        lmax: truncation degree (default 63; nlat = 96, nlon = 192).
        horizon: time from t0 to the last frame (s, >= 0; default 6 hours).
        n_frames: number of target frames (>= 1), at t0 + k horizon / n_frames, k = 1..n_frames.
        spinup: integration time before t0 (s, >= 0; default 6 hours, so that the input is a
            dynamically adjusted state with gravity waves and a nonzero divergence rather than
            the exactly balanced, divergence-free random field).
        fields: field names out of :data:`SWE_FIELDS` (default h, zeta, delta).
        **params: :class:`ShallowWaterSolver` arguments (radius, omega, gravity, mean_depth,
            rotation_axis, hyperdiffusion_order, hyperdiffusion_time, dt, nlat, nthreads) and
            :func:`random_initial_state` arguments (vorticity_rms, alpha, tau, l_cut,
            height_noise, balance).

    Returns:
        {"points": [N, 3] unit vectors, "times": [n_frames + 1] seconds since t0, and for every
        field F and frame k = 0..n_frames: "F{k}": [N]} -- F0 the input at t0, F1..F{n_frames} the
        targets ("h0", "zeta0", "delta0", "h1", "zeta1", "delta1" by default).
    """
    unknown = sorted(set(params) - set(_SOLVER_KEYS) - set(_INIT_KEYS))
    if unknown:
        raise InputError(f"unknown swe_sample parameter(s) {unknown}; allowed: "
                         f"{sorted(_SOLVER_KEYS + _INIT_KEYS)}")
    if not (np.isfinite(horizon) and horizon >= 0):
        raise InputError(f"horizon must be >= 0, got {horizon}")
    if not (np.isfinite(spinup) and spinup >= 0):
        raise InputError(f"spinup must be >= 0, got {spinup}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise InputError(f"n_frames must be an integer >= 1, got {n_frames!r}")
    fields = tuple(fields)
    bad = [f for f in fields if f not in SWE_FIELDS]
    if bad or not fields:
        raise InputError(f"fields must be a non-empty subset of {SWE_FIELDS}, got {fields}")
    pts = _as_points(points)
    solver = ShallowWaterSolver(lmax=lmax, **{k: params[k] for k in _SOLVER_KEYS if k in params})
    state = random_initial_state(solver, rng, **{k: params[k] for k in _INIT_KEYS if k in params})
    phi_bar = solver.gravity * solver.mean_depth
    state = solver.integrate(state, spinup)
    out = {"points": pts, "times": np.arange(n_frames + 1) * (horizon / n_frames)}
    for k in range(n_frames + 1):
        if k > 0:
            state = solver.integrate(state, horizon / n_frames)
        for nm, val in _scaled(solver, solver.evaluate_at(state, pts), phi_bar, fields).items():
            out[f"{nm}{k}"] = val
    return out
