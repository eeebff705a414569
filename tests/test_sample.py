"""The one Mesh -> sample path: the weight exponent comes from the mesh, and training,
evaluation and prediction build identical samples from one file."""
import numpy as np
import pytest
import torch

from graphop.data.normalize import Normalizer
from graphop.data.sample import (channel_names, measure_exponent, mesh_to_sample,
                                 split_channels)
from graphop.errors import DataError
from graphop.geometry.mesh import AffineMap, Mesh
from graphop.io import write_mesh


def _quad_surface() -> Mesh:
    """A 3 x 3 grid of quads on the plane z = x + y in 3D (area sqrt(3) over the unit square)."""
    g = np.linspace(0, 1, 4)
    x, y = np.meshgrid(g, g, indexing="ij")
    pts = np.column_stack([x.ravel(), y.ravel(), (x + y).ravel()])
    idx = np.arange(16).reshape(4, 4)
    quads = np.array([[idx[i, j], idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]]
                      for i in range(3) for j in range(3)])
    return Mesh(pts, {"quad": quads}, {"u": pts[:, 0]})


def _wedge_volume() -> Mesh:
    """Two stacked wedges (a triangular prism of height 2 over the unit right triangle), with
    the bottom and top triangles as boundary blocks."""
    tri = np.array([[0, 0], [1, 0], [0, 1]], dtype=float)
    pts = np.vstack([np.column_stack([tri, np.full(3, z)]) for z in (0.0, 1.0, 2.0)])
    wedges = np.array([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
    return Mesh(pts, {"wedge": wedges, "triangle": np.array([[0, 1, 2], [6, 7, 8]])},
                {"u": pts[:, 2]})


@pytest.mark.parametrize("make,k,measure", [(_quad_surface, 2, np.sqrt(3)), (_wedge_volume, 3, 1.0)])
def test_weight_exponent_comes_from_the_mesh(make, k, measure):
    mesh = make()
    assert mesh.measure == pytest.approx(measure, rel=1e-12)
    s = mesh_to_sample(mesh, ["u"], ["u"], require_targets=True, dtype=torch.float64)
    assert s.measure_dim == k and measure_exponent(s) == k
    # coordinates scaled by 1/2: a surface's weights scale by 1/4, a volume's by 1/8
    norm = Normalizer(coords=AffineMap((0.0, 0.0, 0.0), 2.0))
    enc = norm.encode(s)
    assert float(enc.weight.sum()) == pytest.approx(measure / 2**k, rel=1e-12)


def test_training_and_prediction_build_identical_samples(tmp_path):
    from graphop.data.dataset import MeshFolderDataset

    mesh = _quad_surface()
    mesh = mesh.with_point_data(a=np.sin(mesh.points[:, 1]), normal=np.tile([1.0, 1.0, -1.0],
                                                                          (mesh.n_points, 1)))
    write_mesh(tmp_path / "s.vtu", mesh)
    ds = MeshFolderDataset(tmp_path, inputs=["a"], targets=["u"])
    from graphop.io import read_mesh

    pred = mesh_to_sample(read_mesh(tmp_path / "s.vtu"), ["a"], ["u"])
    train = ds[0]
    for key in ("pos", "weight", "x", "y", "boundary", "normal"):
        assert torch.equal(getattr(train, key), getattr(pred, key)), key
    assert train.measure_dim == pred.measure_dim == 2


def test_missing_and_non_finite_fields_name_the_users_field(tmp_path):
    mesh = _wedge_volume()
    with pytest.raises(DataError, match=r"no point_data field 'a'; available: \['u'\]"):
        mesh_to_sample(mesh, ["a"], ["u"])
    bad = mesh.point_data["u"].copy()
    bad[4] = np.nan
    with pytest.raises(DataError, match=r"target field 'u' has NaN or inf at 1 point\(s\) "
                                         r"\(first: point 4\)"):
        mesh_to_sample(mesh.with_point_data(u=bad), [], ["u"], require_targets=True)
    # a missing target is fine at prediction time (no y), an error for training data
    assert getattr(mesh_to_sample(mesh, ["u"], ["v"]), "y", None) is None
    with pytest.raises(DataError, match="no point_data field 'v'"):
        mesh_to_sample(mesh, ["u"], ["v"], require_targets=True)


def test_channels_of_scalar_and_vector_targets():
    pred = np.arange(12.0).reshape(3, 4)
    assert channel_names(["u", "v"], 4) == ["u[0]", "u[1]", "v[0]", "v[1]"]
    assert channel_names(["u"], 1) == ["u"]
    parts = split_channels(pred, ["u", "v"])
    np.testing.assert_array_equal(parts["v"], pred[:, 2:])
    scalars = split_channels(pred[:, :2], ["p", "q"])
    assert scalars["q"].shape == (3,) and np.array_equal(scalars["q"], pred[:, 1])
