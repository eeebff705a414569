"""``graphop bench TARGET [--json] [--points N]``: run a benchmark from graphop.bench.layers.TARGETS."""
from __future__ import annotations

import json

NAME = "bench"
HELP = "measure layer/model speed and memory against baselines"
DESCRIPTION = ("Run a benchmark and print its numbers and ratios (targets: "
               "see graphop.bench.layers.TARGETS). Not a test: nothing fails on a missed target.")


def add_arguments(parser) -> None:
    from graphop.bench.layers import TARGETS

    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--points", type=int, default=None, metavar="N",
                        help="mesh size (default: the target's own)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")


def run(args) -> int:
    from graphop.bench.layers import format_result, run_target
    from graphop.errors import GraphopError

    if args.points is not None and args.points < 100:
        raise GraphopError(f"--points must be at least 100, got {args.points}")
    if args.repeats is not None and args.repeats < 1:
        raise GraphopError(f"--repeats must be at least 1, got {args.repeats}")
    result = run_target(args.target, n_points=args.points, repeats=args.repeats,
                        device=args.device, progress=not args.json)
    print(json.dumps(result, indent=None if args.json else 2) if args.json
          else format_result(args.target, result))
    return 0
