"""Prediction on a new mesh file with a trained checkpoint.

Any file :func:`graphop.io.read_mesh` reads works: another format than the training data,
another resolution, or a bare point cloud (``.npz``/``.csv``/``.ply`` without faces, whose
quadrature weights come from :meth:`graphop.Mesh.from_points`'s k-NN density estimate, scaled
to ``measure`` when the domain's area/volume is known). The mesh is turned into a sample with
the checkpoint's input fields (looked up by name in ``point_data``), passed through the stored
normalisation and model, and the predicted target fields are written back as ``point_data``:

* the target's own name (``u``) when the file does not hold that field,
* ``u_pred`` and ``u_error`` (= prediction - truth) when it does; the quadrature-weighted
  relative L2 error against the file's field is then reported too.

Shapes:
    mesh with N points and input fields [N] or [N, k] -> predicted targets [N] or [N, k].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from graphop.training.checkpoint import load_trained_model
from graphop.errors import DataError
from graphop.errors import MeshError
from graphop.training.metrics import relative_l2
from graphop.data.normalize import check_sample

__all__ = ["predict_mesh", "predict_file", "mesh_to_sample"]


def mesh_to_sample(mesh, inputs, targets=(), periodic=None, dtype=torch.float32):
    """A training-style ``Data`` (pos, weight, boundary, face, x, and y when every target is
    present) from a :class:`graphop.Mesh`."""
    try:
        mesh = mesh.with_derived_fields(inputs)
    except MeshError as exc:
        raise DataError(str(exc)) from exc
    missing = [f for f in inputs if f not in mesh.point_data]
    if missing:
        raise DataError(f"{mesh.source}: no point_data field(s) {', '.join(map(repr, missing))} "
                        f"(the model's inputs are {list(inputs)}); available: "
                        f"{sorted(mesh.point_data) or 'none'}")
    have_y = bool(targets) and all(t in mesh.point_data for t in targets)
    for f in list(inputs) + (list(targets) if have_y else []):
        v = np.asarray(mesh.point_data[f], dtype=np.float64).reshape(mesh.n_points, -1)
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():  # named here: check_sample only sees the concatenated x / y
            kind = "input" if f in inputs else "target"
            raise DataError(f"{mesh.source}: {kind} field {f!r} has NaN or inf at "
                            f"{int(bad.sum())} point(s) (first: point {int(np.flatnonzero(bad)[0])})")
    data = mesh.to_data(fields=list(inputs) + (list(targets) if have_y else []), dtype=dtype)
    n = mesh.n_points
    xs = [data[f].reshape(n, -1) for f in inputs]
    data.x = torch.cat(xs, dim=1) if xs else torch.zeros(n, 0, dtype=dtype)
    if have_y:
        data.y = torch.cat([data[t].reshape(n, -1) for t in targets], dim=1)
    for f in set(inputs) | (set(targets) if have_y else set()):
        del data[f]
    if periodic is not None:
        data.periodic = torch.as_tensor(periodic, dtype=dtype).reshape(1, -1)
    data.source = str(mesh.source)
    return data


def _split_channels(pred: np.ndarray, targets) -> dict:
    n_out = pred.shape[1]
    if len(targets) == n_out:
        return {t: pred[:, i] for i, t in enumerate(targets)}
    if targets and n_out % len(targets) == 0:
        k = n_out // len(targets)
        return {t: pred[:, i * k:(i + 1) * k] for i, t in enumerate(targets)}
    return {f"prediction_{c}": pred[:, c] for c in range(n_out)}


@torch.no_grad()
def predict_mesh(model, normalizer, mesh, inputs, targets, device="cpu", periodic=None):
    """(fields, rel_l2) for ``mesh``: predicted target arrays by name, and the relative L2
    error against the mesh's own target fields when it has them (else None)."""
    data = mesh_to_sample(mesh, inputs, targets, periodic)
    if getattr(data, "y", None) is None:
        data.y = torch.zeros(mesh.n_points, 1)  # check_sample needs a y; not used below
        has_truth = False
    else:
        has_truth = True
    check_sample(data)
    enc = normalizer.encode(data).to(device)
    pred = normalizer.decode(model(enc)).cpu()
    rel = float(relative_l2(pred, data.y, data.weight)) if has_truth else None
    return _split_channels(pred.double().numpy(), list(targets)), rel


def predict_file(checkpoint, mesh_file, out=None, device="cpu", measure: float | None = None,
                 periodic=None) -> dict:
    """Predict on ``mesh_file`` and write the mesh with the predicted fields to ``out``
    (default ``<stem>_pred.vtu`` next to the input). Returns a summary dict."""
    from graphop.training.distributed import resolve_device
    from graphop.io import read_mesh, write_mesh
    from graphop.geometry.mesh import Mesh

    dev = resolve_device(device)
    model, normalizer, ckpt = load_trained_model(checkpoint, dev)
    tc = ckpt["train_config"]
    inputs, targets = list(tc["inputs"]), list(tc["targets"])
    mesh = read_mesh(mesh_file)
    if measure is not None:
        if not measure > 0:
            raise DataError(f"--measure must be positive, got {measure}")
        mesh = Mesh(mesh.points, mesh.cells, dict(mesh.point_data), weights=mesh.weights * (
            measure / mesh.weights.sum()), source=mesh.source, validate=False)
    if ckpt["model_config"].get("periodic") and periodic is None:
        raise DataError("the model was trained on periodic data: pass --periodic L1,L2[,L3] "
                        "(the box lengths of the torus)")
    fields, rel = predict_mesh(model, normalizer, mesh, inputs, targets, dev, periodic)
    new = {}
    for name, val in fields.items():
        if name in mesh.point_data:
            truth = np.asarray(mesh.point_data[name], dtype=np.float64).reshape(val.shape)
            new[f"{name}_pred"] = val
            new[f"{name}_error"] = val - truth
        else:
            new[name] = val
    src = Path(mesh_file)
    out = Path(out) if out is not None else src.with_name(f"{src.stem}_pred.vtu")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(out, mesh.with_point_data(**new))
    return {"out": str(out), "input": str(src), "n_points": mesh.n_points,
            "point_cloud": mesh.top_dim == 0, "fields": sorted(new), "rel_l2": rel,
            "checkpoint": ckpt["path"], "model": ckpt["model_config"].get("name")}
