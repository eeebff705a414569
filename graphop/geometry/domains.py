"""Reusable 2D domains and their meshes (plus a ball and a sphere for 3D tests), as pure functions.

A :class:`Domain` is a planar straight-line graph: boundary vertices and segments, one named
group per boundary part (``segment`` markers, 1-based), a point inside every hole, and the exact
area of the continuous domain. :func:`domain_boundary` discretises the boundary of a named
domain at spacing ``h``; :func:`mesh_domain` meshes it with Shewchuk's Triangle (quality
Delaunay, minimum angle 30 degrees, boundary segments never split) to about ``n_points`` points.

Domains (``name``: parameters with defaults):

* ``square``: ``width=1, height=1`` -- [0, w] x [0, h]; groups bottom, right, top, left.
* ``disk``: ``radius=1`` -- centred at 0; group boundary. Area pi r^2.
* ``annulus``: ``r_inner=0.5, r_outer=1``; groups outer, inner. Area pi (R^2 - r^2).
* ``lshape``: ``size=2`` -- [0, s]^2 minus [s/2, s]^2; groups bottom, right, reentrant (the two
  edges at the re-entrant corner), top, left. Area 3 s^2 / 4.
* ``holes``: ``radius=1, holes=((-0.45, 0, 0.25), (0.35, 0.35, 0.2), (0.3, -0.4, 0.2))`` --
  disk minus circular holes (cx, cy, r); groups outer, holes.
* ``airfoil``: ``thickness=0.12, aoa=0, box=(-1.5, 3.0, -1.5, 1.5), refine=4`` -- a NACA
  00tt airfoil of chord 1 (leading edge at 0, closed trailing edge, y_t = 5 t (0.2969 sqrt(x)
  - 0.1260 x - 0.3516 x^2 + 0.2843 x^3 - 0.1036 x^4)) rotated by ``aoa`` degrees about the
  quarter chord, in a channel; the airfoil boundary is ``refine`` times finer than ``h``;
  groups inlet, outlet, walls, airfoil.

Options of :func:`mesh_domain` for generalisation experiments: ``perturb`` (irregular point
placement: interior points moved by up to ``perturb`` times their nearest-neighbour distance,
then re-triangulated), ``structured="tri"|"quad"`` (regular grids of the square).

Every mesh carries its boundary segments as ``line`` cells with physical tags
(``cell_data["gmsh:physical"]``), the group names in ``field_data`` (gmsh convention
``name -> [tag, dim]``) and the named ``boundary_sets``, so it writes to ``.msh`` with physical
groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from graphop.geometry.mesh import Mesh
from graphop.errors import InputError

__all__ = ["Domain", "DOMAINS", "domain_boundary", "mesh_domain", "naca4_symmetric",
           "structured_square", "mesh_ball", "mesh_sphere"]


@dataclass(frozen=True)
class Domain:
    """A polygonal domain ready for Triangle.

    Attributes:
        name: domain name.
        vertices: [P, 2] boundary vertices.
        segments: [S, 2] boundary segments (vertex indices).
        markers: [S] boundary group tag (1-based) of each segment.
        groups: tag -> group name.
        holes: [H, 2] one point inside every hole.
        measure: exact area of the continuous domain (curved boundaries exact).
    """

    name: str
    vertices: np.ndarray
    segments: np.ndarray
    markers: np.ndarray
    groups: dict
    holes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    measure: float = float("nan")

    @property
    def polygon_area(self) -> float:
        """Area enclosed by the discretised boundary (shoelace over oriented segments)."""
        a, b = self.vertices[self.segments[:, 0]], self.vertices[self.segments[:, 1]]
        return float(abs(0.5 * np.sum(a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1])))


class _Builder:
    """Collects closed loops (outer loop counter-clockwise, holes clockwise)."""

    def __init__(self):
        self.vertices, self.segments, self.markers = [], [], []
        self.n = 0

    def loop(self, pts: np.ndarray, markers) -> None:
        """A closed loop through ``pts`` [P, 2]; segment i (pts[i] -> pts[i+1]) gets
        ``markers[i]`` (or one marker for all)."""
        k = len(pts)
        idx = self.n + np.arange(k)
        self.vertices.append(np.asarray(pts, dtype=np.float64))
        self.segments.append(np.column_stack([idx, np.roll(idx, -1)]))
        self.markers.append(np.broadcast_to(np.asarray(markers), (k,)).astype(np.int64))
        self.n += k

    def build(self, name, groups, holes, measure) -> Domain:
        holes = np.asarray(holes, dtype=np.float64).reshape(-1, 2)
        return Domain(name, np.concatenate(self.vertices), np.concatenate(self.segments),
                      np.concatenate(self.markers), dict(groups), holes, float(measure))


def _subdivide(corners: np.ndarray, h: float, markers):
    """Points along a closed polygon with spacing <= h (corners kept), and segment markers."""
    pts, marks = [], []
    markers = np.broadcast_to(np.asarray(markers), (len(corners),))
    for i, a in enumerate(corners):
        b = corners[(i + 1) % len(corners)]
        k = max(1, math.ceil(np.linalg.norm(b - a) / h))
        t = np.arange(k)[:, None] / k
        pts.append(a + t * (b - a))
        marks.append(np.full(k, markers[i]))
    return np.concatenate(pts), np.concatenate(marks)


def _circle(center, r: float, h: float, clockwise: bool = False) -> np.ndarray:
    k = max(8, math.ceil(2 * math.pi * r / h))
    t = 2 * math.pi * np.arange(k) / k
    if clockwise:
        t = -t
    return np.column_stack([center[0] + r * np.cos(t), center[1] + r * np.sin(t)])


def naca4_symmetric(n_side: int, thickness: float = 0.12, aoa: float = 0.0) -> np.ndarray:
    """Closed NACA 00tt airfoil of chord 1, [2 n_side, 2] counter-clockwise points starting at
    the trailing edge, with cosine spacing (fine at both edges), rotated by ``aoa`` degrees
    (nose up) about the quarter chord."""
    beta = np.linspace(0.0, math.pi, n_side + 1)
    x = 0.5 * (1 + np.cos(beta))  # 1 -> 0: trailing edge to leading edge
    yt = 5 * thickness * (0.2969 * np.sqrt(x) - 0.1260 * x - 0.3516 * x**2 + 0.2843 * x**3
                          - 0.1036 * x**4)
    upper = np.column_stack([x, yt])[:-1]  # TE -> just before LE
    lower = np.column_stack([x[::-1], -yt[::-1]])[:-1]  # LE -> just before TE
    pts = np.concatenate([upper, lower])
    a = -math.radians(aoa)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (pts - [0.25, 0.0]) @ rot.T + [0.25, 0.0]


def _square(h, width=1.0, height=1.0):
    b = _Builder()
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=float)
    b.loop(*_subdivide(corners, h, [1, 2, 3, 4]))
    return b.build("square", {1: "bottom", 2: "right", 3: "top", 4: "left"}, [], width * height)


def _disk(h, radius=1.0):
    b = _Builder()
    b.loop(_circle((0, 0), radius, h), 1)
    return b.build("disk", {1: "boundary"}, [], math.pi * radius**2)


def _annulus(h, r_inner=0.5, r_outer=1.0):
    if not 0 < r_inner < r_outer:
        raise InputError(f"annulus needs 0 < r_inner < r_outer, got {r_inner}, {r_outer}")
    b = _Builder()
    b.loop(_circle((0, 0), r_outer, h), 1)
    b.loop(_circle((0, 0), r_inner, h, clockwise=True), 2)
    return b.build("annulus", {1: "outer", 2: "inner"}, [[0, 0]],
                   math.pi * (r_outer**2 - r_inner**2))


def _lshape(h, size=2.0):
    s, m = float(size), float(size) / 2
    b = _Builder()
    corners = np.array([[0, 0], [s, 0], [s, m], [m, m], [m, s], [0, s]])
    b.loop(*_subdivide(corners, h, [1, 2, 3, 3, 4, 5]))
    groups = {1: "bottom", 2: "right", 3: "reentrant", 4: "top", 5: "left"}
    return b.build("lshape", groups, [], 0.75 * s * s)


_DEFAULT_HOLES = ((-0.45, 0.0, 0.25), (0.35, 0.35, 0.2), (0.3, -0.4, 0.2))


def _holes(h, radius=1.0, holes=_DEFAULT_HOLES):
    b = _Builder()
    b.loop(_circle((0, 0), radius, h), 1)
    for cx, cy, r in holes:
        b.loop(_circle((cx, cy), r, h, clockwise=True), 2)
    area = math.pi * (radius**2 - sum(r * r for _, _, r in holes))
    return b.build("holes", {1: "outer", 2: "holes"}, [(cx, cy) for cx, cy, _ in holes], area)


def _airfoil(h, thickness=0.12, aoa=0.0, box=(-1.5, 3.0, -1.5, 1.5), refine=4.0):
    x0, x1, y0, y1 = box
    b = _Builder()
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)
    b.loop(*_subdivide(corners, h, [3, 2, 3, 1]))  # bottom wall, outlet, top wall, inlet
    n_side = max(16, math.ceil(1.1 / (h / refine)))
    foil = naca4_symmetric(n_side, thickness, aoa)[::-1]  # clockwise: a hole
    b.loop(foil, 4)
    fine = naca4_symmetric(4096, thickness, aoa)
    foil_area = 0.5 * abs(np.sum(fine[:, 0] * np.roll(fine[:, 1], -1)
                                 - np.roll(fine[:, 0], -1) * fine[:, 1]))
    a = -math.radians(aoa)  # (0.3, 0) lies inside the airfoil; rotate it with the airfoil
    hole = [0.25 + 0.05 * math.cos(a), 0.05 * math.sin(a)]
    return b.build("airfoil", {1: "inlet", 2: "outlet", 3: "walls", 4: "airfoil"}, [hole],
                   (x1 - x0) * (y1 - y0) - foil_area)


#: name -> boundary builder ``f(h, **params) -> Domain``
DOMAINS = {"square": _square, "disk": _disk, "annulus": _annulus, "lshape": _lshape,
           "holes": _holes, "airfoil": _airfoil}


def domain_boundary(name: str, h: float, **params) -> Domain:
    """The :class:`Domain` ``name`` with its boundary discretised at spacing ``h``."""
    if name not in DOMAINS:
        raise InputError(f"unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}")
    if not h > 0:
        raise InputError(f"boundary spacing h must be positive, got {h}")
    return DOMAINS[name](float(h), **params)


def _triangulate(dom: Domain, opts: str, vertices=None):
    import triangle

    tri_in = {"vertices": dom.vertices if vertices is None else vertices,
              "segments": dom.segments, "segment_markers": dom.markers[:, None]}
    if len(dom.holes):
        tri_in["holes"] = dom.holes
    out = triangle.triangulate(tri_in, opts)
    return (out["vertices"], out["triangles"], out["segments"],
            out["segment_markers"].ravel().astype(np.int64))


def _to_mesh(dom: Domain, pts, tris, segs, marks, source) -> Mesh:
    dom_tag = max(dom.groups) + 1
    field_data = {name: np.array([tag, 1]) for tag, name in dom.groups.items()}
    field_data["domain"] = np.array([dom_tag, 2])
    sets = {dom.groups[t]: np.unique(segs[marks == t]) for t in dom.groups}
    cell_data = {"gmsh:physical": [np.full(len(tris), dom_tag), marks]}
    return Mesh(pts, {"triangle": tris, "line": segs}, cell_data=cell_data,
                field_data=field_data, boundary_sets=sets, source=source)


def mesh_domain(name: str, n_points: int = 1000, seed: int = 0, *, perturb: float = 0.0,
                structured: str | None = None, **params) -> Mesh:
    """Mesh the domain ``name`` with about ``n_points`` points (within ~10%).

    Args:
        name: a key of :data:`DOMAINS`.
        n_points: target number of points (default 1000).
        seed: random seed of the perturbation (the unperturbed mesh is deterministic).
        perturb: move interior points by up to ``perturb`` x their nearest-neighbour distance
            (uniform in a disk) and re-triangulate (constrained Delaunay, no new points).
            0 <= perturb < 0.5; default 0.
        structured: ``"tri"`` or ``"quad"`` for a regular grid (square only); default None.
        **params: domain parameters (see the module docstring).

    Returns:
        :class:`Mesh` with ``triangle`` (or ``quad``) cells, ``line`` boundary cells with
        physical tags, and named ``boundary_sets``.
    """
    if not 0 <= perturb < 0.5:
        raise InputError(f"perturb must be in [0, 0.5), got {perturb}")
    if n_points < 4:
        raise InputError(f"n_points must be at least 4, got {n_points}")
    source = f"<{name} domain, {n_points} points>"
    if structured is not None:
        if name != "square":
            raise InputError(f"structured grids exist for the square only, not {name!r}")
        n = max(2, round(math.sqrt(n_points)))
        return structured_square(n, quad=(structured == "quad"), perturb=perturb, seed=seed,
                                 **params)
    dom0 = domain_boundary(name, 1.0, **params)
    h = math.sqrt(2 * dom0.measure / (math.sqrt(3) * n_points))
    for _ in range(4):  # Triangle's count differs from the estimate: correct the spacing
        dom = domain_boundary(name, h, **params)
        # fixed-point area: Triangle's switch parser reads "1e-05" as the switches 1, e, ...
        pts, tris, segs, marks = _triangulate(dom, f"pq30Ya{math.sqrt(3) / 4 * h * h:.17f}")
        ratio = len(pts) / n_points
        if abs(ratio - 1) < 0.05:
            break
        h *= math.sqrt(ratio)
    if perturb > 0:
        pts, tris, segs, marks = _perturb(dom, pts, segs, perturb, seed)
    return _to_mesh(dom, pts, tris, segs, marks, source)


def _perturb(dom: Domain, pts, segs, perturb: float, seed: int):
    """Jitter interior points, then constrained Delaunay of the same points ('p', no 'q').
    A point that would leave the domain (used by no triangle) keeps its position."""
    from graphop.geometry.neighbors import knn_distances

    rng = np.random.default_rng(seed)
    interior = np.ones(len(pts), dtype=bool)
    interior[segs.ravel()] = False
    r = perturb * knn_distances(pts, 1)[:, 0] * np.sqrt(rng.random(len(pts)))
    t = 2 * math.pi * rng.random(len(pts))
    step = np.where(interior[:, None], r[:, None] * np.column_stack([np.cos(t), np.sin(t)]), 0)
    for _ in range(5):
        new = pts + step
        out = _triangulate(dom, "pY", vertices=new)
        used = np.zeros(len(new), dtype=bool)
        used[out[1].ravel()] = True
        if len(out[0]) == len(pts) and used.all():
            return out
        step[~used[: len(pts)]] = 0.0
    return _triangulate(dom, "pY", vertices=pts)


def structured_square(n: int, quad: bool = False, perturb: float = 0.0, seed: int = 0,
                      width: float = 1.0, height: float = 1.0) -> Mesh:
    """Regular n x n grid of [0, width] x [0, height]: quads, or each quad split into two
    triangles along its (0, 2) diagonal. ``perturb`` < 0.5 jitters interior nodes by up to
    ``perturb`` x grid spacing / 2 (connectivity kept, cells stay convex)."""
    if n < 2:
        raise InputError(f"n must be at least 2, got {n}")
    x, y = np.meshgrid(np.linspace(0, width, n), np.linspace(0, height, n), indexing="xy")
    pts = np.column_stack([x.ravel(), y.ravel()])
    idx = np.arange(n * n).reshape(n, n)  # idx[j, i]: row j (y), column i (x)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    if quad:
        cells = {"quad": np.column_stack([a, b, c, d])}
    else:
        cells = {"triangle": np.concatenate([np.column_stack([a, b, c]),
                                             np.column_stack([a, c, d])])}
    sides = [idx[0, :], idx[:, -1], idx[-1, ::-1], idx[::-1, 0]]  # bottom, right, top, left
    segs = np.concatenate([np.column_stack([s[:-1], s[1:]]) for s in sides])
    marks = np.repeat(np.arange(1, 5), n - 1)
    if perturb > 0:
        rng = np.random.default_rng(seed)
        interior = np.ones(n * n, dtype=bool)
        interior[segs.ravel()] = False
        hx, hy = width / (n - 1), height / (n - 1)
        jitter = (rng.random((n * n, 2)) - 0.5) * perturb * np.array([hx, hy])
        pts = pts + np.where(interior[:, None], jitter, 0.0)
    top = next(iter(cells))
    groups = {1: "bottom", 2: "right", 3: "top", 4: "left"}
    field_data = {name: np.array([tag, 1]) for tag, name in groups.items()}
    field_data["domain"] = np.array([5, 2])
    cells["line"] = segs
    return Mesh(pts, cells, cell_data={"gmsh:physical": [np.full(len(cells[top]), 5), marks]},
                field_data=field_data,
                boundary_sets={groups[t]: np.unique(segs[marks == t]) for t in groups},
                source=f"<structured {top} grid {n}x{n}>")


def mesh_ball(n_points: int = 1000, seed: int = 0, radius: float = 1.0) -> Mesh:
    """Tetrahedral mesh of a ball: Delaunay (scipy) of ~``n_points`` points, a Fibonacci
    lattice on the sphere plus jittered lattice points inside. Its volume converges to
    4/3 pi r^3 at second order in the spacing (the hull of the surface points)."""
    from scipy.spatial import Delaunay

    h = (4 / 3 * math.pi / n_points) ** (1 / 3) * radius * 1.1
    n_surf = max(12, round(4 * math.pi * radius**2 / (h * h * math.sqrt(3) / 2)))
    i = np.arange(n_surf) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n_surf), math.pi * (1 + 5**0.5) * i
    surf = radius * np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                                     np.cos(phi)])
    g = np.arange(-radius, radius + h, h)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    grid = grid + (rng.random(grid.shape) - 0.5) * 0.2 * h
    grid = grid[np.linalg.norm(grid, axis=1) < radius - 0.5 * h]
    pts = np.concatenate([surf, grid])
    tets = Delaunay(pts).simplices.astype(np.int64)
    from graphop.geometry.cells import cell_measures

    neg = cell_measures(pts, "tetra", tets, signed=True) < 0  # orient all positively
    tets[neg] = tets[neg][:, [1, 0, 2, 3]]
    return Mesh(pts, {"tetra": tets}, source=f"<ball, {len(pts)} points>")


def mesh_sphere(subdivisions: int = 3, radius: float = 1.0) -> Mesh:
    """Triangulated sphere surface (icosphere: an icosahedron subdivided ``subdivisions``
    times, vertices projected to the sphere; 10 * 4^s + 2 points). Its area converges to
    4 pi r^2 at second order in the spacing."""
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(np.asarray(ico.vertices), {"triangle": np.asarray(ico.faces)},
                source=f"<icosphere, {len(ico.vertices)} points>")
