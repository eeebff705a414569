"""Autoregressive rollout of a one-step model, and its error curve.

A model trained on a map ``state(t) -> state(t + dt)`` whose inputs and targets are the same
fields at consecutive frames (inputs ``h0, zeta0, delta0``, targets ``h1, zeta1, delta1``, as
``graphop generate swe`` writes them) is applied to its own output ``K`` times:

    s_1 = M(s_0),  s_k = M(s_{k-1})  (k = 2 .. K)

and each ``s_k`` is compared with the frame-k fields of the file (``h2, zeta2, delta2``, ...;
``graphop generate swe --set n_frames=K``) by the quadrature-weighted relative L2 error.
The input of step k is the prediction in physical units, re-encoded by the model's normaliser
exactly as a file's fields would be, so a step sees the same kind of input at every k.

Frame names: a field is ``<stem><k>``; the model's inputs must all end in the same frame index
``k0`` and its targets in ``k0 + 1`` with the same stems in the same order
(:func:`frame_stems`).
"""
from __future__ import annotations

import re

import numpy as np
import torch

from graphop.data.normalize import check_sample
from graphop.data.sample import mesh_to_sample
from graphop.errors import DataError
from graphop.layers.sparse import to_device
from graphop.training.metrics import relative_l2

__all__ = ["frame_stems", "rollout_mesh", "rollout_files", "plot_rollout"]

_FRAME = re.compile(r"^(.*?)(\d+)$")


def frame_stems(inputs, targets) -> tuple[list[str], int]:
    """``(stems, k0)`` for inputs ``[s0 + str(k0), ...]`` and targets ``[s0 + str(k0 + 1), ...]``.

    Raises:
        DataError: the names are not consecutive frames of the same fields.
    """
    def split(names):
        out = []
        for n in names:
            m = _FRAME.match(n)
            if not m:
                raise DataError(f"field {n!r} has no frame index (a rollout needs names like "
                                "'h0' -> 'h1')")
            out.append((m.group(1), int(m.group(2))))
        return out

    ins, outs = split(inputs), split(targets)
    k_in, k_out = {k for _, k in ins}, {k for _, k in outs}
    if [s for s, _ in ins] != [s for s, _ in outs] or len(k_in) != 1 or len(k_out) != 1 \
            or k_out.pop() != next(iter(k_in)) + 1:
        raise DataError(f"a rollout needs targets that are the inputs one frame later, got "
                        f"inputs {list(inputs)} and targets {list(targets)}")
    return [s for s, _ in ins], next(iter(k_in))


@torch.no_grad()
def rollout_mesh(model, normalizer, mesh, inputs, targets, steps: int | None = None,
                 device="cpu") -> list[float]:
    """Relative L2 error of the k-step rollout on ``mesh`` for k = 1 .. steps (default: every
    frame the file holds)."""
    stems, k0 = frame_stems(inputs, targets)
    have = 0
    while all(f"{s}{k0 + have + 1}" in mesh.point_data for s in stems):
        have += 1
    steps = have if steps is None else int(steps)
    if steps < 1 or steps > have:
        raise DataError(f"{mesh.source}: {have} frame(s) after the input, asked for {steps} "
                        f"rollout step(s)")
    state = mesh
    errors = []
    for k in range(1, steps + 1):
        names = [f"{s}{k0 + k}" for s in stems]
        data = mesh_to_sample(state, list(inputs), names, require_targets=True)
        check_sample(data)
        pred = normalizer.decode(model(to_device(normalizer.encode(data), device))).cpu()
        errors.append(float(relative_l2(pred, data.y, data.weight)))
        p = pred.double().numpy()
        state = state.with_point_data(**{n: p[:, j] for j, n in enumerate(inputs)})
    return errors


def rollout_files(checkpoint, files, steps: int | None = None, device="cpu") -> dict:
    """Rollout errors of a trained checkpoint over mesh files: ``{"steps": [1..K],
    "rel_l2": [mean error per step], "per_file": [[errors], ...]}``."""
    from graphop.io import read_mesh
    from graphop.training.checkpoint import load_trained_model

    model, normalizer, ckpt = load_trained_model(checkpoint, device)
    tc = ckpt["train_config"]
    per = [rollout_mesh(model, normalizer, read_mesh(f), tc["inputs"], tc["targets"], steps,
                        device) for f in files]
    if not per:
        raise DataError("no files to roll out")
    K = min(len(e) for e in per)
    mean = np.mean([e[:K] for e in per], axis=0)
    return {"steps": list(range(1, K + 1)), "rel_l2": [float(v) for v in mean], "per_file": per}


def plot_rollout(result: dict, path):
    """The error curve (mean and every file) as a PNG at ``path``; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from pathlib import Path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for e in result["per_file"]:
        ax.plot(range(1, len(e) + 1), e, color="0.8", lw=0.8)
    ax.plot(result["steps"], result["rel_l2"], "o-", color="C0", label="mean")
    ax.set_xlabel("rollout step")
    ax.set_ylabel("relative L2 error")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
