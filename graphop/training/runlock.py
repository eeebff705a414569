"""One process per run directory: an advisory lock on ``RUN_DIR/.lock``.

A training process takes the lock before it looks at, or writes into, its run directory, and
holds it for the rest of its life (the kernel drops it when the process exits, however it exits,
kill -9 included). A second ``graphop train`` into the same ``--out``, or a ``--resume`` of a run
that is still training, then fails at once with :class:`RunLockedError` naming the holder's PID,
instead of two processes overwriting each other's checkpoints and TensorBoard files. Under
DistributedDataParallel only rank 0 takes it (the other ranks of the same job never write).

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN_DIR/.lock``, with the holder's PID and
host written inside for the message. ``flock`` works on local file systems; on NFS it may be a
no-op, in which case the lock protects nothing but also blocks nothing. On a platform without
``fcntl`` the lock is skipped.

Taking the lock also removes what checkpoint writers killed mid-write left behind
(:func:`graphop.training.checkpoint.remove_stale_temporaries`): safe then, because no other
process writes into the directory.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from graphop.errors import GraphopError

__all__ = ["RunLockedError", "claim_run_dir", "release_run_dir", "LOCK_NAME"]

LOCK_NAME = ".lock"

# resolved run directory -> open file holding the lock (kept open: closing it drops the lock)
_HELD: dict = {}


class RunLockedError(GraphopError):
    """Another live process is training in this run directory."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


def claim_run_dir(run_dir) -> Path:
    """Take the run lock on ``run_dir`` (created if missing) for the life of this process, and
    remove stale checkpoint temporaries there. Claiming a directory this process already holds
    is a no-op.

    Returns:
        the lock file's path.

    Raises:
        RunLockedError: another process holds the lock (the message names its PID).
    """
    from graphop.training.checkpoint import remove_stale_temporaries

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    path = run_dir / LOCK_NAME
    if key in _HELD:
        remove_stale_temporaries(run_dir)
        return path
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        remove_stale_temporaries(run_dir)
        return path
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        fh.close()
        raise RunLockedError(f"{run_dir}: {_holder(path)} is already training in this run "
                             "directory; wait for it to finish, stop it, or choose another "
                             "--out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    _HELD[key] = fh
    remove_stale_temporaries(run_dir)
    return path


def release_run_dir(run_dir) -> None:
    """Drop the lock this process holds on ``run_dir`` (no-op when it holds none)."""
    fh = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fh is not None:
        fh.close()
