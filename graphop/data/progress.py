"""Progress reporting for long loops: the one helper every graphop progress bar goes through.

``progress(iterable, total=..., desc=...)`` gives

* a tqdm bar when the stream (default ``sys.stderr``) is a terminal;
* plain lines when it is not (a file, a pipe, a CI log): one line each time another
  ``1 / lines`` of ``total`` is done (``lines=10``: about one line per 10%), plus a last line
  at :meth:`close` when the final step did not print one; never carriage-return redraws.
  ``lines=0`` prints nothing off a terminal (for loops whose caller prints its own line, such
  as the trainer's one line per epoch);
* nothing at all when ``enabled=False`` or when progress is switched off for the whole process
  with :func:`set_enabled` (what ``graphop ... --no-progress`` does), so one switch silences
  every bar, the dataset's mesh reader included.

It lives in :mod:`graphop.data` because that is the lowest layer with a long loop (reading and
generating datasets); training, inference, experiments and the CLI import it from here.

Example:
    >>> for f in progress(files, desc="reading meshes", unit="file"):  # doctest: +SKIP
    ...     read(f)
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress", "set_enabled", "is_enabled", "write"]

_ENABLED = True


def set_enabled(flag: bool) -> None:
    """Switch every progress bar of this process on or off (default on)."""
    global _ENABLED
    _ENABLED = bool(flag)


def is_enabled() -> bool:
    """Whether progress output is on for this process (see :func:`set_enabled`)."""
    return _ENABLED


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def write(message: str, file=None) -> None:
    """Print ``message`` on its own line without breaking a tqdm bar that may be drawn."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=file or sys.stdout)
    (file or sys.stdout).flush()


class _Silent:
    """The do-nothing bar: same interface as tqdm (iteration, update, set_postfix, close)."""

    def __init__(self, iterable=None, total=None, initial: int = 0):
        self.iterable, self.total, self.n = iterable, total, initial

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines(_Silent):
    """Plain-line progress for streams that are not terminals: ``desc: n/total unit (p%),
    t s[, postfix]`` each time another 1/lines of the total is done."""

    def __init__(self, iterable, total, initial, desc, unit, file, lines):
        super().__init__(iterable, total, initial)
        self.desc, self.unit, self.file, self.lines = desc, unit, file, int(lines)
        self.t0 = time.perf_counter()
        self.postfix = ""
        self.step = -1 if not total or self.lines <= 0 else self._step(initial)
        self.printed_at = initial
        self.closed = False

    def _step(self, n: int) -> int:
        return int(n * self.lines // self.total)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.step >= 0:
            s = self._step(min(self.n, self.total))
            if s > self.step:
                self.step = s
                self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        total = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{pct}, {elapsed:.1f} s{tail}",
              file=self.file, flush=True)
        self.printed_at = self.n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.lines > 0 and self.n != self.printed_at:
            self._line()


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, file=None, lines: int = 10, initial: int = 0,
             leave: bool = False):
    """A progress bar over ``iterable`` (or driven by ``update``): see the module docstring.

    Args:
        iterable: what to iterate over (None: call ``update(k)`` yourself).
        total: number of steps (default ``len(iterable)`` when it has one).
        desc: the label in front of the bar or line.
        unit: what one step is (``"file"``, ``"sample"``, ``"batch"``).
        enabled: False gives a silent bar (so does :func:`set_enabled(False) <set_enabled>`).
        file: the stream (default ``sys.stderr``).
        lines: off a terminal, print about this many lines over ``total`` (default 10; 0 none).
        initial: steps already done (a resumed epoch).
        leave: keep the tqdm bar on the terminal after it closes (default False).

    Returns:
        an object with tqdm's interface: iteration, ``update``, ``set_postfix``, ``close``.
    """
    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    if not (enabled and _ENABLED):
        return _Silent(iterable, total, initial)
    file = file if file is not None else sys.stderr
    if _isatty(file):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=file,
                    leave=leave, dynamic_ncols=True)
    return _Lines(iterable, total, initial, desc, unit, file, lines)
