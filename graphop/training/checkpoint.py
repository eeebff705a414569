"""Checkpoints: atomic, safe to load, and self-describing.

A checkpoint is a plain dict saved with ``torch.save`` and loaded with
``torch.load(weights_only=True)``: it holds only tensors, numbers, strings, None, lists and
dicts, so loading one can never execute code. Contents (see :func:`make_checkpoint`)::

    format, version          "graphop-checkpoint", 2 (version 1 loads: see _upgrade)
    model_config             dict that graphop.models.build_model rebuilds the model from
    model                    the model's state_dict
    optimizer, scheduler     their state_dicts (scheduler may be None)
    normalizer               graphop.data.normalize.Normalizer.state_dict()
    train_config             the TrainConfig as a dict (inputs, targets, ...)
    epoch                    number of completed epochs
    step_in_epoch            batches already done in epoch ``epoch`` (> 0 only for a
                             checkpoint written on Ctrl-C / SIGTERM in the middle of an epoch)
    partial                  running sums of that unfinished epoch
    history                  list of per-epoch metric dicts (the loss curve so far)
    best_metric, best_epoch  best validation relative L2 so far
    rng                      torch (+cuda), numpy and python RNG states

Saving is atomic: the file is written to a temporary name in the same folder, flushed to disk
and renamed over the target with ``os.replace``, so an interruption leaves either the old or
the new checkpoint, never a truncated one. A temporary left by a process killed mid-write
(``.best.pt.tmp<pid>``) is removed by :func:`remove_stale_temporaries` when a run directory is
next claimed (see :mod:`graphop.training.runlock`).

A corrupted or truncated file, a file that is not a graphop checkpoint, or a checkpoint whose
weights do not fit the model it is loaded into raise :class:`graphop.errors.GraphopError` with
a message naming the file and the problem.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from graphop.errors import GraphopError, InputTypeError

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "resolve_checkpoint",
           "load_model_state", "rng_state", "set_rng_state", "load_trained_model",
           "remove_stale_temporaries"]

FORMAT = "graphop-checkpoint"
VERSION = 4
_PLAIN = (bool, int, float, str, type(None))


def _check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError if ``obj`` holds anything weights_only loading would refuse."""
    if isinstance(obj, (torch.Tensor,) + _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise InputTypeError(f"{where}: dict key {k!r} is not a str/int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise InputTypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights_only checkpoint")


def rng_state() -> dict:
    """The torch (and CUDA), numpy and python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": int(version),
                        "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    _check_plain(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporaries (``.NAME.tmp<pid>``, as :func:`save_checkpoint` and the run log
    write them) that processes no longer alive left in ``folder`` (e.g. killed with -9 in the
    middle of a write); those of live processes are kept. Returns the removed paths."""
    removed = []
    for p in Path(folder).glob(".*.tmp*"):
        m = _TMP_NAME.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def resolve_checkpoint(path, prefer: str = "best") -> Path:
    """A checkpoint file from a file path or a run directory (``best.pt``, else ``last.pt``;
    ``prefer="last"`` swaps the order)."""
    p = Path(path)
    if p.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (p / name).is_file():
                return p / name
        raise GraphopError(f"{p}: no checkpoint in this directory (expected {order[0]} or "
                           f"{order[1]}; is it a graphop run directory?)")
    if not p.exists():
        raise GraphopError(f"{p}: no such checkpoint file or run directory")
    return p


def _library_text(exc: BaseException) -> str:
    """The whole text of a library's exception on one line (ANSI colour codes removed), except
    torch's advice for files refused by ``weights_only=True`` loading: of that, only the
    ``WeightsUnpickler error`` sentence naming the refused object is kept (graphop never
    suggests ``weights_only=False`` or allow-listing a foreign class)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = re.split(r"\.\s+Please use|\n\s*\n|Check the documentation", text)[0]
    text = " ".join(text.split()).strip()
    if "weights_only" in text:  # any other wording of the same advice: drop those sentences
        text = " ".join(s for s in re.split(r"(?<=[.!?])\s+", text) if "weights_only" not in s)
    return text or exc.__class__.__name__


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        GraphopError: unreadable/corrupted file, foreign objects, or not a graphop checkpoint.
    """
    p = resolve_checkpoint(path)
    if p.stat().st_size == 0:
        raise GraphopError(f"{p}: the checkpoint file is empty")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged archives
        text = _library_text(exc)
        if "Unsupported global" in text or "WeightsUnpickler error:" in text:
            raise GraphopError(f"{p}: refusing to load: the file holds Python objects other than "
                               f"tensors and plain data ({text}); a graphop checkpoint "
                               "never does") from exc
        raise GraphopError(f"{p}: corrupted or truncated checkpoint, cannot be read "
                           f"({exc.__class__.__name__}: {text})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GraphopError(f"{p}: not a graphop checkpoint (no 'format: {FORMAT}' entry; a bare "
                           "state_dict or another program's file?)")
    if int(state.get("version", 0)) > VERSION:
        raise GraphopError(f"{p}: checkpoint version {state.get('version')} is newer than this "
                           f"graphop understands ({VERSION})")
    for key in ("model_config", "model", "normalizer", "train_config"):
        if key not in state:
            raise GraphopError(f"{p}: incomplete checkpoint (missing {key!r})")
    _upgrade(state)
    state["path"] = str(p)
    return state


def _upgrade(state: dict) -> None:
    """Pin what a newer default would change in an older checkpoint's model. Version 1: the
    DISCO branches were normalised by ``r^d ||psi_l||_1`` (``normalize="l1"``); version 2 records
    the normalisation in ``disco_kwargs`` (default ``"quadrature"``). Versions 1 and 2: the grid
    encoder was the plain local average (``encoder_floor=0``) and every integral operator summed
    over the nodes (``quadrature="points"``), and the differential branch applied its stencil
    to the mollified field (``diff_kwargs["gradient"] = "stencil"``); version 3 records all
    three (defaults 0.5, ``"cells"``, ``"kernel"``). Versions up to 3: ``"cells"`` summed over
    the nodes on a torus; version 4 integrates a torus over its cells (a planar cloud over its
    periodic triangulation), so older ``"cells"`` models become ``"cells-except-torus"``
    (identical off the torus)."""
    mc = state["model_config"]
    version = int(state.get("version", 0))
    if not isinstance(mc, dict):
        return
    if version < 2 and mc.get("name") == "local_gno" and "disco" in (mc.get("branches") or ()):
        mc["disco_kwargs"] = {"normalize": "l1", **(mc.get("disco_kwargs") or {})}
    if version < 3 and mc.get("name") in ("local_gno", "gino", "disco_only"):
        mc.setdefault("quadrature", "points")
        if mc.get("name") == "gino" or "global" in (mc.get("branches") or ()):
            mc.setdefault("encoder_floor", 0.0)
        if mc.get("name") == "local_gno" and "diff" in (mc.get("branches") or ()):
            mc["diff_kwargs"] = {"gradient": "stencil", **(mc.get("diff_kwargs") or {})}
    if version < 4 and mc.get("name") in ("local_gno", "gino", "disco_only"):
        if mc.get("quadrature", "cells") == "cells":
            mc["quadrature"] = "cells-except-torus"
        for key in ("disco_kwargs", "diff_kwargs"):
            if isinstance(mc.get(key), dict) and mc[key].get("quadrature") == "cells":
                mc[key] = {**mc[key], "quadrature": "cells-except-torus"}


def _model_name(cfg) -> str:
    return str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?"


def load_model_state(model: torch.nn.Module, ckpt: dict, expected_config: dict | None = None
                     ) -> None:
    """Load ``ckpt["model"]`` into ``model``; a checkpoint written for another model (other
    name, other hyper-parameters or other parameter shapes) raises :class:`GraphopError`
    naming what differs."""
    src = ckpt.get("path", "checkpoint")
    saved = ckpt.get("model_config", {})
    if expected_config is not None and dict(saved) != dict(expected_config):
        keys = sorted(set(saved) | set(expected_config))
        diff = [f"{k}: {saved.get(k, '<unset>')!r} in the checkpoint vs "
                f"{expected_config.get(k, '<unset>')!r}" for k in keys
                if saved.get(k, "<unset>") != expected_config.get(k, "<unset>")]
        raise GraphopError(f"{src}: checkpoint is from another model "
                           f"({_model_name(saved)}); differences: {'; '.join(diff[:6])}")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        raise GraphopError(f"{src}: checkpoint is from another model ({_model_name(saved)}): its "
                           f"weights do not fit: {' '.join(lines)}") from exc


def load_trained_model(path, device="cpu"):
    """(model, normalizer, checkpoint) from a checkpoint file or run directory, ready for
    inference (``model.eval()``, on ``device``)."""
    from graphop.data.normalize import Normalizer

    ckpt = load_checkpoint(path)
    try:
        from graphop.models import build_model
    except ImportError as exc:  # pragma: no cover - models package missing
        raise GraphopError(f"cannot rebuild the model: {exc}") from exc
    cfg = dict(ckpt["model_config"])
    try:
        model = build_model(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise GraphopError(f"{ckpt['path']}: cannot rebuild model {_model_name(cfg)!r} from the "
                           f"checkpoint ({exc})") from exc
    load_model_state(model, ckpt)
    model.to(device).eval()
    return model, Normalizer.from_state_dict(ckpt["normalizer"]), ckpt
