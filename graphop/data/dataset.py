"""A dataset from a folder of mesh files: how users bring their own simulations.

``MeshFolderDataset(root, inputs=["a"], targets=["u"])`` reads every file under ``root`` that
:func:`graphop.io.read_mesh` understands and gives one torch_geometric ``Data`` per file, following
the shared data contract:

    pos [N, d], weight [N] (quadrature; sum = measure), boundary [N] bool, face [3, M] (triangles),
    x [N, n_in] = the ``inputs`` point_data fields concatenated (n_in = 0 when inputs is empty),
    y [N, n_out] = the ``targets`` fields concatenated, mesh_hash (str),
    normal [N, d] when the file has a point_data ``normal``/``normals``/``Normals`` field,
    periodic [1, d] for torus data, family / n_points from a generator's ``manifest.json``.

An input named in :data:`graphop.geometry.mesh.DERIVED_FIELDS` (``boundary_distance``) that a file does
not hold is computed from its geometry, as ``graphop predict`` does for a user's mesh.

Splits: ``split="train"`` / ``"test"`` reads the subfolder of that name when ``root`` has a
``train/`` or ``test/`` subfolder (a missing one is an empty split, an error); otherwise the
files are split by a permutation seeded with ``seed``, ``split_fraction`` of them
(rounded) going to ``test``. ``split=None`` gives every file.

Processed tensors are cached in the user's cache directory (see :mod:`graphop.data.cache`:
``$GRAPHOP_CACHE``, else ``$XDG_CACHE_HOME/graphop``, else ``~/.cache/graphop``) as
``datasets/processed-<key>.pt``, where the key hashes the contents of the files, the field
names, the dtype and the graphop version, so an edited file is never served stale. The cache
holds tensors and plain values only and is read with ``torch.load(weights_only=True)``; a
``.graphop_cache/`` folder inside ``root`` (older versions kept the cache there) is never read,
so a data folder cannot plant code. An unreadable or foreign cache file is rebuilt.

Bad input raises :class:`graphop.errors.DataError` naming the file: an empty folder, a
missing field, a field of the wrong length, NaN values, mixed dimensions.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from graphop.data.cache import cache_root, data_to_record, load_records, record_to_data, save_records
from graphop.errors import DataError, GraphopError, InputError, InputTypeError
from graphop.data.sample import mesh_to_sample

__all__ = ["MeshFolderDataset", "list_mesh_files"]



def list_mesh_files(root) -> list[Path]:
    """Every file under ``root`` (recursively, hidden entries skipped) with a registered mesh
    extension, sorted by relative path."""
    from graphop.io import detect_format

    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name == "manifest.json":
                continue
            try:
                detect_format(name)
            except GraphopError:
                continue
            out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_manifest(root: Path) -> tuple[Path | None, dict | None]:
    for folder in (root, root.parent):
        p = folder / "manifest.json"
        if p.is_file():
            try:
                return folder, json.loads(p.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{p}: unreadable manifest ({exc})") from exc
    return None, None


class MeshFolderDataset(torch.utils.data.Dataset):
    """Mesh files in a folder as a torch Dataset of ``Data`` (see the module docstring).

    Args:
        root: folder holding mesh files (searched recursively).
        inputs: point_data names concatenated into ``x`` (default: none, x is [N, 0]).
        targets: point_data names concatenated into ``y`` (default: none).
        split: ``"train"``, ``"test"`` or None (every file; default).
        split_fraction: fraction of files in ``test`` when ``root`` has no ``train/``/``test/``
            subfolders (default 0.2).
        seed: seed of the file permutation for the fraction split (default 0).
        cache: read/write the processed-tensor cache (default True).
        dtype: floating dtype of the tensors (default torch.float32).

    Shapes:
        data.x [N, n_in], data.y [N, n_out], data.pos [N, d], data.weight [N]
    """

    def __init__(self, root, inputs=(), targets=(), split: str | None = None,
                 split_fraction: float = 0.2, seed: int = 0, cache: bool = True,
                 dtype: torch.dtype = torch.float32):
        self.root = Path(root)
        if isinstance(inputs, str) or isinstance(targets, str):
            raise InputTypeError("inputs and targets must be lists of field names, not strings")
        self.inputs, self.targets = list(inputs), list(targets)
        if split not in (None, "train", "test"):
            raise InputError(f"split must be 'train', 'test' or None, got {split!r}")
        if not 0.0 <= split_fraction <= 1.0:
            raise InputError(f"split_fraction must be in [0, 1], got {split_fraction}")
        self.split, self.split_fraction, self.seed, self.dtype = split, split_fraction, seed, dtype
        if not self.root.exists():
            raise DataError(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        self.files = self._select_files()
        self.manifest_root, self.manifest = _find_manifest(self.root)
        self.cache_path: Path | None = None  # the processed-tensor cache file, when cache=True
        self._data = self._load(cache)

    # ------------------------------------------------------------------ files
    def _select_files(self) -> list[Path]:
        has_sub = (self.root / "train").is_dir() or (self.root / "test").is_dir()
        if self.split is not None and has_sub:
            # split folders are authoritative: a missing one is empty, never a fraction of
            # the other (that would leak training samples into the test set)
            where = self.root / self.split
            files = list_mesh_files(where) if where.is_dir() else []
        else:
            files = list_mesh_files(self.root)
            where = self.root
            if self.split is not None and files:
                perm = np.random.default_rng(self.seed).permutation(len(files))
                n_test = int(round(self.split_fraction * len(files)))
                keep = perm[:n_test] if self.split == "test" else perm[n_test:]
                files = [files[i] for i in sorted(keep)]
        if not files:
            raise DataError(f"{where}: no mesh files found (empty folder or no readable "
                            "extensions; see graphop.io.formats())")
        return files

    # ------------------------------------------------------------------ loading
    def _cache_path(self, digests: list[str]) -> Path:
        from graphop import __version__

        h = hashlib.sha256()
        for f, d in zip(self.files, digests):
            h.update(f.relative_to(self.root).as_posix().encode())
            h.update(d.encode())
        h.update(json.dumps([self.inputs, self.targets, str(self.dtype), __version__,
                             self.manifest], sort_keys=True).encode())
        return cache_root() / "datasets" / f"processed-{h.hexdigest()[:20]}.pt"

    def _load(self, cache: bool) -> list:
        path = None
        if cache:
            path = self._cache_path([_file_digest(f) for f in self.files])
            self.cache_path = path
            cached = load_records(path, len(self.files), dtype=self.dtype)
            if cached is not None:
                return [record_to_data(r) for r in cached]
        from graphop.data.progress import progress

        records = {}
        if self.manifest:
            for r in self.manifest.get("samples", []):
                records[(self.manifest_root / r["file"]).resolve()] = r
        data, dim0 = [], None
        for f in progress(self.files, desc="reading meshes", unit="file",
                          enabled=len(self.files) >= 50):
            d = self._process(f, records.get(f.resolve()))
            if dim0 is None:
                dim0 = (d.pos.shape[1], f)
            elif d.pos.shape[1] != dim0[0]:
                raise DataError(f"{f}: dimension {d.pos.shape[1]} differs from dimension "
                                f"{dim0[0]} of {dim0[1]}; a folder must hold one dimension")
            data.append(d)
        if path is not None:  # an unwritable cache directory: work without the cache
            save_records(path, [data_to_record(d) for d in data])
        return data

    def _process(self, path: Path, record: dict | None):
        from graphop.io import read_mesh

        try:
            mesh = read_mesh(path)
        except GraphopError as exc:
            msg = str(exc)
            raise DataError(msg if str(path) in msg else f"{path}: {msg}") from exc
        data = mesh_to_sample(mesh, self.inputs, self.targets, require_targets=True,
                              periodic=(self.manifest or {}).get("periodic"), dtype=self.dtype)
        if record is not None:
            data.family = str(record.get("family", ""))
            data.n_points = int(record.get("n_points", mesh.n_points))
        return data

    # ------------------------------------------------------------------ Dataset
    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i):
        return self._data[i]

    @property
    def dim(self) -> int:
        return int(self._data[0].pos.shape[1])

    @property
    def n_inputs(self) -> int:
        return int(self._data[0].x.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self._data[0].y.shape[1])

    def __repr__(self) -> str:
        return (f"MeshFolderDataset(root={str(self.root)!r}, n={len(self)}, dim={self.dim}, "
                f"inputs={self.inputs}, targets={self.targets}, split={self.split!r})")
