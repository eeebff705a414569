"""The one path from a :class:`graphop.Mesh` to a training sample, used by training (the
datasets), evaluation and prediction alike, so that a file gives the same sample everywhere.

A sample is a torch_geometric ``Data`` with

* ``pos`` [N, d], ``weight`` [N] (the mesh's quadrature weights), ``boundary`` [N] (bool),
  ``face`` [3, M] or ``cells_<type>`` [M, k];
* ``x`` [N, sum of input widths]: the input fields in the order given (a field [N] has width
  1, [N, k] width k); inputs named in :data:`graphop.geometry.mesh.DERIVED_FIELDS` are computed
  from the geometry when the file does not hold them;
* ``y`` [N, sum of target widths] when every target field is present (required for training);
* ``normal`` [N, d] when the file holds point normals (``normal``/``normals``/``Normals``);
* ``periodic`` [1, d], the torus box, from the caller or the file's ``field_data["periodic"]``
  (then ``boundary`` is all False: a torus has none);
* ``measure_dim``: the exponent of a length in the quadrature weights (the mesh's topological
  dimension: 2 for a surface in 3D, 3 for a volume, the coordinate dimension for a point cloud),
  which :class:`graphop.data.normalize.Normalizer` needs to rescale weights;
* ``source`` (the file) and ``mesh_hash``.

Every field is checked for its length and for NaN/inf, and errors name the file and the user's
field (``'a'``), never an internal name.
"""
from __future__ import annotations

import numpy as np
import torch

from graphop.errors import DataError, MeshError

__all__ = ["mesh_to_sample", "NORMAL_NAMES", "describe", "measure_exponent", "channel_names",
           "split_channels"]

#: point_data names read as point normals
NORMAL_NAMES = ("normal", "normals", "Normals")


def _field(mesh, name: str, where: str, kind: str) -> np.ndarray:
    n = mesh.n_points
    v = np.asarray(mesh.point_data[name], dtype=np.float64)
    if v.ndim == 0 or len(v) != n:
        raise DataError(f"{where}: field {name!r} has length {0 if v.ndim == 0 else len(v)}, "
                        f"expected {n} (one per point)")
    v = v.reshape(n, -1)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: {kind} field {name!r} has NaN or inf at {int(bad.sum())} "
                        f"point(s) (first: point {int(np.flatnonzero(bad)[0])})")
    return v


def mesh_to_sample(mesh, inputs, targets=(), *, require_targets: bool = False, periodic=None,
                   dtype=torch.float32):
    """The sample of ``mesh`` for a model with ``inputs`` and ``targets`` (field names).

    Args:
        mesh: a :class:`graphop.Mesh`.
        inputs: input field names (may be empty: the model then sees coordinates only).
        targets: target field names; ``y`` is set when all of them are present.
        require_targets: raise :class:`DataError` when a target is missing (training data).
        periodic: torus box lengths [d] (default: the file's ``field_data["periodic"]``).
        dtype: floating dtype of the tensors (default float32).

    Raises:
        DataError: a missing field, a field of the wrong length, NaN/inf values.
    """
    inputs, targets = list(inputs), list(targets)
    where = str(mesh.source)
    try:
        mesh = mesh.with_derived_fields(inputs)
    except MeshError as exc:
        raise DataError(str(exc) if where in str(exc) else f"{where}: {exc}") from exc
    missing = [f for f in inputs if f not in mesh.point_data]
    if require_targets:
        missing += [f for f in targets if f not in mesh.point_data]
    if missing:
        raise DataError(f"{where}: no point_data field{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; available: "
                        f"{sorted(mesh.point_data) or 'none'} (the model's inputs are {inputs}"
                        f"{f', targets {targets}' if require_targets else ''})")
    have_y = bool(targets) and all(t in mesh.point_data for t in targets)
    n = mesh.n_points
    data = mesh.to_data(fields=[], dtype=dtype)

    def stack(names, kind):
        if not names:
            return torch.zeros(n, 0, dtype=dtype)
        return torch.as_tensor(np.concatenate([_field(mesh, k, where, kind) for k in names],
                                              axis=1), dtype=dtype)

    data.x = stack(inputs, "input")
    if have_y:
        data.y = stack(targets, "target")
    for name in NORMAL_NAMES:
        if name in mesh.point_data:
            nv = np.asarray(mesh.point_data[name], dtype=np.float64).reshape(n, -1)
            if nv.shape[1] == mesh.dim:
                data.normal = torch.as_tensor(nv, dtype=dtype)
            break
    if periodic is None and "periodic" in mesh.field_data:
        periodic = mesh.field_data["periodic"]
    if periodic is not None:
        box = np.asarray(periodic, dtype=np.float64).reshape(1, -1)
        if box.shape[1] != mesh.dim or not (box > 0).all():
            raise DataError(f"{where}: the periodic box {box.ravel().tolist()} must hold "
                            f"{mesh.dim} positive lengths")
        data.periodic = torch.as_tensor(box, dtype=dtype)
        data.boundary = torch.zeros(n, dtype=torch.bool)
    data.measure_dim = int(mesh.top_or_dim)
    data.source = where
    return data


def describe(data, index=None) -> str:
    """What names a sample in a message: its file (``source``), else ``sample <index>``."""
    for key in ("source", "path", "file"):
        v = getattr(data, key, None)
        if isinstance(v, str) and v:
            return v
    return f"sample {index}" if index is not None else "sample"


def measure_exponent(data) -> int:
    """The exponent of a length in a sample's quadrature weights: ``measure_dim`` (set by
    :func:`mesh_to_sample` from the mesh's topological dimension), else the coordinate
    dimension (a bare ``Data`` made by hand)."""
    m = getattr(data, "measure_dim", None)
    if m is None:
        return int(data.pos.shape[1])
    m = torch.as_tensor(m).reshape(-1)
    if not bool((m == m[0]).all()):
        raise DataError("a batch mixes samples of different dimensions "
                        f"(measure_dim {sorted(set(m.tolist()))}); weights cannot share one scale")
    return int(m[0])


def _channel_groups(targets, n_out: int) -> list[tuple[str, slice, int]]:
    """(name, channel slice, width) of every target field in ``y`` [N, n_out]."""
    targets = list(targets)
    if targets and n_out % len(targets) == 0:
        k = n_out // len(targets)
        return [(t, slice(i * k, (i + 1) * k), k) for i, t in enumerate(targets)]
    return [(f"prediction_{c}", slice(c, c + 1), 1) for c in range(n_out)]


def channel_names(targets, n_out: int) -> list[str]:
    """A name per channel of ``y`` [N, n_out]: the field name, ``u[j]`` for a vector field."""
    return [name if k == 1 else f"{name}[{j}]"
            for name, _, k in _channel_groups(targets, n_out) for j in range(k)]


def split_channels(pred: np.ndarray, targets) -> dict:
    """``pred`` [N, n_out] as one array per target field ([N] for scalars, [N, k] vectors)."""
    return {name: pred[:, sl][:, 0] if k == 1 else pred[:, sl]
            for name, sl, k in _channel_groups(targets, pred.shape[1])}
