"""The worker process of ``graphop train --nproc N``: ``torchrun -m graphop.cli.worker`` runs one
of these per rank, with the same arguments as ``graphop train``. Errors are one line per rank."""
from __future__ import annotations

import argparse
import os
import sys

from graphop.cli import out_of_memory_message
from graphop.cli import train as cli_train
from graphop.errors import GraphopError
from graphop.training.distributed import teardown


def main(argv=None) -> int:
    """Entry point of ``python -m graphop.cli.worker`` / ``torchrun -m graphop.cli.worker``: the same
    arguments as ``graphop train``."""
    parser = argparse.ArgumentParser(prog="python -m graphop.cli.worker", description=cli_train.HELP)
    parser.add_argument("--debug", action="store_true")
    cli_train.add_arguments(parser)
    args = parser.parse_args(argv)
    from graphop.cli import _one_line_warnings

    _one_line_warnings()
    if getattr(args, "no_progress", False):
        from graphop.data.progress import set_enabled

        set_enabled(False)  # a process of its own: every bar of this rank
    try:
        return int(cli_train.run(args) or 0)
    except (GraphopError, FileNotFoundError, MemoryError, RuntimeError) as exc:
        oom = out_of_memory_message(exc)
        if args.debug or (isinstance(exc, (MemoryError, RuntimeError)) and oom is None):
            raise
        rank = int(os.environ.get("RANK", "0"))
        prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{prefix}graphop: error: {oom or ' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())
