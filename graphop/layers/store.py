"""Operators on disk: the second tier of :data:`graphop.layers.sparse.operator_cache`.

Every precomputed operator of graphop (DISCO, stencil, mollifier, latent encoder and decoder)
is a pure function of a mesh's content and the layer's hyperparameters, and its cache key says
both (:func:`graphop.layers.sparse.cached_operator`). An :class:`OperatorStore` keeps those
operators as files, so a second run on the same data (another seed, another variant of an
experiment, a resumed run, an evaluation) loads them instead of building them again. The
in-memory cache asks the store on a miss and writes what it builds; everything else is
unchanged, so a run with a store gives the same matrices as one without.

Rules:

* **Keys.** A file is named by the sha256 of the cache key's ``repr`` (content digest of the
  mesh + operator kind + every parameter that shapes it). The store's folder is named by a
  digest of the source code of the modules that build operators (:data:`SOURCES`), so a
  graphop version whose builders differ never reads another's files: a changed
  hyperparameter is a different key, changed code a different folder.
* **Format.** ``numpy.savez`` of plain arrays (CSR ``indptr``, ``indices``, ``data``, the shape,
  ``n_basis``, ``n_out``, an optional ``extra`` array, the locality orders ``order_out`` /
  ``order_in`` when the operator has them, and ``in_order`` when the CSR arrays hold the
  matrix in that order, as an operator made in it keeps them), read with ``allow_pickle=False``:
  loading can never run code. A file that cannot be read or does not match is deleted and
  rebuilt. Files are written to a temporary name and renamed, so concurrent processes (DDP,
  ``graphop experiment --jobs``) never see half a file.
* **Size.** At most ``max_bytes`` (``$GRAPHOP_OPERATOR_STORE_BYTES``, default 8 GiB) per
  folder: after a write, the least recently used files (modification time, refreshed on every
  load) are deleted until the folder fits. An operator larger than the budget is not written.
* **Where.** ``graphop train`` uses ``<graphop cache>/operators`` (the user's cache directory,
  :func:`graphop.data.cache.cache_root`) unless ``operator_store: false`` is set in the
  training config or ``$GRAPHOP_OPERATOR_STORE=off``; ``$GRAPHOP_OPERATOR_STORE=PATH`` moves it.

Measured (``graphop bench train``, 64 meshes of ~1000 points, one thread): see the README's
performance notes for cold epochs built, cold epochs loaded from the store, and warm epochs.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graphop.errors import GraphopWarning
from graphop.layers.sparse import SparseOperator
from graphop.memory import env_bytes

__all__ = ["OperatorStore", "SOURCES", "code_digest"]

#: the modules whose code shapes a stored operator (relative to the graphop package)
SOURCES = ("jit.py", "geometry/cells.py", "geometry/neighbors.py", "geometry/sphere.py",
           "geometry/triangulate.py", "layers/basis.py", "layers/disco.py",
           "layers/disco_sphere.py", "layers/stencil.py", "layers/stencil_sphere.py",
           "layers/latent.py", "layers/spherical.py", "layers/sparse.py", "layers/store.py")
FORMAT = 3
_DIGEST: str | None = None


def code_digest() -> str:
    """16 hex digits of the sha256 of :data:`SOURCES` (and the file format)."""
    global _DIGEST
    if _DIGEST is None:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(f"format {FORMAT}".encode())
        for rel in SOURCES:
            path = root / rel
            h.update(rel.encode())
            h.update(path.read_bytes() if path.exists() else b"missing")
        _DIGEST = h.hexdigest()[:16]
    return _DIGEST


def _default_bytes() -> int:
    env = env_bytes("GRAPHOP_OPERATOR_STORE_BYTES")
    return 8 << 30 if env is None else env


class OperatorStore:
    """A folder of operators keyed by cache key (module docstring).

    Args:
        root: parent folder; files go to ``root/operators-<code digest>/``.
        max_bytes: folder budget in bytes (default ``$GRAPHOP_OPERATOR_STORE_BYTES`` or 8 GiB).

    Counters ``loads``, ``saves`` and ``failures`` (unreadable files and failed writes).
    """

    def __init__(self, root, max_bytes: int | None = None):
        self.root = Path(root).expanduser() / f"operators-{code_digest()}"
        self.max_bytes = _default_bytes() if max_bytes is None else int(max_bytes)
        self.loads = self.saves = self.failures = 0
        self._disabled = False
        self._total: int | None = None   # bytes in the folder, scanned once, then kept up

    def path(self, key) -> Path:
        return self.root / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".npz")

    def load(self, key):
        """The stored :class:`SparseOperator` of ``key``, or None (absent or unreadable)."""
        if self._disabled:
            return None
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                shape = tuple(int(s) for s in z["shape"])
                m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
                n_basis, n_out = int(z["n_basis"]), int(z["n_out"])
                extra = z["extra"] if "extra" in z.files else None
                orders = {k: z[k] if k in z.files else None for k in ("order_out", "order_in")}
                in_order = "in_order" in z.files
            m.check_format(full_check=False)
            op = SparseOperator(m, n_basis, n_out, extra=extra, in_order=in_order, **orders)
        except Exception:   # any unreadable or inconsistent file is a miss: rebuilt
            self.failures += 1
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)              # most recently used: last to be pruned
        except OSError:
            pass
        self.loads += 1
        return op

    def save(self, key, value) -> None:
        """Write ``value`` when it is a :class:`SparseOperator` that fits the budget."""
        if self._disabled or not isinstance(value, SparseOperator):
            return
        # the layout it was made in (an operator made in its locality order is saved in it)
        in_order = value.made_in_order
        m = value.ordered_csr() if in_order else value.matrix
        size = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        if size > self.max_bytes:
            return
        arrays = {"indptr": m.indptr, "indices": m.indices, "data": m.data,
                  "shape": np.asarray(m.shape, dtype=np.int64),
                  "n_basis": np.int64(value.n_basis), "n_out": np.int64(value.n_out)}
        if value.extra is not None:
            arrays["extra"] = np.asarray(value.extra)
        if in_order:
            arrays["in_order"] = np.int64(1)
        for k in ("order_out", "order_in"):    # the locality orders travel with the matrix
            if getattr(value, k) is not None:
                arrays[k] = getattr(value, k)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, **arrays)
                os.replace(tmp, self.path(key))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as err:       # read-only or full disk: say it once, then build only
            self.failures += 1
            self._disabled = True
            warnings.warn(f"operator store {self.root}: cannot write ({err}); operators are "
                          f"built in memory only for the rest of this process",
                          GraphopWarning, stacklevel=3)
            return
        self.saves += 1
        if self._total is None:
            self._total = self.nbytes        # includes the file just written
        else:
            self._total += self.path(key).stat().st_size
        if self._total > self.max_bytes:     # only then list the folder (not on every write)
            self._prune()

    def _prune(self) -> None:
        files = []
        for entry in os.scandir(self.root):
            if entry.name.endswith(".npz"):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, entry.path))
        total = sum(f[1] for f in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
        self._total = total

    @property
    def nbytes(self) -> int:
        """Bytes of the files in the store's folder."""
        if not self.root.exists():
            return 0
        return sum(e.stat().st_size for e in os.scandir(self.root) if e.name.endswith(".npz"))

    def __repr__(self) -> str:
        return (f"OperatorStore({str(self.root)!r}, loads={self.loads}, saves={self.saves}, "
                f"failures={self.failures})")
