"""The ``graphop`` command line: one module per subcommand in this package.

Each subcommand module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``
(returning an exit code or None). Modules are discovered from this package, so adding a
subcommand is adding a file.

User errors (bad files, bad configs, bad data) print one line ``graphop: error: ...`` and exit
with code 2; ``--debug`` shows the full traceback instead. Running out of memory (a
``MemoryError``, or torch's out-of-memory errors) is one line too, exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["main", "build_parser"]


def _subcommand_modules():
    pkg = sys.modules[__name__]
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "run") and hasattr(mod, "add_arguments"):
            yield mod


def build_parser() -> argparse.ArgumentParser:
    from graphop import __version__

    parser = argparse.ArgumentParser(
        prog="graphop",
        description="Localized neural operators on unstructured meshes and point clouds.")
    parser.add_argument("--version", action="version", version=f"graphop {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks instead of one-line errors")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true",
                        help="no progress bars or progress lines (every subcommand; off a "
                             "terminal, bars print plain lines instead of redrawing)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's choice). On a busy machine "
                             "use 1: parallel regions stall on descheduled threads")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _subcommand_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks instead of one-line errors")
        mod.add_arguments(p)
        if "--no-progress" not in p._option_string_actions:
            p.add_argument("--no-progress", dest="no_progress", action="store_true",
                           default=argparse.SUPPRESS, help="no progress bars or progress lines")
        p.set_defaults(_run=mod.run)
    return parser


def _user_error_types():
    from graphop.errors import GraphopError

    return (GraphopError, FileNotFoundError, IsADirectoryError, PermissionError)


def out_of_memory_message(exc: BaseException) -> str | None:
    """The one-line report for an out-of-memory exception (``MemoryError``, torch's
    ``OutOfMemoryError`` or its CPU allocator's failure), else None."""
    text = " ".join(str(exc).split())
    torch = sys.modules.get("torch")
    oom = isinstance(exc, MemoryError)
    if not oom and torch is not None:
        oom = isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or (
            isinstance(exc, RuntimeError) and any(
                m in text for m in ("can't allocate memory", "not enough memory",
                                    "out of memory")))
    if not oom:
        return None
    text = text.split("DefaultCPUAllocator: ")[-1]   # drop torch's "[enforce fail at ...]"
    detail = f" ({text[:200]})" if text else ""
    return (f"out of memory{detail}; the request is too large for this machine: use smaller "
            "meshes, a smaller radius or batch size, or a machine with more memory")


def _one_line_warnings() -> None:
    """Print graphop's own warnings (:class:`graphop.errors.GraphopWarning`) as one line
    ``graphop: warning: ...``, without Python's file/line/source lines."""
    import warnings

    from graphop.errors import GraphopWarning

    default = warnings.showwarning
    if getattr(default, "_graphop", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GraphopWarning):
            print(f"graphop: warning: {' '.join(str(message).split())}",
                  file=file or sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    show._graphop = True
    warnings.showwarning = show


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    _one_line_warnings()
    from graphop.data.progress import is_enabled, set_enabled

    progress_before = is_enabled()
    if getattr(args, "no_progress", False):
        set_enabled(False)  # every bar of this command, the dataset's mesh reader included
    try:
        code = args._run(args)
    except _user_error_types() as exc:
        if args.debug:
            raise
        msg = str(exc) or exc.__class__.__name__
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror or msg}"
        print(f"graphop: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphop: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        msg = out_of_memory_message(exc)
        if msg is None or args.debug:
            raise
        print(f"graphop: error: {msg}", file=sys.stderr)
        return 2
    finally:
        set_enabled(progress_before)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
