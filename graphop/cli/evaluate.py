"""``graphop evaluate``: metrics of a trained model per split, domain family and resolution."""
from __future__ import annotations

import json

NAME = "evaluate"
HELP = "evaluate a checkpoint or run directory on a dataset (tables, JSON, sample PNGs)"
DESCRIPTION = """Evaluate a trained model. RUN_DIR_OR_CKPT is a run directory (its best.pt is
used) or a checkpoint file. Writes results.md, results.json and sample_{best,median,worst}.png
to --out (default RUN_DIR/eval). --json prints one JSON object with at least rel_l2 and
n_samples, those of the headline split (test, else all).

Which files are scored (unless --splits says otherwise):
  * --data FOLDER without train/ and test/ sub-folders: every file, as split 'all'
    (n_samples = number of files);
  * a folder with train/ and/or test/ sub-folders: those folders, as splits train and test;
  * the run's own training folder (no --data, or --data naming it) without sub-folders: the
    seeded 80/20 file split that training used (test fraction 0.2, seed 0), so the test
    headline is the 20% of files the model never saw."""


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CKPT")
    p.add_argument("--data", help="dataset root, a folder of mesh files (default: the run's "
                   "training data)")
    p.add_argument("--splits", default=None,
                   help="comma-separated splits among train, test and all (default: see above)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    p.add_argument("--no-plots", dest="no_plots", action="store_true", help="skip the PNGs")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args) -> int:
    from graphop.inference.evaluate import evaluate_checkpoint, format_markdown

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    rep = evaluate_checkpoint(args.checkpoint, args.data, splits, args.out, args.device,
                              args.batch_size, plots=not args.no_plots,
                              progress=not args.json)
    if args.json:
        slim = {k: v for k, v in rep.items() if k != "samples"}
        print(json.dumps(slim))
    else:
        print(format_markdown(rep))
        print(f"written: {rep['out']}/results.md, results.json"
              + (", " + ", ".join(f"sample_{k}.png" for k in rep["plots"]) if rep["plots"] else ""))
    return 0
