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

import os
import sys
from pathlib import Path

import numpy as np
import torch

from graphop.training.checkpoint import load_trained_model
from graphop.data.sample import mesh_to_sample, split_channels
from graphop.errors import ConfigError, DataError
from graphop.layers.sparse import to_device
from graphop.training.metrics import relative_l2
from graphop.data.normalize import check_sample

__all__ = ["predict_data", "predict_mesh", "predict_file"]


@torch.no_grad()
def predict_data(model, normalizer, data, device="cpu") -> torch.Tensor:
    """Physical-unit prediction [N, out] of a trained model for one ``Data``/``Batch``."""
    enc = to_device(normalizer.encode(data), device)
    return normalizer.decode(model(enc)).cpu()


@torch.no_grad()
def predict_mesh(model, normalizer, mesh, inputs, targets, device="cpu", periodic=None):
    """(fields, rel_l2) for ``mesh``: predicted target arrays by name, and the relative L2
    error against the mesh's own target fields when it has them (else None)."""
    data = mesh_to_sample(mesh, inputs, targets, periodic=periodic)
    if getattr(data, "y", None) is None:
        data.y = torch.zeros(mesh.n_points, 1)  # check_sample needs a y; not used below
        has_truth = False
    else:
        has_truth = True
    check_sample(data)
    enc = normalizer.encode(data)
    _warn_supports(model, enc, str(mesh.source))
    enc = to_device(enc, device)
    pred = normalizer.decode(model(enc)).cpu()
    rel = float(relative_l2(pred, data.y, data.weight)) if has_truth else None
    return split_channels(pred.double().numpy(), list(targets)), rel


def _refuse_input_as_output(src: Path, out: Path) -> None:
    """ConfigError when ``out`` is the file ``src`` itself (same path, a symbolic or hard link
    to it, or a path through a linked folder)."""
    same = False
    if out.exists() and src.exists():
        try:
            same = os.path.samefile(out, src)
        except OSError:
            same = out.resolve() == src.resolve()
    if same:
        raise ConfigError(f"{out}: is the input mesh file {src}; refusing to overwrite it with "
                          "the prediction (choose another --out, or pass --overwrite to replace "
                          "the input)")


def _warn_supports(model, enc, source: str) -> str | None:
    """Print (stderr) and return one warning line when the mesh of the normalised sample
    ``enc`` under-resolves a support of ``model`` (see :mod:`graphop.models.supports`)."""
    from graphop.models.supports import support_warnings

    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        return None
    issues = support_warnings(cfg, enc.pos, getattr(enc, "boundary", None),
                              getattr(enc, "periodic", None))
    if not issues:
        return None
    line = (f"{source} ({enc.pos.shape[0]} points) under-resolves the model's supports: "
            + "; ".join(issues))
    print(f"graphop predict: warning: {line}", file=sys.stderr, flush=True)
    return line


def predict_file(checkpoint, mesh_file, out=None, device="cpu", measure: float | None = None,
                 periodic=None, overwrite: bool = False) -> dict:
    """Predict on ``mesh_file`` and write the mesh with the predicted fields to ``out``
    (default ``<stem>_pred.vtu`` next to the input). Returns a summary dict.

    An ``out`` that is the input file itself (also through a symbolic or hard link) is refused
    with :class:`graphop.errors.ConfigError` before anything is loaded, unless ``overwrite``
    is True (default False). The mesh's operators go to (or come from) the operator store, as
    in ``graphop train`` (``$GRAPHOP_OPERATOR_STORE=off`` turns it off)."""
    from graphop.training.distributed import resolve_device
    from graphop.training.trainer import attach_operator_store
    from graphop.io import read_mesh, write_mesh
    from graphop.geometry.mesh import Mesh

    src = Path(mesh_file)
    out = Path(out) if out is not None else src.with_name(f"{src.stem}_pred.vtu")
    if not overwrite:
        _refuse_input_as_output(src, out)
    dev = resolve_device(device)
    model, normalizer, ckpt = load_trained_model(checkpoint, dev)
    attach_operator_store()   # a mesh predicted on again (another checkpoint) loads its operators
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
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(out, mesh.with_point_data(**new))
    return {"out": str(out), "input": str(src), "n_points": mesh.n_points,
            "point_cloud": mesh.top_dim == 0, "fields": sorted(new), "rel_l2": rel,
            "checkpoint": ckpt["path"], "model": ckpt["model_config"].get("name")}
