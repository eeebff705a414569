"""The processed-data cache: where derived tensors live, and how they are stored safely.

Reading a folder of mesh files is slow, so :class:`graphop.data.MeshFolderDataset` keeps the
processed samples in one file per (file contents, field names, dtype, graphop version, manifest)
key. Two rules make that cache safe for folders that come from someone else:

* **Location.** Caches live in the user's own cache directory, never inside a data folder
  (a folder you are sent could otherwise carry a planted cache):

      $GRAPHOP_CACHE                      when set
      $XDG_CACHE_HOME/graphop             else, when XDG_CACHE_HOME is set
      ~/.cache/graphop                    otherwise

  processed datasets go to ``<cache>/datasets/processed-<key>.pt``. A legacy
  ``.graphop_cache/`` folder inside a data folder is ignored (never read).
* **Format.** A cache file holds only tensors and plain values (a list of dicts of tensors,
  strings, ints, floats), written with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, which refuses any other Python object, so loading can never
  run code. A file that is unreadable, foreign or inconsistent with the request is reported as
  ``None`` by :func:`load_records` and the caller rebuilds it.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from graphop.errors import GraphopWarning, InputTypeError

__all__ = ["cache_root", "data_to_record", "record_to_data", "save_records", "load_records"]

_PLAIN = (bool, int, float, str)


def cache_root() -> Path:
    """The user's graphop cache directory (``$GRAPHOP_CACHE``, else ``$XDG_CACHE_HOME/graphop``,
    else ``~/.cache/graphop``); not created here."""
    env = os.environ.get("GRAPHOP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "graphop"
    return Path.home() / ".cache" / "graphop"


def data_to_record(data) -> dict:
    """A torch_geometric ``Data`` as a plain dict ``{attribute: tensor | str | int | float}``.

    Raises:
        TypeError: an attribute that is neither a tensor nor a plain value.
    """
    out = {}
    for key, value in data.items():
        if not isinstance(value, (torch.Tensor,) + _PLAIN):
            raise InputTypeError(f"Data attribute {key!r} of type {type(value).__name__} cannot be "
                            "cached (tensors and plain values only)")
        out[str(key)] = value
    return out


def record_to_data(record: dict):
    """The ``Data`` that :func:`data_to_record` turned into ``record``."""
    from torch_geometric.data import Data

    return Data(**record)


def save_records(path, records: list[dict]) -> bool:
    """Write ``records`` to ``path`` atomically (temporary file + ``os.replace``); False when the
    cache directory cannot be written (the caller then works without a cache)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(records, tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        return False
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass


def _valid(records, n_expected: int, required: tuple, dtype: torch.dtype) -> bool:
    if not isinstance(records, list) or len(records) != n_expected:
        return False
    for r in records:
        if not isinstance(r, dict) or not all(k in r for k in required):
            return False
        if not all(isinstance(v, (torch.Tensor,) + _PLAIN) for v in r.values()):
            return False
        pos = r["pos"]
        if not isinstance(pos, torch.Tensor) or pos.dim() != 2 or pos.dtype != dtype:
            return False
        n = pos.shape[0]
        for k in required:
            v = r[k]
            if k != "pos" and (not isinstance(v, torch.Tensor) or v.dim() == 0
                               or v.shape[0] != n):
                return False
    return True


def load_records(path, n_expected: int, required=("pos", "weight", "boundary", "x", "y"),
                 dtype: torch.dtype = torch.float32) -> list[dict] | None:
    """The records stored at ``path``, or None when there is no usable cache there.

    Loads with ``torch.load(weights_only=True)`` (never runs code). None is returned for a
    missing, truncated or corrupted file, one holding Python objects other than tensors and
    plain data, and one whose content does not match the request: not ``n_expected`` records,
    a record without one of ``required`` (each a tensor with one row per point), or positions of
    another dtype.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        records = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        warnings.warn(f"{path}: ignoring a cache file that holds Python objects other than "
                      "tensors and plain data (not written by graphop); rebuilding it",
                      GraphopWarning, stacklevel=2)
        return None
    except Exception:  # damaged archives raise several types
        return None
    return records if _valid(records, n_expected, tuple(required), dtype) else None
