"""Operators of a dataset built before training, in parallel worker processes.

A dataset with one mesh per sample spends its first epoch building operators (DISCO, stencil,
mollifier, latent encoder and decoder: measured at 5 samples/s cold against 46 warm on
~1000-point meshes), one geometry after another in the training process. The operator store
(:mod:`graphop.layers.store`) keeps what is built for later runs; this module fills it first,
with ``workers`` processes that each build the model from its config and run a forward pass
(no gradients) on their share of the distinct geometries, so that the first epoch loads the
operators from the store instead of building them.

Rules:

* Only with the store on (the workers hand their operators over through it), for a model
  that :func:`graphop.models.build_model` rebuilds from its config, and for at least
  :data:`MIN_GEOMETRIES` distinct geometries (a dataset whose samples share a few meshes builds
  them in the first batches anyway). ``auto`` also builds the first two geometries in the
  training process, times the second (the first pays the process's one-time costs), and
  prebuilds the rest only when all of them would take at least :data:`MIN_SECONDS` (a
  global-only model's operators build faster than workers start).
* Geometries are told apart by the content keys of :func:`graphop.layers.sparse.graph_set`;
  the samples are the ones the model sees (normalised, as the trainer's datasets give them).
* Workers start the platform's way (fork on Linux, as torch's DataLoader workers do; where it
  is spawn, a script that trains must keep its entry under ``if __name__ == "__main__":``).
  Each worker runs one torch thread and empties its in-memory cache after every chunk: what it
  built is on disk. A worker that fails (or dies) stops the pool, and the training builds what
  is missing itself (the trainer warns why).
* A geometry already in the store costs its workers a load, not a build.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from graphop.layers.sparse import graph_set, operator_cache, to_device

__all__ = ["prebuild_operators", "prebuild_for", "distinct_samples", "auto_workers",
           "probe_seconds", "MIN_GEOMETRIES", "MIN_SECONDS"]

#: fewer distinct geometries than this are built by the training itself
MIN_GEOMETRIES = 32

#: ``auto`` prebuilds only when the operators of every geometry would take at least this long to
#: build in the training process (estimated from the second geometry, timed): the workers'
#: start and the round trip through the store cost a few seconds. Measured with 64 ~1000-point
#: meshes on 2 processes: with the numpy builders LocalGNO's operators (~13 s in the first
#: epoch) trained its first epoch 1.8x faster prebuilt, the global-only model's encoder and
#: decoder (~1 s) 0.6x; with the compiled builders (:mod:`graphop.jit`, ~5 s) LocalGNO 0.96x:
#: break-even near 5 s, so prebuilding starts above 8 s.
MIN_SECONDS = 8.0

_MODEL = None


def distinct_samples(datasets) -> list:
    """One sample per distinct geometry (positions, weights, torus box and cells) of the
    ``datasets``, in order of first appearance."""
    seen, out = set(), []
    for ds in datasets:
        for i in range(len(ds)):
            s = ds[i]
            key = graph_set(s, need_weight=getattr(s, "weight", None) is not None,
                            cells=True).keys[0]
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def _init_worker(model_config, store_root, store_bytes):
    global _MODEL
    torch.set_num_threads(1)
    os.environ["GRAPHOP_BUILD_THREADS"] = "1"      # one thread per worker, builds included
    from graphop.layers.store import OperatorStore
    from graphop.models import build_model

    _MODEL = build_model(model_config).eval()
    operator_cache.store = OperatorStore(store_root, max_bytes=store_bytes)


def _build_chunk(samples) -> int:
    """Forward passes on ``samples``: the number of operators built or loaded."""
    before = operator_cache.misses
    with torch.no_grad():
        for s in samples:
            _MODEL(s)
    n = operator_cache.misses - before
    operator_cache.clear()
    return n


def prebuild_operators(model_config: dict, samples: list, workers: int, *, progress=None,
                       chunk: int = 4) -> dict:
    """Build the operators of ``model_config`` for every sample of ``samples`` (one per
    geometry, see :func:`distinct_samples`) in ``workers`` processes, into the store of
    :data:`graphop.layers.sparse.operator_cache`.

    Args:
        model_config: a config :func:`graphop.models.build_model` accepts (supports resolved).
        samples: Data objects, as the model sees them.
        workers: processes (>= 1).
        progress: an object with ``update(k)`` (a progress bar over the samples), or None.
        chunk: samples per task.

    Returns:
        ``{"geometries", "workers", "operators", "seconds"}``, or ``{"skipped": reason}``.
    """
    store = operator_cache.store
    if store is None:
        return {"skipped": "the operator store is off"}
    if mp.parent_process() is not None:
        return {"skipped": "this is a worker process"}
    if workers < 1:
        return {"skipped": f"workers = {workers}"}
    tasks = [samples[i:i + chunk] for i in range(0, len(samples), chunk)]
    t0 = time.perf_counter()
    n_ops = 0
    # the platform's default start method (fork on Linux, as torch's DataLoader workers): a
    # spawned worker re-runs the user's script unless its entry is under a __main__ guard;
    # an executor, not a Pool: a worker that dies breaks it with an error instead of being
    # replaced forever
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(), initializer=_init_worker,
                             initargs=(model_config, str(store.root.parent),
                                       store.max_bytes)) as pool:
        for n, task in zip(pool.map(_build_chunk, tasks), tasks):
            n_ops += n
            if progress is not None:
                progress.update(len(task))
    return {"geometries": len(samples), "workers": int(workers), "operators": n_ops,
            "seconds": time.perf_counter() - t0}


def auto_workers(n_geometries: int, threads: int | None = None) -> int:
    """Workers for ``prebuild_workers: auto``: the torch threads this process was given (the
    CPU budget the user chose, e.g. ``graphop --threads``), at most 8 and at most the CPUs, and
    0 when that is 1 or the dataset has fewer than :data:`MIN_GEOMETRIES` geometries."""
    threads = torch.get_num_threads() if threads is None else int(threads)
    n = min(threads, os.cpu_count() or 1, 8)
    return n if n >= 2 and n_geometries >= MIN_GEOMETRIES else 0


def probe_seconds(model, sample, device="cpu") -> float:
    """Seconds of a forward pass (no gradients) of ``model`` on ``sample`` with an empty
    in-memory cache for its geometry: the time to build (or load) its operators, measured in
    this process. The operators it builds stay cached and stored."""
    was = model.training
    model.eval()
    t = time.perf_counter()
    try:
        with torch.no_grad():
            model(to_device(sample, device))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was)
    return time.perf_counter() - t


def prebuild_for(module, model_config: dict, datasets, device="cpu", mode: str = "auto",
                 show_progress: bool = True, who: str = "graphop train") -> dict | None:
    """The rules of the module docstring for ``module`` (the model in this process, built from
    ``model_config``) and the distinct geometries of ``datasets`` (samples as the model sees
    them; not read when ``auto`` could not prebuild anyway): ``mode`` ``"auto"``, ``"0"``
    (off) or a number of processes. Returns
    :func:`prebuild_operators`' result, or None when nothing was prebuilt; workers that fail
    are a warning (whatever is missing is built later, where it is needed), not an error."""
    import warnings

    from graphop.data.progress import progress
    from graphop.errors import GraphopWarning
    from graphop.models import build_model

    if operator_cache.store is None or str(mode) == "0":
        return None
    auto = str(mode) == "auto"
    # before reading the data: would enough threads (or the number asked for) allow workers?
    wanted = auto_workers(MIN_GEOMETRIES) if auto else int(mode)
    if wanted < 1 or (auto and sum(len(ds) for ds in datasets) < MIN_GEOMETRIES):
        return None
    samples = distinct_samples(datasets)
    if not samples:
        return None
    try:
        build_model(model_config)
    except Exception:                  # a model that its config cannot make: no workers
        return None
    workers = auto_workers(len(samples)) if auto else min(wanted, len(samples))
    if workers < 1:
        return None
    if auto:        # worth the workers' start? time the second geometry's build (the first
        #             pays the process's one-time costs: imports, tables, first calls)
        probe_seconds(module, samples[0], device)
        if probe_seconds(module, samples[1], device) * len(samples) < MIN_SECONDS:
            return None
        samples = samples[2:]
    bar = progress(total=len(samples), desc="building operators", unit="mesh",
                   enabled=show_progress)
    try:
        res = prebuild_operators(model_config, samples, workers, progress=bar)
    except Exception as exc:
        warnings.warn(f"building operators in {workers} processes failed "
                      f"({type(exc).__name__}: {exc}); they are built where they are needed",
                      GraphopWarning, stacklevel=2)
        return None
    finally:
        bar.close()
    if "skipped" in res:
        return None
    print(f"{who}: operators of {res['geometries']} geometries built or loaded in "
          f"{res['workers']} processes in {res['seconds']:.1f} s", flush=True)
    return res
