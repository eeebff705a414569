"""What a training run leaves behind besides checkpoints: a CSV of per-epoch metrics,
TensorBoard event files, and a PNG of the loss curves.

The per-epoch history lives in the checkpoint (so it survives interruption and resumes
exactly); :class:`RunLogger` rewrites ``metrics.csv`` from it after every epoch and draws
``loss_curves.png`` (training loss and validation relative L2 against epoch, log scale).
TensorBoard scalars go to ``RUN_DIR/tb``: ``train/loss``, ``val/rel_l2``, ``lr`` and
``train/samples_per_s``, one point per epoch. On resume the writer purges events after the
resumed step, so the curves in TensorBoard have no duplicated stretch either.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

__all__ = ["RunLogger", "write_history_csv", "plot_history"]

COLUMNS = ("epoch", "train_loss", "val_rel_l2", "lr", "time_s", "samples_per_s")


def write_history_csv(history: list, path) -> Path:
    """``metrics.csv`` with one row per epoch (columns :data:`COLUMNS`), written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)
    return path


def plot_history(history: list, path, title: str = "") -> Path | None:
    """Loss curves (train loss, validation relative L2) on a log axis; None if no epochs."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(ep, [h["train_loss"] for h in history], "o-", ms=3, label="train loss (rel. L2)")
    val = [(h["epoch"], h["val_rel_l2"]) for h in history if h.get("val_rel_l2") is not None]
    if val:
        ax.plot(*zip(*val), "s-", ms=3, label="validation rel. L2")
        best = min(val, key=lambda t: t[1])
        ax.plot([best[0]], [best[1]], "*", ms=12, color="C3", label=f"best {best[1]:.4g}")
    ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative L2 error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


class RunLogger:
    """CSV + TensorBoard + loss-curve PNG for one run directory (use on rank 0 only).

    Args:
        run_dir: the run directory.
        start_epoch: epochs already completed (TensorBoard purges later events on resume).
        tensorboard: write TensorBoard event files (default True).
    """

    def __init__(self, run_dir, start_epoch: int = 0, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            kw = {"purge_step": start_epoch + 1} if start_epoch > 0 else {}
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), **kw)

    def epoch(self, history: list) -> None:
        row = history[-1]
        if self.writer is not None:
            e = row["epoch"]
            self.writer.add_scalar("train/loss", row["train_loss"], e)
            if row.get("val_rel_l2") is not None:
                self.writer.add_scalar("val/rel_l2", row["val_rel_l2"], e)
            self.writer.add_scalar("lr", row["lr"], e)
            self.writer.add_scalar("train/samples_per_s", row["samples_per_s"], e)
            self.writer.flush()
        write_history_csv(history, self.run_dir / "metrics.csv")

    def close(self, history: list, title: str = "") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if history:
            write_history_csv(history, self.run_dir / "metrics.csv")
            plot_history(history, self.run_dir / "loss_curves.png", title)
