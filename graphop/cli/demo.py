"""``graphop demo``: the README's main command, end to end on a built-in default dataset.

1. generates a small Darcy-flow dataset on irregular 2D domains (square, disk, L-shape) with
   graphop's own finite-element solver (skipped when the folder already holds it);
2. trains LocalGNO (global FNO + DISCO + differential branches) on it;
3. evaluates the best checkpoint on the test split, and on a second test set of the same
   domains meshed four times finer, which the model never saw (the discretisation-convergence
   promise: one trained model, any mesh);
4. writes ``RUN/demo.md`` (the results table), the loss curves and sample PNGs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

NAME = "demo"
HELP = "generate a small Darcy dataset, train LocalGNO, evaluate on the training and a 4x finer resolution"


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--data", default="datasets/darcy-demo",
                   help="where the generated dataset goes (default datasets/darcy-demo)")
    p.add_argument("--n", type=int, default=240, help="training + test samples (default 240)")
    p.add_argument("--points", type=int, default=1000, help="mesh points per sample (default 1000)")
    p.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    p.add_argument("--width", type=int, default=32, help="LocalGNO width (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="a one-minute smoke run (24 samples, 2 epochs)")


def run(args) -> int:
    from graphop.training.config import TrainConfig
    from graphop.data.generate import generate
    from graphop.inference.evaluate import evaluate_checkpoint
    from graphop.training.trainer import Trainer

    if args.quick:
        args.n, args.epochs, args.points = 24, 2, 500
    if getattr(args, "threads", None) is None:
        import torch

        # the demo's meshes are small: one thread is nearly as fast as two on an idle machine
        # and does not stall when the machine is busy (graphop --threads N demo overrides it)
        torch.set_num_threads(1)
    t0 = time.time()
    data = Path(args.data)
    domains = ["square", "disk", "lshape"]
    print(f"[1/4] Darcy flow, -div(a grad u) = 1 on {', '.join(domains)}: {args.n} samples of "
          f"~{args.points} points -> {data}", flush=True)
    generate("darcy", data, n=args.n, points=args.points, domains=domains, seed=args.seed,
             test_fraction=0.2, remesh=True, command=["graphop", "demo"])
    fine = data.parent / f"{data.name}-fine"
    n_fine = max(4, args.n // 10)
    print(f"[2/4] the same domains at 4x resolution (~{4 * args.points} points, {n_fine} samples, "
          f"never trained on) -> {fine}", flush=True)
    generate("darcy", fine, n=n_fine, points=4 * args.points, domains=domains,
             seed=args.seed + 10_000, test_fraction=0.99, remesh=True, command=["graphop", "demo"])

    print(f"[3/4] training LocalGNO for {args.epochs} epochs -> {args.out}", flush=True)
    cfg = TrainConfig(data=str(data), inputs=["a"], targets=["u"], epochs=args.epochs,
                      batch_size=8, lr=2e-3, seed=args.seed, out=args.out, device=args.device,
                      # the supports (DISCO, encoder, smoothing radii) are chosen from the
                      # training meshes and printed ('auto', graphop.models.supports)
                      model={"name": "local_gno", "width": args.width, "n_layers": 3})
    summary = Trainer(cfg, overwrite=True).fit()

    print("[4/4] evaluating the best checkpoint", flush=True)
    run_dir = Path(args.out)
    same = evaluate_checkpoint(run_dir / "best.pt", data, splits=("test",), out=run_dir / "eval",
                               device=args.device)
    finer = evaluate_checkpoint(run_dir / "best.pt", fine, splits=("test",),
                                out=run_dir / "eval-fine", device=args.device)
    minutes = (time.time() - t0) / 60
    table = [
        "# graphop demo: LocalGNO on Darcy flow over irregular domains",
        "",
        f"Model: LocalGNO (global + DISCO + differential), {summary['n_parameters']:,} parameters, "
        f"{summary['epochs_completed']} epochs, seed {args.seed}; wall time {minutes:.1f} min.",
        "",
        "| test set | meshes | samples | relative L2 (mean) |",
        "|---|---|---:|---:|",
        f"| same resolution | ~{args.points} points | {same['n_samples']} | {same['rel_l2']:.4f} |",
        f"| 4x finer, unseen | ~{4 * args.points} points | {finer['n_samples']} | "
        f"{finer['rel_l2']:.4f} |",
        "",
        f"Loss curves: `{run_dir / 'loss_curves.png'}`; samples: `{run_dir / 'eval'}/sample_*.png`, "
        f"`{run_dir / 'eval-fine'}/sample_*.png`.",
    ]
    (run_dir / "demo.md").write_text("\n".join(table) + "\n")
    (run_dir / "demo.json").write_text(json.dumps(
        {"rel_l2": same["rel_l2"], "rel_l2_fine": finer["rel_l2"], "minutes": minutes,
         "n_parameters": summary["n_parameters"], "epochs": summary["epochs_completed"]}, indent=2))
    print("\n".join(table))
    return 0
