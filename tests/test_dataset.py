"""MeshFolderDataset: round trips through files, splits, cache, metadata and every bad input."""
import json

import numpy as np
import pytest
import torch

from graphop.data import MeshFolderDataset
from graphop.data.cache import cache_root
from graphop.data.generate import generate
from graphop.errors import DataError
from graphop.io import read_mesh, write_mesh
from graphop.geometry.mesh import Mesh

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def darcy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("darcy")
    generate("darcy", out, 6, points=200, domains="square,holes,star", seed=3, workers=1,
             test_fraction=0.34, progress=False)
    return out


def tri_mesh(n=5, dim=2, **fields):
    x = np.linspace(0, 1, n)
    p = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    idx = np.arange(n * n).reshape(n, n)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    tri = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    if dim == 3:  # a tilted surface in 3D (z = 0.1 x, so it is not reduced to 2D)
        return Mesh(np.c_[p, 0.1 * p[:, 0]], {"triangle": tri}, fields)
    return Mesh(p, {"triangle": tri}, fields)


def test_round_trip_and_manifest(darcy_dir):
    ds = MeshFolderDataset(darcy_dir, inputs=["a"], targets=["u"], split="train")
    man = json.loads((darcy_dir / "manifest.json").read_text())
    assert len(ds) == man["counts"]["train"] == 4
    for d, rec in zip(ds, [r for r in man["samples"] if r["split"] == "train"]):
        m = read_mesh(darcy_dir / rec["file"])
        np.testing.assert_allclose(d.x[:, 0].numpy(), m.point_data["a"], rtol=1e-6)
        np.testing.assert_allclose(d.y[:, 0].numpy(), m.point_data["u"], rtol=1e-6)
        np.testing.assert_allclose(d.pos.double().numpy(), m.points, rtol=1e-6)
        assert d.family == rec["family"] and d.n_points == m.n_points == d.pos.shape[0]
        assert d.weight.sum().item() == pytest.approx(m.measure, rel=1e-5)
        assert d.face.shape[0] == 3 and d.boundary.dtype == torch.bool
        assert d.mesh_hash == m.hash
    test = MeshFolderDataset(darcy_dir, inputs=[], targets=["u"], split="test")
    assert len(test) == 2 and test[0].x.shape == (test[0].pos.shape[0], 0)
    assert len(MeshFolderDataset(darcy_dir, ["a"], ["u"])) == 6
    # split folders are authoritative: no test/ folder means an empty test split
    generate("darcy", darcy_dir.parent / "only_train", 2, points=100, workers=1, progress=False)
    with pytest.raises(DataError, match=r"only_train/test: no mesh files found"):
        MeshFolderDataset(darcy_dir.parent / "only_train", ["a"], ["u"], split="test")
    from torch_geometric.data import Batch

    b = Batch.from_data_list([ds[0], ds[1]])
    assert b.x.shape[0] == ds[0].x.shape[0] + ds[1].x.shape[0]


def test_fraction_split_and_cache(tmp_path):
    for i in range(10):
        write_mesh(tmp_path / f"m{i}.vtu", tri_mesh(4, u=np.full(16, float(i))))
    tr = MeshFolderDataset(tmp_path, targets=["u"], split="train", split_fraction=0.3, seed=1)
    te = MeshFolderDataset(tmp_path, targets=["u"], split="test", split_fraction=0.3, seed=1)
    ids = sorted(int(d.y[0, 0]) for d in tr) + sorted(int(d.y[0, 0]) for d in te)
    assert len(te) == 3 and sorted(ids) == list(range(10))
    te2 = MeshFolderDataset(tmp_path, targets=["u"], split="test", split_fraction=0.3, seed=2)
    assert {int(d.y[0, 0]) for d in te2} != {int(d.y[0, 0]) for d in te}
    assert not (tmp_path / ".graphop_cache").exists()  # nothing is written into the data folder
    caches = {tr.cache_path, te.cache_path, te2.cache_path}
    assert len(caches) == 3 and all(p.is_file() for p in caches)
    assert all(p.parent == cache_root() / "datasets" for p in caches)
    # editing a file changes the key: no stale tensors
    write_mesh(tmp_path / "m0.vtu", tri_mesh(4, u=np.full(16, 42.0)))
    all_ = MeshFolderDataset(tmp_path, targets=["u"])
    assert all_[0].y[0, 0].item() == 42.0
    again = MeshFolderDataset(tmp_path, targets=["u"])
    assert torch.equal(again[0].y, all_[0].y)


def test_normals_and_periodic(tmp_path):
    m = tri_mesh(4, u=np.ones(16), normals=np.tile([0.0, 1.0], (16, 1)))
    write_mesh(tmp_path / "a.vtu", m)
    d = MeshFolderDataset(tmp_path, targets=["u"])[0]
    assert d.normal.shape == (16, 2) and d.x.shape == (16, 0)
    ns = tmp_path / "ns"
    generate("ns", ns, 2, points=64, seed=0, workers=1, progress=False, grid=16, t0=0.05,
             horizon=0.05)
    ds = MeshFolderDataset(ns, ["w0"], ["w1"])
    assert torch.equal(ds[0].periodic, torch.tensor([[1.0, 1.0]]))
    assert ds[0].weight.sum().item() == pytest.approx(1.0) and not ds[0].boundary.any()


def test_missing_field(tmp_path):
    write_mesh(tmp_path / "a.vtu", tri_mesh(4, u=np.ones(16)))
    write_mesh(tmp_path / "b.vtu", tri_mesh(4, v=np.ones(16)))
    with pytest.raises(DataError, match=r"b\.vtu: no point_data field 'u'; available: \['v'\]"):
        MeshFolderDataset(tmp_path, targets=["u"], cache=False)


def test_wrong_length_field(tmp_path):
    np.savez(tmp_path / "cloud.npz", points=np.random.rand(10, 2), u=np.ones(9))
    with pytest.raises(DataError, match=r"cloud\.npz.*'u' has length 9, expected 10"):
        MeshFolderDataset(tmp_path, targets=["u"], cache=False)


def test_mixed_dimensions(tmp_path):
    write_mesh(tmp_path / "a.vtu", tri_mesh(4, u=np.ones(16)))
    write_mesh(tmp_path / "b.vtu", tri_mesh(4, dim=3, u=np.ones(16)))
    with pytest.raises(DataError,
                       match=r"b\.vtu: dimension 3 differs from dimension 2 of .*a\.vtu"):
        MeshFolderDataset(tmp_path, targets=["u"], cache=False)


def test_empty_folder_and_nan(tmp_path):
    (tmp_path / "notes.txt").write_text("no meshes here")
    with pytest.raises(DataError, match="no mesh files found"):
        MeshFolderDataset(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        MeshFolderDataset(tmp_path / "missing")
    u = np.ones(16)
    u[3] = np.nan
    write_mesh(tmp_path / "nan.vtu", tri_mesh(4, u=u))
    with pytest.raises(DataError, match=r"nan\.vtu: target field 'u' has NaN or inf at 1 point\(s\) \(first: point 3\)"):
        MeshFolderDataset(tmp_path, targets=["u"])
    with pytest.raises(ValueError, match="split"):
        MeshFolderDataset(tmp_path, split="val")


def test_boundary_distance_is_derived_from_the_geometry(tmp_path):
    """An input named boundary_distance that the files lack is computed from each mesh: on a
    structured unit square it is min(x, 1-x, y, 1-y) up to the boundary spacing, zero on the
    boundary; prediction on a user's mesh does the same; a point cloud has no boundary."""
    from graphop.geometry.mesh import DERIVED_FIELDS
    from graphop.data.sample import mesh_to_sample

    assert "boundary_distance" in DERIVED_FIELDS
    n = 21
    write_mesh(tmp_path / "a.vtu", tri_mesh(n, a=np.ones(n * n), u=np.zeros(n * n)))
    ds = MeshFolderDataset(tmp_path, inputs=["a", "boundary_distance"], targets=["u"], cache=False)
    d = ds[0]
    p = d.pos.double()
    exact = torch.minimum(torch.minimum(p[:, 0], 1 - p[:, 0]), torch.minimum(p[:, 1], 1 - p[:, 1]))
    got = d.x[:, 1].double()
    assert d.x.shape == (n * n, 2)
    assert torch.all(got[d.boundary] == 0) and (~d.boundary).sum() > 0
    assert (got - exact).abs().max() <= 0.5 / (n - 1) + 1e-6        # half the boundary spacing
    assert torch.all(got >= exact - 1e-6)                            # never closer than the wall
    m = read_mesh(tmp_path / "a.vtu")
    assert "boundary_distance" not in m.point_data
    s = mesh_to_sample(m, ["a", "boundary_distance"], ["u"])
    torch.testing.assert_close(s.x, d.x)
    cloud = Mesh.from_points(m.points, point_data={"a": np.ones(n * n)})
    with pytest.raises(DataError, match="no boundary points"):
        mesh_to_sample(cloud, ["a", "boundary_distance"])


class _RunsCode:
    """A pickle payload that, when unpickled, runs a shell command (creates ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_planted_cache_never_runs_code(tmp_path):
    root = tmp_path / "sent"
    root.mkdir()
    for i in range(2):
        write_mesh(root / f"m{i}.vtu", tri_mesh(4, u=np.full(16, float(i))))
    ref = MeshFolderDataset(root, targets=["u"], cache=False)
    probe = MeshFolderDataset(root, targets=["u"])
    name = probe.cache_path.name
    marker = tmp_path / "pwned"
    # the attack of issue #16: a cache file planted inside the folder, under the name the
    # dataset used to look up there (same key), and one in the user's cache path itself
    (root / ".graphop_cache").mkdir()
    torch.save([_RunsCode(marker)], root / ".graphop_cache" / name)
    torch.save([_RunsCode(marker)], probe.cache_path)
    with pytest.warns(UserWarning, match="other than tensors"):
        ds = MeshFolderDataset(root, targets=["u"])
    assert not marker.exists()
    assert [d.y[0, 0].item() for d in ds] == [0.0, 1.0]
    assert torch.equal(ds[1].pos, ref[1].pos) and torch.equal(ds[1].y, ref[1].y)
    # the rebuilt cache is plain tensors and is served on the next load
    raw = torch.load(ds.cache_path, weights_only=True)
    assert isinstance(raw, list) and isinstance(raw[0], dict) and torch.equal(raw[0]["y"], ds[0].y)
    again = MeshFolderDataset(root, targets=["u"])
    assert torch.equal(again[1].y, ref[1].y) and again[0].mesh_hash == ref[0].mesh_hash


@pytest.mark.parametrize("content", ["foreign", "truncated", "short", "other_shape"])
def test_stale_or_foreign_cache_is_rebuilt(tmp_path, content):
    for i in range(2):
        write_mesh(tmp_path / f"m{i}.vtu", tri_mesh(4, u=np.full(16, float(i))))
    ds = MeshFolderDataset(tmp_path, targets=["u"])
    path = ds.cache_path
    if content == "foreign":   # what made `graphop evaluate` end in AttributeError
        torch.save([1, 2], path)
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif content == "short":   # fewer records than files
        torch.save(torch.load(path, weights_only=True)[:1], path)
    else:                      # a field with the wrong number of rows
        recs = torch.load(path, weights_only=True)
        recs[0]["y"] = recs[0]["y"][:3]
        torch.save(recs, path)
    again = MeshFolderDataset(tmp_path, targets=["u"])
    assert len(again) == 2 and again[0].y.shape == (16, 1) and again[1].y[0, 0].item() == 1.0
