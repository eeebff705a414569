"""Test-session settings: one intra-op thread per test process.

``make test`` runs two pytest-xdist workers on a 2-core machine; letting each use two torch
threads oversubscribes the cores, and torch's parallel regions then stall on descheduled threads
(measured here: a 4 ms spectral product taking seconds).
"""
import torch

torch.set_num_threads(1)
