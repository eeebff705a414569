"""Mesh file I/O: round trips through every registered format, gmsh in both versions and
modes with physical groups, STL merging, point clouds, and every bad input through the CLI."""
import subprocess
import sys
import textwrap

import meshio
import numpy as np
import pytest

from graphop import Mesh, MeshError
from graphop.cli import main
from graphop.geometry.domains import mesh_ball, mesh_domain
from graphop.errors import MeshReadError
from graphop.io import MeshWriteError, detect_format, formats, read_mesh, write_mesh


@pytest.fixture(scope="module")
def planar():
    """L-shape with line cells in 5 physical groups, a scalar and a 2-vector field."""
    m = mesh_domain("lshape", 120)
    perm = np.random.default_rng(0).permutation(len(m.cells["line"]))  # tags out of order
    tags = m.cell_data["gmsh:physical"]
    m = Mesh(m.points, {"triangle": m.cells["triangle"], "line": m.cells["line"][perm]},
             cell_data={"gmsh:physical": [tags[0], tags[1][perm]]}, field_data=m.field_data,
             boundary_sets=m.boundary_sets)
    x, y = m.points.T
    return m.with_point_data(u=np.sin(x) * y, v=np.column_stack([x * y, x - y]))


def _cell_set(mesh, ref, ctype):
    """Cells of ``mesh`` as a set of sorted tuples of the matching point indices of ``ref``
    (independent of point numbering)."""
    from scipy.spatial import cKDTree

    dist, to_ref = cKDTree(ref.points).query(mesh.points)
    assert dist.max() < 1e-6
    return {tuple(sorted(c)) for c in to_ref[mesh.cells[ctype]].tolist()}


ALL = [(f.name, f.extensions[0]) for f in formats()]


@pytest.mark.parametrize("name,ext", ALL)
def test_round_trip_every_format(tmp_path, planar, name, ext):
    fmt = detect_format("x" + ext)
    path = tmp_path / f"mesh{ext}"
    if not fmt.point_data and fmt.writer is not None:
        with pytest.raises(MeshWriteError, match="cannot store point_data fields"):
            write_mesh(path, planar)
    if fmt.writer is None:  # read-only format: the file comes from meshio
        with pytest.raises(MeshWriteError, match="can be read but not written"):
            write_mesh(path, planar, drop_fields=True)
        from graphop.io.volume import mesh_to_meshio

        meshio.write(path, mesh_to_meshio(planar), file_format=fmt.aliases[0])
    else:
        write_mesh(path, planar, drop_fields=not fmt.point_data)
    back = read_mesh(path)
    tol = 1e-6 if name == "stl" else 1e-12  # STL stores float32
    if fmt.family == "pointcloud":
        assert back.cells == {}
        np.testing.assert_allclose(back.points, planar.points, atol=tol)
        np.testing.assert_allclose(back.weights, planar.weights, rtol=1e-12)
    elif name == "stl":  # corners merged in order of first appearance
        assert back.n_points == planar.n_points
        assert _cell_set(back, planar, "triangle") == _cell_set(planar, planar, "triangle")
    else:
        np.testing.assert_allclose(back.points, planar.points, atol=tol)
        assert np.array_equal(back.cells["triangle"], planar.cells["triangle"])
        if fmt.family == "volume":  # lower-dimensional cells survive, as boundary sets
            assert np.array_equal(back.cells["line"], planar.cells["line"])
            assert np.array_equal(back.boundary, planar.boundary)
    assert back.measure == pytest.approx(planar.measure, rel=1e-6)
    assert back.weights.sum() == pytest.approx(3.0, rel=1e-6)
    if fmt.point_data:
        assert set(back.point_data) == {"u", "v"}
        for k in ("u", "v"):
            np.testing.assert_allclose(back.point_data[k], planar.point_data[k], rtol=1e-12,
                                       atol=1e-14)
    else:
        assert back.point_data == {}


@pytest.mark.parametrize("version", ["2.2", "4.1"])
@pytest.mark.parametrize("binary", [False, True])
def test_gmsh_versions_modes_and_physical_groups(tmp_path, planar, version, binary):
    path = tmp_path / "l.msh"
    write_mesh(path, planar, version=version, binary=binary)
    head = path.read_bytes()[:40].decode(errors="replace")
    assert f"{version} {int(binary)} 8" in head
    back = read_mesh(path)
    assert back.hash == planar.hash
    assert set(back.boundary_sets) == {"bottom", "right", "reentrant", "top", "left"}
    for k, v in planar.boundary_sets.items():
        assert np.array_equal(np.sort(back.boundary_sets[k]), np.sort(v)), k
    np.testing.assert_array_equal(back.point_data["v"], planar.point_data["v"])
    # the re-entrant edges are the segments x = 1 (y >= 1) and y = 1 (x >= 1)
    p = back.points[back.boundary_sets["reentrant"]]
    assert np.all(np.isclose(p[:, 0], 1) | np.isclose(p[:, 1], 1))
    assert np.all(p >= 1 - 1e-12)


@pytest.mark.parametrize("version", ["2.2", "4.1"])
@pytest.mark.parametrize("binary", [False, True])
def test_gmsh_tetra_mesh_and_point_cloud(tmp_path, version, binary):
    ball = mesh_ball(200)
    ball = ball.with_point_data(t=np.arange(ball.n_points, dtype=float))
    write_mesh(tmp_path / "b.msh", ball, version=version, binary=binary)
    back = read_mesh(tmp_path / "b.msh")
    assert back.hash == ball.hash and np.array_equal(back.point_data["t"], ball.point_data["t"])
    pc = Mesh.from_points(np.random.default_rng(1).random((30, 3)), weights=np.full(30, 0.5))
    write_mesh(tmp_path / "p.msh", pc, version=version, binary=binary)
    back = read_mesh(tmp_path / "p.msh")
    assert back.cells == {} and np.array_equal(back.weights, pc.weights)


def test_gmsh22_ascii_written_by_meshio_is_read(tmp_path):
    """meshio's writer prints data values as np.float64(...) under numpy 2; such files read."""
    path = tmp_path / "m.msh"
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]])
    mm = meshio.Mesh(pts, [("triangle", np.array([[0, 1, 2], [1, 3, 2]]))],
                     point_data={"u": np.array([0.5, 1.5, 2.5, 3.5])},
                     cell_data={"gmsh:physical": [np.array([1, 1])],
                                "gmsh:geometrical": [np.array([1, 1])]})
    meshio.write(path, mm, file_format="gmsh22", binary=False)
    assert b"np.float64(" in path.read_bytes()  # the writer bug this reader works around
    back = read_mesh(path)
    np.testing.assert_array_equal(back.point_data["u"], [0.5, 1.5, 2.5, 3.5])
    assert back.measure == pytest.approx(1.0)


def test_gmsh41_in_gmsh_style_with_node_blocks_per_entity(tmp_path):
    """A file laid out as gmsh itself writes it: nodes grouped by the entity they lie on."""
    text = textwrap.dedent("""\
        $MeshFormat
        4.1 0 8
        $EndMeshFormat
        $PhysicalNames
        2
        1 7 "wall"
        2 8 "fluid"
        $EndPhysicalNames
        $Entities
        0 1 1 0
        1 0 0 0 1 0 0 1 7 0
        1 0 0 0 1 1 0 1 8 0
        $EndEntities
        $Nodes
        2 4 1 4
        1 1 0 2
        1
        2
        0 0 0
        1 0 0
        2 1 0 2
        3
        4
        0 1 0
        1 1 0
        $EndNodes
        $Elements
        2 3 1 3
        1 1 1 1
        1 1 2
        2 1 2 2
        2 1 2 3
        3 2 4 3
        $EndElements
        """)
    path = tmp_path / "g.msh"
    path.write_text(text)
    m = read_mesh(path)
    assert m.measure == pytest.approx(1.0) and m.cells["triangle"].shape == (2, 3)
    assert list(m.boundary_sets) == ["wall"]
    assert np.array_equal(m.points[m.boundary_sets["wall"]], [[0, 0], [1, 0]])


@pytest.mark.parametrize("binary", [True, False])
def test_stl_merges_coincident_corners(tmp_path, binary):
    sphere = mesh_domain("disk", 200)
    write_mesh(tmp_path / "d.stl", sphere, binary=binary)
    import trimesh

    raw = trimesh.load(tmp_path / "d.stl", process=False)  # the file: corners per facet
    assert len(raw.vertices) == 3 * len(sphere.cells["triangle"])
    back = read_mesh(tmp_path / "d.stl")
    assert back.n_points == sphere.n_points
    assert back.boundary.sum() == sphere.boundary.sum()  # connected again: same boundary
    assert back.weights.sum() == pytest.approx(sphere.measure, rel=1e-6)


def test_point_clouds(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.random((2000, 3))
    np.savez(tmp_path / "a.npz", points=pts, temperature=pts[:, 0], vel=pts * 2)
    pc = read_mesh(tmp_path / "a.npz")
    # k-NN estimate of the unit cube's volume (overestimated near the faces)
    assert pc.top_dim == 0 and pc.weights.sum() == pytest.approx(1.0, rel=0.3)
    assert pc.point_data["vel"].shape == (2000, 3)
    assert read_mesh(tmp_path / "a.npz", measure=1.0).weights.sum() == pytest.approx(1.0)
    np.savez(tmp_path / "b.npz", points=pts[:, :2], weights=np.full(2000, 2e-3), measure=1.0)
    assert read_mesh(tmp_path / "b.npz").weights.sum() == pytest.approx(1.0)
    (tmp_path / "c.csv").write_text("x,y,p,vel[0],vel[1]\n0,0,1,2,3\n1,0,4,5,6\n0,1,7,8,9\n")
    c = read_mesh(tmp_path / "c.csv", measure=0.5)
    assert c.dim == 2 and c.point_data["vel"].tolist() == [[2, 3], [5, 6], [8, 9]]
    assert c.weights.sum() == pytest.approx(0.5)
    # a PLY without faces is a point cloud; its weights travel as a vertex property
    write_mesh(tmp_path / "p.ply", pc)
    back = read_mesh(tmp_path / "p.ply")
    assert back.cells == {} and np.array_equal(back.weights, pc.weights)
    np.testing.assert_array_equal(back.point_data["vel"], pc.point_data["vel"])
    with pytest.raises(MeshWriteError, match="point cloud needs a format"):
        write_mesh(tmp_path / "p.inp", Mesh.from_points(pc.points, weights=pc.weights))


def test_ply_with_u_v_fields_and_ascii(tmp_path):
    """Fields named u and v (which trimesh would take for texture coordinates) survive."""
    m = mesh_domain("square", 50)
    m = m.with_point_data(u=m.points[:, 0], v=m.points[:, 1])
    write_mesh(tmp_path / "s.ply", m)
    back = read_mesh(tmp_path / "s.ply")
    np.testing.assert_array_equal(back.point_data["v"], m.points[:, 1])
    mm = meshio.Mesh(np.column_stack([m.points, np.zeros(m.n_points)]),
                     [("triangle", m.cells["triangle"])])
    meshio.write(tmp_path / "a.ply", mm, binary=False)
    plain = Mesh(m.points, {"triangle": m.cells["triangle"]})
    assert read_mesh(tmp_path / "a.ply").hash == plain.hash


# ------------------------------------------------------------------ bad input through the CLI
def _vtk(points, cells, extra=""):
    pts = "\n".join(" ".join(map(str, p)) for p in points)
    cl = "\n".join(f"3 {a} {b} {c}" for a, b, c in cells)
    return (f"# vtk DataFile Version 4.2\nbad\nASCII\nDATASET UNSTRUCTURED_GRID\n"
            f"POINTS {len(points)} double\n{pts}\nCELLS {len(cells)} {4 * len(cells)}\n{cl}\n"
            f"CELL_TYPES {len(cells)}\n" + "\n".join("5" for _ in cells) + "\n" + extra)


SQ = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]


def _bad_files(tmp_path, planar):
    good = tmp_path / "good.msh"
    write_mesh(good, planar)
    vtu = tmp_path / "good.vtu"
    write_mesh(vtu, planar)
    cases = {
        "unknown.xyz": (b"1 2 3\n", "unknown mesh file extension '.xyz'"),
        "empty.msh": (b"", "the file is empty"),
        "truncated.msh": (good.read_bytes()[: len(good.read_bytes()) // 2], "cannot read as gmsh"),
        "truncated.vtu": (vtu.read_bytes()[:300], "cannot read as vtu"),
        "garbage.stl": (b"solid x\nfacet normal 0 0\n", "no vertices found"),
        "nan.vtk": (_vtk([[0, 0, 0], [1, "nan", 0], [0, 1, 0]], [[0, 1, 2]]).encode(),
                    "1 point(s) have NaN or inf coordinates"),
        "inf.csv": (b"x,y\n0,0\n1,inf\n0,1\n", "1 point(s) have NaN or inf coordinates"),
        "missing.vtk": (_vtk(SQ, [[0, 1, 2], [1, 3, 9]]).encode(),
                        "triangle cells index point 9 but the mesh has 4 points"),
        "flat.vtk": (_vtk(SQ + [[2, 0, 0]], [[0, 1, 4]]).encode(),
                     "all 1 cell(s) have zero area, so every quadrature weight is 0"),
        "short.vtk": (_vtk(SQ, [[0, 1, 2], [1, 3, 2]],
                           "POINT_DATA 3\nSCALARS u double 1\nLOOKUP_TABLE default\n1 2 3\n")
                      .encode(), "cannot read as vtk"),
        "nopoints.vtk": (_vtk([], []).encode(), "no points"),
        "nopoints.npz": (None, "the mesh has no points"),
        "wronglen.npz": (None, "point_data 'u' has length 3, expected 4 (one value per point)"),
        "nocoords.csv": (b"a,b\n1,2\n", "CSV needs coordinate columns x,y or x,y,z"),
        "cut.csv": (b"x,y,u\n0,0,1\n1,0\n", "line 3 has a different number of columns"),
    }
    np.savez(tmp_path / "nopoints.npz", points=np.zeros((0, 3)))
    np.savez(tmp_path / "wronglen.npz", points=np.array(SQ, dtype=float), u=np.zeros(3))
    for name, (content, _) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    return {tmp_path / name: msg for name, (_, msg) in cases.items()}


def test_every_bad_input_gives_one_line_and_exit_code_2(tmp_path, planar, capsys):
    for path, message in _bad_files(tmp_path, planar).items():
        code = main(["info", str(path)])
        out, err = capsys.readouterr()
        assert code == 2, (path, err)
        assert out == ""
        assert err.startswith("graphop: error: ") and err.count("\n") == 1, err
        assert str(path) in err and message in err, (message, err)
        assert "Traceback" not in err
        with pytest.raises((MeshReadError, MeshError)):
            main(["info", str(path), "--debug"])
    code = main(["info", str(tmp_path / "absent.vtu")])
    err = capsys.readouterr().err
    assert code == 2 and "absent.vtu: no such file" in err


def test_bad_input_in_a_real_process(tmp_path):
    (tmp_path / "empty.vtu").write_bytes(b"")
    cmd = [sys.executable, "-m", "graphop", "info", str(tmp_path / "empty.vtu")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"graphop: error: {tmp_path / 'empty.vtu'}: the file is empty\n"
    # --debug: the exception propagates (the interpreter prints its traceback)
    with pytest.raises(MeshReadError, match="the file is empty"):
        main(["--debug", "info", str(tmp_path / "empty.vtu")])


def test_ply_read_gives_no_torch_warning_about_non_writable_arrays(tmp_path):
    import warnings

    import torch_geometric.data  # noqa: F401  (its own import-time warnings are not ours)
    from graphop.geometry.domains import structured_square

    sq = structured_square(4)
    write_mesh(tmp_path / "s.ply", sq.with_point_data(a=np.arange(sq.n_points, dtype=float)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        d = read_mesh(tmp_path / "s.ply").to_data(fields=["a"])
    assert d.a.shape == (sq.n_points, 1) and float(d.a[-1, 0]) == sq.n_points - 1
