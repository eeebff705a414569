"""Pictures of fields on meshes (matplotlib, Agg backend: no display needed).

* 2D triangle meshes: ``tripcolor`` with Gouraud shading (the P1 interpolant of nodal values);
* 2D point clouds: coloured scatter;
* 3D volume meshes: the lower half (cells below the middle z plane), its boundary faces
  coloured by the face mean of the field, so the cut shows interior values;
* 3D surfaces: the surface triangles coloured likewise; 3D point clouds: a 3D scatter;
* points on a sphere about the origin (meshes or clouds): a longitude-latitude map, the field
  interpolated linearly on a Delaunay triangulation of (lon, lat) (the whole sphere at a
  glance, which a 3D view shows only half of).

Vector fields are drawn as their Euclidean norm. One panel per field, each with its colour bar;
a mesh without fields is drawn as its edges.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_fields", "save_field_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _values(mesh, name):
    v = np.asarray(mesh.point_data[name], dtype=np.float64).reshape(mesh.n_points, -1)
    if v.shape[1] == 1:
        return v[:, 0], name
    return np.linalg.norm(v, axis=1), f"|{name}|"


def _draw_2d(ax, mesh, vals, label):
    pts = mesh.points
    tri = mesh.cells.get("triangle")
    if tri is None and "quad" in mesh.cells:
        q = mesh.cells["quad"]
        tri = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])
    if vals is None:
        if tri is not None:
            ax.triplot(pts[:, 0], pts[:, 1], tri, lw=0.3, color="k")
        else:
            ax.plot(pts[:, 0], pts[:, 1], ".", ms=1.5)
        return None
    if tri is not None:
        return ax.tripcolor(pts[:, 0], pts[:, 1], tri, vals, shading="gouraud", cmap="viridis")
    size = max(0.5, min(20.0, 4e4 / max(mesh.n_points, 1)))
    return ax.scatter(pts[:, 0], pts[:, 1], c=vals, s=size, cmap="viridis", linewidths=0)


def _draw_3d(ax, mesh, vals, label):
    from matplotlib import cm, colors
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from graphop.geometry.cells import boundary_facets

    pts = mesh.points
    faces = None
    if mesh.top_dim == 3:
        # clip away the cells above the middle z plane: the cut shows the interior values
        zmid = 0.5 * (pts[:, 2].min() + pts[:, 2].max())
        kept = {t: c[pts[c].mean(axis=1)[:, 2] <= zmid] for t, c in mesh.cells.items()
                if t in ("tetra", "hexahedron", "wedge", "pyramid")}
        kept = {t: c for t, c in kept.items() if len(c)} or mesh.cells
        facets = [f for f in boundary_facets(kept) if f.shape[1] == 3]
        faces = facets[0] if facets else None
    elif "triangle" in mesh.cells:
        faces = mesh.cells["triangle"]
    lo, hi = pts.min(0), pts.max(0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_zlim(lo[2], hi[2])
    ax.set_box_aspect(np.maximum(hi - lo, 1e-12))
    if faces is None:
        return ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=vals, s=2, cmap="viridis")
    if vals is None:
        coll = Poly3DCollection(pts[faces], facecolor="lightgray", edgecolor="k", lw=0.1)
        ax.add_collection3d(coll)
        return None
    norm = colors.Normalize(vmin=float(vals.min()), vmax=float(vals.max()))
    fc = cm.viridis(norm(vals[faces].mean(axis=1)))
    ax.add_collection3d(Poly3DCollection(pts[faces], facecolors=fc, edgecolor="none"))
    sm = cm.ScalarMappable(norm=norm, cmap="viridis")
    sm.set_array(vals)
    return sm


def _lonlat(mesh):
    """(lon, lat) in degrees when every point of ``mesh`` is on one sphere about the origin."""
    if mesh.dim != 3 or mesh.n_points < 4:
        return None
    r = np.linalg.norm(mesh.points, axis=1)
    if not (r.min() > 0 and r.max() - r.min() <= 1e-6 * np.median(r)):
        return None
    u = mesh.points / r[:, None]
    return np.degrees(np.arctan2(u[:, 1], u[:, 0])), np.degrees(np.arcsin(np.clip(u[:, 2], -1, 1)))


def _draw_map(ax, lonlat, vals):
    lon, lat = lonlat
    if vals is None:
        ax.plot(lon, lat, ".", ms=1, color="0.3")
        art = None
    else:
        art = ax.tripcolor(lon, lat, vals, shading="gouraud", cmap="viridis")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    return art


def plot_fields(mesh, fields=None, title: str | None = None, panel_size: float = 4.0):
    """A matplotlib Figure with one panel per field of ``mesh`` (a :class:`graphop.Mesh`).

    Args:
        mesh: the mesh with point_data.
        fields: names to draw (default: every point_data field; none: the mesh itself).
        title: figure title (default: the mesh's source).
        panel_size: inches per panel (default 4).
    """
    plt = _pyplot()
    names = list(mesh.point_data) if fields is None else list(fields)
    for name in names:
        if name not in mesh.point_data:
            from graphop.errors import DataError

            raise DataError(f"{mesh.source}: no point_data field {name!r}; available: "
                            f"{sorted(mesh.point_data) or 'none'}")
    panels = names or [None]
    ncol = min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    lonlat = _lonlat(mesh)
    three_d = mesh.dim == 3 and lonlat is None
    wide = 1.6 if lonlat is not None else 1.15
    fig = plt.figure(figsize=(panel_size * ncol * wide, panel_size * nrow))
    for k, name in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, k + 1, projection="3d" if three_d else None)
        vals, label = _values(mesh, name) if name is not None else (None, "mesh")
        if lonlat is not None:
            art = _draw_map(ax, lonlat, vals)
        else:
            art = (_draw_3d if three_d else _draw_2d)(ax, mesh, vals, label)
        if not three_d:
            ax.set_aspect("equal")
        ax.set_title(label)
        if art is not None:
            fig.colorbar(art, ax=ax, shrink=0.8)
    fig.suptitle(title if title is not None else str(mesh.source))
    fig.tight_layout()
    return fig


def save_field_plot(mesh, out, fields=None, dpi: int = 120, title: str | None = None) -> str:
    """Draw :func:`plot_fields` and save it as an image (PNG by extension); returns the path."""
    fig = plot_fields(mesh, fields, title=title)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        _pyplot().close(fig)
    return str(out)
