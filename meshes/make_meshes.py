"""Recipe of the example meshes in this folder (deterministic; run from the repository root):

    .venv/bin/python meshes/make_meshes.py

Writes lshape.msh, disk_holes.vtu, airfoil.msh, torus.obj and ball.vtu next to this script.
See meshes/README.md for what each one is.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from graphop.geometry.domains import mesh_ball, mesh_domain
from graphop.io import read_mesh, write_mesh
from graphop.geometry.mesh import Mesh

HERE = Path(__file__).resolve().parent


def lshape() -> Mesh:
    """[0,2]^2 minus [1,2]^2; field u = r^(2/3) sin(2 theta / 3) about the re-entrant corner
    (1, 1), the classic singular harmonic function of the L-shaped domain."""
    m = mesh_domain("lshape", 800, size=2.0)
    d = m.points - 1.0
    # angle measured from the edge x > 1 (y = 1) counter-clockwise through the domain
    theta = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * math.pi)
    theta = np.where(theta < 0.5 * math.pi, theta + 2 * math.pi, theta) - 0.5 * math.pi
    r = np.linalg.norm(d, axis=1)
    return m.with_point_data(u=r ** (2 / 3) * np.sin(2 * theta / 3))


def disk_holes() -> Mesh:
    """Unit disk minus three circular holes; fields u = sin(pi x) cos(pi y) and its gradient."""
    m = mesh_domain("holes", 1500)
    x, y = m.points.T
    u = np.sin(math.pi * x) * np.cos(math.pi * y)
    grad = math.pi * np.column_stack([np.cos(math.pi * x) * np.cos(math.pi * y),
                                      -np.sin(math.pi * x) * np.sin(math.pi * y)])
    return m.with_point_data(u=u, grad_u=grad)


def airfoil() -> Mesh:
    """NACA 0012 at 4 degrees angle of attack in the channel [-1.5, 3] x [-1.5, 1.5]."""
    return mesh_domain("airfoil", 1000, aoa=4.0)


def torus() -> Mesh:
    """Torus surface, major radius 1, minor radius 0.35 (exact area 4 pi^2 R r = 13.817)."""
    import trimesh

    t = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=48,
                               minor_sections=20)
    return Mesh(np.asarray(t.vertices), {"triangle": np.asarray(t.faces)}, source="torus")


def ball() -> Mesh:
    """Unit ball, tetrahedra from scipy's Delaunay; field u = x y z + |x|^2."""
    m = mesh_ball(1500, seed=0)
    x, y, z = m.points.T
    return m.with_point_data(u=x * y * z + (m.points**2).sum(1))


def main() -> None:
    jobs = [("lshape.msh", lshape, {"version": "4.1"}),
            ("disk_holes.vtu", disk_holes, {}),
            ("airfoil.msh", airfoil, {"version": "2.2"}),
            ("torus.obj", torus, {}),
            ("ball.vtu", ball, {})]
    for name, make, kw in jobs:
        path = HERE / name
        mesh = make()
        write_mesh(path, mesh, **kw)
        back = read_mesh(path)
        print(f"{name:15s} {back.n_points:6d} points  measure {back.measure:.6g}  "
              f"{path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
