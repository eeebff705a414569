"""How much memory this process may still allocate, and a guard that refuses what cannot fit.

Large requests (a mesh of 10^9 points, a DISCO radius that covers the whole mesh) are sized
before anything is allocated and refused with one line, instead of growing until the kernel
kills the process. The available memory is the smallest of:

* ``MemAvailable`` from ``/proc/meminfo`` (else the physical memory, ``os.sysconf``);
* the address-space limit ``RLIMIT_AS`` minus the address space already mapped (``VmSize``),
  when a limit is set (``ulimit -v``);
* the control group's ``memory.max`` minus ``memory.current`` (cgroup v2; v1's
  ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``), when a limit is set.

Standard library only, so every layer may import it.
"""
from __future__ import annotations

import os

from graphop.errors import InputError, MemoryLimitError

__all__ = ["available_memory", "format_bytes", "check_memory", "env_bytes"]


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def env_bytes(name: str) -> int | None:
    """The byte count in environment variable ``name`` (``"8e9"``, ``"4294967296"``), or None
    when it is unset or empty.

    Raises:
        InputError: a value that is not a non-negative number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InputError(f"{name} must be a number of bytes, got {text!r}")
    return int(value)


def available_memory() -> tuple[int | None, str]:
    """``(bytes, where)``: the memory this process may still allocate and which limit set it
    (``"available RAM"``, ``"the address-space limit (ulimit -v)"``, ``"the cgroup memory
    limit"``); ``(None, "unknown")`` where nothing can be read."""
    found = []
    ram = _proc_kib("/proc/meminfo", "MemAvailable")
    if ram is None:
        try:
            ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            ram = None
    if ram is not None:
        found.append((ram, "available RAM"))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = _proc_kib("/proc/self/status", "VmSize") or 0
            found.append((max(soft - used, 0), "the address-space limit (ulimit -v)"))
    except (ImportError, ValueError, OSError):
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")
    if limit is not None:
        used = _read_int("/sys/fs/cgroup/memory.current") or 0
        found.append((max(limit - used, 0), "the cgroup memory limit"))
    else:
        limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        if limit is not None and limit < 1 << 60:
            used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
            found.append((max(limit - used, 0), "the cgroup memory limit"))
    if not found:
        return None, "unknown"
    return min(found)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (``"3.2 GB"``, decimal units)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def check_memory(needed: float, what: str, hint: str = "") -> None:
    """Raise :class:`graphop.errors.MemoryLimitError` when ``needed`` bytes exceed what
    :func:`available_memory` reports (nothing is checked where that is unknown).

    Args:
        needed: estimated peak bytes of the request.
        what: the request, named for the message (e.g. ``"generate darcy with 10^9 points"``).
        hint: what to change, appended to the message.
    """
    have, where = available_memory()
    if have is None or needed <= have:
        return
    msg = (f"{what} would need about {format_bytes(needed)} of memory, but only "
           f"{format_bytes(have)} is available ({where})")
    raise MemoryLimitError(f"{msg}; {hint}" if hint else msg)
