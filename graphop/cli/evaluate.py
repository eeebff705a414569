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
    p.add_argument("--rollout", type=int, default=None, metavar="K",
                   help="also roll the one-step model out K steps on the files of --data that "
                        "hold K frames after the input (h0 -> h1 -> ... -> hK; graphop generate "
                        "swe --set n_frames=K): writes rollout.json and rollout.png")


def run(args) -> int:
    from graphop.inference.evaluate import evaluate_checkpoint, format_markdown

    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    rep = evaluate_checkpoint(args.checkpoint, args.data, splits, args.out, args.device,
                              args.batch_size, plots=not args.no_plots,
                              progress=not args.json)
    if args.rollout is not None:
        rep["rollout"] = _rollout(args, rep)
    if args.json:
        slim = {k: v for k, v in rep.items() if k != "samples"}
        print(json.dumps(slim))
    else:
        print(format_markdown(rep))
        print(f"written: {rep['out']}/results.md, results.json"
              + (", " + ", ".join(f"sample_{k}.png" for k in rep["plots"]) if rep["plots"] else ""))
    return 0


def _rollout(args, rep) -> dict:
    from pathlib import Path

    from graphop.data.dataset import list_mesh_files
    from graphop.errors import GraphopError
    from graphop.inference.rollout import plot_rollout, rollout_files
    from graphop.training.checkpoint import load_checkpoint

    if args.rollout < 1:
        raise GraphopError(f"--rollout must be at least 1, got {args.rollout}")
    root = Path(args.data or load_checkpoint(args.checkpoint)["train_config"]["data"])
    files = list_mesh_files(root)   # the test/ split when there is one, else every file
    files = [f for f in files if "test" in Path(f).relative_to(root).parts] or files
    from graphop.training.distributed import resolve_device

    res = rollout_files(args.checkpoint, files, args.rollout, resolve_device(args.device))
    out = Path(rep["out"])
    (out / "rollout.json").write_text(json.dumps(res, indent=1))
    png = plot_rollout(res, out / "rollout.png")
    if not args.json:
        print(f"rollout over {len(files)} file(s): rel_l2 per step "
              + ", ".join(f"{k}: {v:.4g}" for k, v in zip(res["steps"], res["rel_l2"]))
              + f"; written: {out}/rollout.json" + (f", {png.name}" if png else ""))
    return {k: res[k] for k in ("steps", "rel_l2")}
