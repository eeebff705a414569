"""``graphop train``: train a model from a YAML config and/or flags; resume a run; several
processes with ``--nproc N`` (launches ``torchrun``)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

NAME = "train"
HELP = "train a neural operator on a folder of meshes (YAML config and/or flags)"
DESCRIPTION = """Train a model. Examples:

  graphop train CONFIG.yaml --set lr=3e-4 --set model.width=32
  graphop train --data DIR --inputs a --targets u --model local_gno --epochs 20 --out runs/darcy
  graphop train --resume runs/darcy            (continue an interrupted run)
  graphop train CONFIG.yaml --nproc 2          (DistributedDataParallel, 2 processes)

Precedence: defaults < CONFIG.yaml < flags < --set. Unknown keys are an error listing the
valid ones. Writes RUN_DIR/{config.yaml,last.pt,best.pt,metrics.csv,loss_curves.png,tb/}.
Ctrl-C / SIGTERM saves a resumable checkpoint."""

_FLAGS = {  # flag dest -> config key
    "data": "data", "inputs": "inputs", "targets": "targets", "model": "model",
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "out": "out",
    "device": "device", "seed": "seed",
}


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (optional)")
    p.add_argument("--data", help="dataset root (MeshFolderDataset folder or generated dataset)")
    p.add_argument("--inputs", help="comma-separated input field names (may be empty: --inputs '')")
    p.add_argument("--targets", help="comma-separated target field names")
    p.add_argument("--model", help="model name (local_gno, gino, disco_only, gnn)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--out", help="run directory")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set model.width=32")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="allow starting a fresh run in a directory that already holds one")
    p.add_argument("--nproc", type=int, default=1,
                   help="number of processes (DistributedDataParallel via torchrun)")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   default=argparse.SUPPRESS,
                   help="no progress bars (every bar, the dataset reader's included)")


def _argv(args) -> list[str]:
    """Rebuild the command line (without --nproc) for the torchrun workers."""
    out = [args.config] if args.config else []
    for dest in _FLAGS:
        v = getattr(args, dest, None)
        if v is not None:
            out += [f"--{dest.replace('_', '-')}", str(v)]
    for s in args.sets:
        out += ["--set", s]
    if args.resume:
        out += ["--resume", args.resume]
    if args.overwrite:
        out.append("--overwrite")
    if getattr(args, "no_progress", False):
        out.append("--no-progress")
    if getattr(args, "debug", False):
        out.append("--debug")
    return out


def _launch(args) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "graphop.cli.worker", *_argv(args)]
    print("graphop train: launching", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def run(args) -> int:
    from graphop.training.config import load_config
    from graphop.errors import ConfigError
    from graphop.training.trainer import Trainer, TrainingInterrupted

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    overrides = {key: getattr(args, dest) for dest, key in _FLAGS.items()}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        if not args.resume:  # fail here, once, for what can be checked before launching
            from pathlib import Path

            from graphop.errors import DataError

            cfg = load_config(args.config, overrides, args.sets).validate()
            if not Path(cfg.data).exists():
                raise DataError(f"{cfg.data}: data directory not found")
            if cfg.batch_size % args.nproc:
                raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the number "
                                  f"of processes ({args.nproc})")
        return _launch(args)
    try:
        if args.resume:
            if args.config:
                raise ConfigError("--resume takes its config from the run directory; "
                                  "drop CONFIG.yaml (use --set to change keys such as epochs)")
            trainer = Trainer.resume(args.resume, sets=args.sets,
                                     overrides={k: v for k, v in overrides.items() if k != "out"})
        else:
            cfg = load_config(args.config, overrides, args.sets)
            trainer = Trainer(cfg, overwrite=args.overwrite)
        summary = trainer.fit()
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"graphop: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    if trainer.info.is_main:
        best = summary["best_val_rel_l2"]
        print(f"graphop train: done, {summary['epochs_completed']} epochs, best validation rel_l2 "
              f"{best:.4g} (epoch {summary['best_epoch']}), {summary['train_seconds']:.0f} s of "
              f"training; checkpoints in {summary['run_dir']}"
              if best is not None else "graphop train: done", flush=True)
    return 0
