"""Cold epochs with and without the operator store (graphop/layers/store.py), measured back to
back in one process: 16 samples, each on its own ~1000-point mesh (the meshes of
graphop bench train), LocalGNO width 32, 4 layers, batch 8, forward + backward, one thread.
Prints per round the epoch time with every operator built, loaded from the store, and warm.

    python experiments/operator_store/check.py     (about 30 s)
"""
import tempfile
import time

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from graphop.bench.train import _model, _samples
from graphop.geometry.domains import mesh_domain
from graphop.layers.sparse import operator_cache
from graphop.layers.store import OperatorStore

torch.set_num_threads(1)
meshes = [mesh_domain("square", 1000, seed=i, perturb=0.3) for i in range(16)]
samples = _samples(meshes, np.random.default_rng(1))[:16]
model = _model(samples, ("global", "disco", "diff"))


def epoch() -> float:
    t = time.perf_counter()
    for batch in DataLoader(samples, batch_size=8):
        model(batch).square().mean().backward()
    return time.perf_counter() - t


with tempfile.TemporaryDirectory() as tmp:
    operator_cache.store = OperatorStore(tmp)
    operator_cache.clear()
    epoch()                                   # writes every operator
    for _ in range(3):
        operator_cache.store = None
        operator_cache.clear()
        built = epoch()
        operator_cache.store = OperatorStore(tmp)
        operator_cache.clear()
        stored = epoch()
        operator_cache.store = None
        warm = epoch()
        print(f"epoch built {built:.3f} s, from the store {stored:.3f} s, warm {warm:.3f} s")
