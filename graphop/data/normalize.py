"""Normalisation fitted once on a training set and stored with the model.

Three maps, each fitted on the *training* samples only and then frozen, so that every mesh a
model ever sees (training, validation, test, a user's new file) is transformed identically:

* **Coordinates**: one isotropic :class:`graphop.geometry.mesh.AffineMap` ``x' = (x - shift) / scale``
  from the union bounding box of all training meshes (``shift`` = its lower corner, ``scale``
  = its longest side). Quadrature weights are measures, so they transform as
  ``w' = w / scale^k`` (k = topological dimension); periodic box lengths as ``L' = L / scale``
  (and ``shift = 0`` when the training data are periodic, so the torus stays [0, L')).
  Never a per-sample rescaling: a domain twice as large has a different solution, not a
  stretched one (see DESIGN.md, "Physical coordinates").
* **Input fields** and **target fields**: per channel c, the quadrature-weighted mean and
  standard deviation averaged over samples,

      mean_c = 1/S sum_s ( sum_j w_j v_jc / sum_j w_j ),
      std_c  = sqrt( 1/S sum_s ( sum_j w_j v_jc^2 / sum_j w_j ) - mean_c^2 ),

  i.e. function-space averages that do not depend on the resolution of each mesh.
  ``v' = (v - mean) / std``; a constant channel (std ~ 0) gets std = 1.

The model sees normalised coordinates and inputs and predicts normalised targets;
:meth:`Normalizer.decode` maps predictions back to physical units, where the loss and every
metric are computed. ``state_dict()`` holds only tensors, floats and lists, so it can live in a
checkpoint loaded with ``torch.load(weights_only=True)``.

Shapes:
    encode: Data(pos [N, d], weight [N], x [N, n_in], ...) -> Data of the same shapes.
    decode: [N, n_out] -> [N, n_out].
"""
from __future__ import annotations

import copy
import hashlib
import math

import torch

from graphop.data.sample import describe, measure_exponent
from graphop.errors import DataError, InputError
from graphop.geometry.mesh import AffineMap

__all__ = ["FieldNormalizer", "Normalizer", "NormalizedDataset", "check_sample"]


def check_sample(data, index=None) -> None:
    """Raise :class:`DataError` for NaN/inf in ``pos``, ``weight``, ``x`` or ``y`` (naming the
    sample, the field and the first bad point), or for missing ``pos``/``weight``/``y``."""
    where = describe(data, index)
    for key in ("pos", "weight", "y"):
        if getattr(data, key, None) is None:
            raise DataError(f"{where}: the sample has no {key!r}")
    for key in ("pos", "weight", "x", "y"):
        v = getattr(data, key, None)
        if v is None or v.numel() == 0:
            continue
        bad = ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            name = {"x": "input field", "y": "target field"}.get(key, key)
            raise DataError(f"{where}: {name} {key!r} has NaN or inf at {int(bad.sum())} point(s) "
                            f"(first: point {int(bad.nonzero()[0, 0])})")


class FieldNormalizer:
    """Per-channel affine normaliser ``v' = (v - mean) / std`` (see the module docstring).

    Args:
        mean: [C] channel means.
        std: [C] channel standard deviations (> 0).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise InputError("mean and std must have the same shape")
        self._dev: dict = {}

    @property
    def channels(self) -> int:
        return int(self.mean.numel())

    def _on(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._dev:
            self._dev[key] = (self.mean.to(like.device, like.dtype), self.std.to(like.device, like.dtype))
        return self._dev[key]

    def encode(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape[-1] != self.channels:
            raise InputError(f"expected {self.channels} channel(s), got {v.shape[-1]}")
        m, s = self._on(v)
        return (v - m) / s

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape[-1] != self.channels:
            raise InputError(f"expected {self.channels} channel(s), got {v.shape[-1]}")
        m, s = self._on(v)
        return v * s + m

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "FieldNormalizer":
        return cls(state["mean"], state["std"])

    def __repr__(self) -> str:
        return f"FieldNormalizer(channels={self.channels})"


class _Moments:
    """Streaming per-sample function-space moments (float64)."""

    def __init__(self):
        self.s1 = None
        self.s2 = None
        self.n = 0

    def add(self, v: torch.Tensor, w: torch.Tensor) -> None:
        v = v.reshape(v.shape[0], -1).double()
        w = w.double().reshape(-1, 1)
        total = w.sum()
        m1 = (w * v).sum(0) / total
        m2 = (w * v * v).sum(0) / total
        self.s1 = m1 if self.s1 is None else self.s1 + m1
        self.s2 = m2 if self.s2 is None else self.s2 + m2
        self.n += 1

    def result(self) -> FieldNormalizer:
        mean = self.s1 / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        tiny = 1e-12 * torch.maximum(mean.abs(), torch.ones_like(mean))
        std = torch.where(std > tiny, std, torch.ones_like(std))
        return FieldNormalizer(mean, std)


class Normalizer:
    """Coordinates, inputs and targets normalised by maps fitted on a training set.

    Args:
        inputs: :class:`FieldNormalizer` for ``data.x`` (None = identity).
        targets: :class:`FieldNormalizer` for the model output / ``data.y`` (None = identity).
        coords: :class:`AffineMap` for ``data.pos`` (None = identity).
    """

    def __init__(self, inputs: FieldNormalizer | None = None,
                 targets: FieldNormalizer | None = None, coords: AffineMap | None = None):
        self.inputs = inputs
        self.targets = targets
        self.coords = coords

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, samples, fields: bool = True, coords: bool = True, progress: bool = False
            ) -> "Normalizer":
        """Fit on an iterable of training samples (one pass). Every sample is also checked
        with :func:`check_sample`, so NaN in the data stops training before it starts.

        Raises:
            DataError: no samples, a sample with NaN/inf, or inconsistent channel counts.
        """
        from graphop.data.progress import progress as _progress

        xin, yout = _Moments(), _Moments()
        lo = hi = None
        periodic = False
        n_x = n_y = None
        count = 0
        it = _progress(samples, desc="fitting normalisation", unit="sample", enabled=progress,
                       lines=1)
        for i, data in enumerate(it):
            check_sample(data, i)
            x = getattr(data, "x", None)
            cx = 0 if x is None else int(x.reshape(x.shape[0], -1).shape[1])
            cy = int(data.y.reshape(data.y.shape[0], -1).shape[1])
            if n_x is None:
                n_x, n_y = cx, cy
            elif (cx, cy) != (n_x, n_y):
                raise DataError(f"{describe(data, i)}: {cx} input / {cy} target channel(s), but "
                                f"earlier samples have {n_x} / {n_y}")
            if cx:
                xin.add(x, data.weight)
            yout.add(data.y, data.weight)
            p = data.pos.double()
            plo, phi = p.min(0).values, p.max(0).values
            if lo is not None and lo.shape != plo.shape:
                raise DataError(f"{describe(data, i)}: dimension {plo.numel()} differs from "
                                f"earlier samples ({lo.numel()})")
            lo = plo if lo is None else torch.minimum(lo, plo)
            hi = phi if hi is None else torch.maximum(hi, phi)
            periodic = periodic or getattr(data, "periodic", None) is not None
            count += 1
        if count == 0:
            raise DataError("cannot fit normalisation: the training set is empty")
        fin = xin.result() if (fields and n_x) else None
        fout = yout.result() if fields else None
        amap = None
        if coords:
            scale = float((hi - lo).max())
            if not (scale > 0 and math.isfinite(scale)):
                scale = 1.0
            shift = tuple(0.0 for _ in lo.tolist()) if periodic else tuple(float(v) for v in lo)
            amap = AffineMap(shift, scale)
        return cls(fin, fout, amap)

    # ------------------------------------------------------------------ transforms
    @property
    def tag(self) -> str:
        """Short content tag of the coordinate map (appended to ``mesh_hash`` so operator
        caches never mix normalised and physical geometry)."""
        if self.coords is None:
            return ""
        s = repr((self.coords.shift, self.coords.scale)).encode()
        return hashlib.sha256(s).hexdigest()[:8]

    def encode(self, data):
        """A shallow copy of ``data`` with normalised ``pos``, ``weight``, ``periodic`` and
        ``x``; ``y`` stays in physical units."""
        out = copy.copy(data)
        if self.coords is not None:
            pos = data.pos
            shift = torch.as_tensor(self.coords.shift, dtype=pos.dtype, device=pos.device)
            if shift.numel() != pos.shape[1]:
                raise DataError(f"{describe(data)}: the model was trained on {shift.numel()}D "
                                f"coordinates, this sample is {pos.shape[1]}D")
            scale = self.coords.scale
            out.pos = (pos - shift) / scale
            out.weight = data.weight / scale ** measure_exponent(data)
            per = getattr(data, "periodic", None)
            if per is not None:
                out.periodic = per / scale
                if bool((shift != 0).any()):
                    out.pos = torch.remainder(out.pos, out.periodic.reshape(1, -1))
            h = getattr(data, "mesh_hash", None)
            if isinstance(h, str):
                out.mesh_hash = f"{h}:{self.tag}"
            elif isinstance(h, (list, tuple)):
                out.mesh_hash = [f"{s}:{self.tag}" for s in h]
        x = getattr(data, "x", None)
        if self.inputs is not None and x is not None and x.numel():
            out.x = self.inputs.encode(x)
        return out

    def decode(self, pred: torch.Tensor) -> torch.Tensor:
        """Model output (normalised) -> target fields in physical units."""
        return pred if self.targets is None else self.targets.decode(pred)

    def encode_targets(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.targets is None else self.targets.encode(y)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {"inputs": None if self.inputs is None else self.inputs.state_dict(),
                "targets": None if self.targets is None else self.targets.state_dict(),
                "coords": None if self.coords is None else self.coords.to_dict()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Normalizer":
        return cls(None if state.get("inputs") is None else FieldNormalizer.from_state_dict(state["inputs"]),
                   None if state.get("targets") is None else FieldNormalizer.from_state_dict(state["targets"]),
                   None if state.get("coords") is None else AffineMap.from_dict(state["coords"]))

    def __repr__(self) -> str:
        return f"Normalizer(inputs={self.inputs}, targets={self.targets}, coords={self.coords})"


class NormalizedDataset(torch.utils.data.Dataset):
    """A dataset whose samples pass through :meth:`Normalizer.encode`."""

    def __init__(self, base, normalizer: Normalizer):
        self.base = base
        self.normalizer = normalizer

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.normalizer.encode(self.base[i])
