"""Compiled kernels for the operator builds (numba), each beside its numpy reference.

An operator build walks every neighbour pair of a mesh: tens of millions at 100k points,
hundreds of millions at 1M. In numpy every step of it (basis values, masses, scales, sorting)
is a pass over arrays of that length with its temporaries; a compiled loop does the same
arithmetic in one pass per query point. :func:`kernel` compiles such a loop with numba on its
first call (``nogil``: the threads of :func:`graphop.layers.sparse.build_rows` run it in
parallel; ``cache``: compiled once per installation and kept on disk beside the module, or in
``$NUMBA_CACHE_DIR``. The first build after installing compiles the kernels, about 15 s on a
2-core machine, once; later processes load them in a fraction of a second).

The kernels: :func:`graphop.geometry.neighbors._cell_pass` (radius search on a cell list),
:func:`graphop.geometry.neighbors._morton_argsort` (points along a Z-order curve),
:func:`graphop.layers.disco._disco_rows_kernel` (DISCO rows, the cells' interpolation fused
in), :func:`graphop.layers.stencil._gradient_rows_kernel` (the mollifier gradient, over cells
with the interpolation fused in too),
:func:`graphop.layers.sparse._scatter_rows` (rows built in spatial order put back in order) and
:func:`graphop.layers.sparse._count_columns` / :func:`graphop.layers.sparse._scatter_columns`
(the counting transposes of :func:`graphop.layers.sparse.permute_csr` and
:func:`graphop.layers.sparse.transpose_sorted`).
At a million random points on 2 threads they build LocalGNO's operators in 18 s in 3D (numpy
31 s) and 44-51 s in 2D over the cells (232 s): ``graphop bench train`` times both paths
(``build_jit_speedup``), ``experiments/README.md`` has the tables.

The numpy code stays the reference: ``GRAPHOP_JIT=0`` (or numba missing) builds every operator
with it, and the tests compare the two paths entry by entry (same sparsity, values to 1e-12
relative). Standard library only at import, so every layer may import it.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings

from graphop.errors import GraphopWarning, InputError

__all__ = ["enabled", "kernel", "readonly", "thread_map"]

_lock = threading.Lock()


def enabled() -> bool:
    """Whether the compiled kernels run: numba importable and ``$GRAPHOP_JIT`` not ``0``
    (``1``/empty: on). Read at every call, so tests and users may switch it at run time."""
    env = os.environ.get("GRAPHOP_JIT", "").strip().lower()
    if env not in ("", "0", "1", "on", "off", "true", "false"):
        raise InputError(f"GRAPHOP_JIT must be 0 or 1, got {env!r}")
    if env in ("0", "off", "false"):
        return False
    return _numba_found()


@functools.lru_cache(maxsize=1)
def _numba_found() -> bool:
    """numba imports (once per process). Missing: the references run, silently; present but
    broken (e.g. built for another numpy): the references run, with one warning."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        import numba  # noqa: F401
    except Exception as exc:                   # an install numba itself refuses to run on
        warnings.warn(f"numba is installed but does not import ({exc}); operators are built "
                      f"with the slower numpy references", GraphopWarning, stacklevel=3)
        return False
    return True


def readonly(array):
    """A read-only view of ``array`` (no copy). numba compiles a kernel once per argument type,
    and a read-only array is another type than a writable one: the builders pass their
    read-only inputs (cached quadrature weights are read-only) always as such, so each kernel
    compiles once, not twice (measured: 13.6 s of compilation at the first 2D build)."""
    import numpy as np

    view = np.asarray(array).view()
    view.flags.writeable = False
    return view


def kernel(func):
    """``func`` (a module-level function in numba's subset of Python and numpy) compiled on
    its first call; the compiled function is kept for the process and cached on disk."""
    compiled = []

    @functools.wraps(func)
    def call(*args):
        if not compiled:
            with _lock:                      # one compilation when threads call it at once
                if not compiled:
                    import numba

                    try:
                        compiled.append(numba.njit(cache=True, nogil=True)(func))
                    except RuntimeError:         # no writable cache location: compile anew
                        compiled.append(numba.njit(nogil=True)(func))
        return compiled[0](*args)

    call.py_func = func
    return call


def thread_map(func, items, threads: int) -> list:
    """``[func(x) for x in items]`` on up to ``threads`` threads (in this thread when that is
    1 or there is one item): for work that releases the GIL (compiled ``nogil`` kernels, qhull,
    numpy). The results keep the items' order. An error in any item (or an interrupt) is
    raised here once the items being worked on have finished; the queued ones are dropped."""
    items = list(items)
    threads = max(1, int(threads))
    if threads == 1 or len(items) <= 1:
        return [func(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    # Executor.map cancels the queued items when one raises (or on Ctrl-C in the wait)
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="graphop") as ex:
        return list(ex.map(func, items))
