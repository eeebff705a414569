"""Test-session settings: one intra-op thread per test process.

``make test`` runs two pytest-xdist workers on a 2-core machine; letting each use two torch
threads oversubscribes the cores, and torch's parallel regions then stall on descheduled threads
(measured here: a 4 ms spectral product taking seconds).
"""
import torch

torch.set_num_threads(1)


import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_graphop_cache(tmp_path_factory):
    """Point graphop's user cache (``$GRAPHOP_CACHE``) at a temporary folder for the whole
    session, subprocesses included, so the suite never writes into the real home directory.
    The operator store is off (``$GRAPHOP_OPERATOR_STORE``): tests that count or intercept
    operator builds must see them built; tests/test_store.py turns it on where it tests it."""
    import os

    old = os.environ.get("GRAPHOP_CACHE")
    os.environ["GRAPHOP_CACHE"] = str(tmp_path_factory.mktemp("graphop_cache"))
    os.environ["GRAPHOP_OPERATOR_STORE"] = "off"
    yield
    if old is None:
        os.environ.pop("GRAPHOP_CACHE", None)
    else:
        os.environ["GRAPHOP_CACHE"] = old
