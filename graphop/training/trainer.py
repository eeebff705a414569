"""Training: the :class:`Trainer` (``torchrun`` runs it through ``graphop.cli.worker``).

One epoch visits every training sample once in an order drawn from ``seed + epoch``
(:class:`graphop.training.distributed.EpochSampler`). The loss of a batch is the mean over its samples
of the quadrature-weighted relative L2 error (:mod:`graphop.training.metrics`), computed in physical
units after :meth:`graphop.data.normalize.Normalizer.decode`::

    loss = 1/B sum_b sqrt( sum_j w_j |decode(model(encode(data_b)))_j - y_j|^2 / sum_j w_j |y_j|^2 )

After each epoch the validation set is scored with the same metric; ``best.pt`` is written
when it improves and ``last.pt`` always (:mod:`graphop.training.checkpoint`, atomic). ``metrics.csv``,
TensorBoard events and ``loss_curves.png`` go to the run directory (:mod:`graphop.training.runlog`).

Robustness:

* ``Trainer.resume(RUN_DIR)`` restores weights, optimizer, scheduler, normalisers, RNG states,
  history and the position inside the epoch, so the loss curve equals that of an
  uninterrupted run (to float tolerance).
* SIGINT (Ctrl-C) and SIGTERM finish the current batch, write a resumable ``last.pt`` (also in
  the middle of an epoch) and raise :class:`TrainingInterrupted`. A second signal aborts.
* A non-finite loss stops training with :class:`TrainingDiverged` naming the epoch and batch;
  nothing is written, so ``best.pt`` and ``last.pt`` keep the last good states.
* NaN/inf in the data is a :class:`graphop.errors.DataError` before training starts.

Several processes: ``torchrun --nproc_per_node=N -m graphop.cli.worker ARGS`` (or
``graphop train --nproc N ARGS``) wraps the model in ``DistributedDataParallel`` (gloo on CPU,
nccl on CUDA); ``batch_size`` is the global batch, split evenly, so N processes take the same
optimisation steps as one process (DDP averages the per-process gradients). Rank 0 alone
writes logs and checkpoints.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import signal
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from graphop.training.checkpoint import load_checkpoint, load_model_state, rng_state, save_checkpoint, set_rng_state
from graphop.training.config import ConfigError, TrainConfig, load_config
from graphop.training.distributed import EpochSampler, all_reduce_sum, setup
from graphop.errors import DataError, GraphopError, GraphopWarning
from graphop.training.metrics import relative_l2_loss
from graphop.layers.sparse import to_device
from graphop.data.augment import AugmentedDataset, augmented
from graphop.data.normalize import NormalizedDataset, Normalizer, check_sample
from graphop.data.progress import progress, write
from graphop.training.runlog import RunLogger
from graphop.training.runlock import claim_run_dir

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "load_datasets", "attach_operator_store"]


class TrainingDiverged(GraphopError):
    """The loss (or the validation error) became NaN or infinite."""


class TrainingInterrupted(GraphopError):
    """Training stopped on SIGINT/SIGTERM after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int, checkpoint: str | None):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint


def _channels(sample) -> tuple[int, int]:
    x = getattr(sample, "x", None)
    n_in = 0 if x is None else int(x.reshape(x.shape[0], -1).shape[1])
    return n_in, int(sample.y.reshape(sample.y.shape[0], -1).shape[1])


def load_datasets(cfg: TrainConfig):
    """(train, validation) datasets for ``cfg``: the ``train`` split of ``cfg.data`` minus a
    seeded ``val_fraction`` hold-out, or the ``test`` split when ``val_fraction == 0``."""
    from graphop.data import MeshFolderDataset

    root = Path(cfg.data)
    if not root.exists():
        raise DataError(f"{root}: data directory not found")
    kw = dict(inputs=list(cfg.inputs), targets=list(cfg.targets))
    train = MeshFolderDataset(root, split="train", **kw)
    n = len(train)
    if n == 0:
        raise DataError(f"{root}: no training samples (the train split is empty)")
    if cfg.val_fraction > 0:
        n_val = max(1, int(round(cfg.val_fraction * n)))
        if n - n_val < 1:
            raise DataError(f"{root}: {n} training sample(s) cannot be split into training and "
                            "validation; add samples or set val_fraction=0 to validate on the test split")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        val = torch.utils.data.Subset(train, sorted(perm[:n_val]))
        train = torch.utils.data.Subset(train, sorted(perm[n_val:]))
        return train, val
    val = MeshFolderDataset(root, split="test", **kw)
    if len(val) == 0:
        raise DataError(f"{root}: val_fraction=0 validates on the test split, which is empty")
    return train, val


def attach_operator_store(cfg: TrainConfig | None = None):
    """Give the process-wide operator cache its disk tier (:mod:`graphop.layers.store`):
    ``$GRAPHOP_OPERATOR_STORE`` (a folder, or ``off``), else ``<graphop cache>`` unless the
    config says ``operator_store: false`` (no config: on). Returns the store (or None)."""
    import os

    from graphop.data.cache import cache_root
    from graphop.layers.sparse import operator_cache
    from graphop.layers.store import OperatorStore

    env = os.environ.get("GRAPHOP_OPERATOR_STORE", "").strip()
    if (cfg is not None and not cfg.operator_store) or env.lower() in ("off", "0", "false", "no", "none"):
        operator_cache.store = None
        return None
    root = Path(env) if env else cache_root()
    if operator_cache.store is None or operator_cache.store.root.parent != root.expanduser():
        operator_cache.store = OperatorStore(root)
    return operator_cache.store


def on_sphere(data, rtol: float = 1e-6) -> bool:
    """True when ``data.pos`` is 3D and every point lies within ``rtol`` of one sphere about
    the origin (a sample of graphop's sphere data, or any mesh file of a sphere)."""
    pos = getattr(data, "pos", None)
    if pos is None or pos.dim() != 2 or pos.shape[1] != 3 or len(pos) < 4:
        return False
    r = pos.double().norm(dim=1)
    return bool(r.min() > 0 and (r.max() - r.min()) <= rtol * r.median())


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Train a model on a mesh dataset as configured by a :class:`TrainConfig`.

    Args:
        config: the run's configuration (``config.out`` is the run directory).
        model: an ``nn.Module`` to train instead of ``build_model(config.model)``; its
            ``config`` attribute (if any) is stored in checkpoints.
        datasets: ``(train, val)`` datasets instead of :func:`load_datasets`.
        resume: continue from ``RUN_DIR/last.pt`` (see :meth:`resume`).
        overwrite: allow a fresh run into a directory that already holds one.
    """

    def __init__(self, config: TrainConfig, model: torch.nn.Module | None = None, datasets=None,
                 resume: bool = False, overwrite: bool = False):
        self.cfg = config.validate()
        self.info, self.device = setup(config.device)
        self.run_dir = Path(config.out)
        if self.info.is_main:  # one process per run directory, for its whole life
            claim_run_dir(self.run_dir)
        ckpt = self._open_checkpoint(resume, overwrite)
        self.local_bs = self._local_batch_size()
        attach_operator_store(config)
        train, val = self._load_data(datasets)
        self._resolve_augment(train)
        self.normalizer = self._fit_normalizer(train, val, ckpt)
        _seed_all(config.seed)
        model, self.model_config = self._build_model(model, train)
        if ckpt is not None:
            load_model_state(model, ckpt, expected_config=self.model_config)
        self.module, self.model = self._place_model(model)
        self.optimizer, self.scheduler = self._make_optimizer()
        self._make_loaders(train, val)
        self._restore_progress(ckpt)
        self._prebuild(train)
        self._stop_signal = None
        #: check each step's loss one step late, as on a GPU, on any device (for tests)
        self._lagged_checks = False
        self._prepare_run_dir(ckpt, overwrite)

    # ------------------------------------------------------------------ construction steps
    def _open_checkpoint(self, resume: bool, overwrite: bool) -> dict | None:
        """The checkpoint to resume from, or None for a fresh run (refused over an old run
        unless ``overwrite``)."""
        if resume:
            return load_checkpoint(self.run_dir / "last.pt", map_location="cpu")
        if (self.run_dir / "last.pt").exists() and not overwrite:
            raise ConfigError(f"{self.run_dir} already holds a training run (last.pt); continue it with "
                              f"--resume {self.run_dir}, or choose another --out")
        return None

    def _local_batch_size(self) -> int:
        world = self.info.world_size
        if self.cfg.batch_size % world:
            raise ConfigError(f"batch_size {self.cfg.batch_size} must be divisible by the number of "
                              f"processes ({world})")
        return self.cfg.batch_size // world

    def _load_data(self, datasets):
        train, val = datasets if datasets is not None else load_datasets(self.cfg)
        if len(train) == 0:
            raise DataError("the training set is empty")
        if len(val) == 0:
            raise DataError("the validation set is empty")
        self.n_train, self.n_val = len(train), len(val)
        return train, val

    def _resolve_augment(self, train) -> None:
        """``augment: auto`` made concrete from the training set
        (:func:`graphop.data.augment.resolve_augment`), printed once; the run's config.yaml
        records the result, so a resumed run keeps it."""
        import dataclasses

        from graphop.data.augment import resolve_augment

        if self.cfg.augment != "auto":
            return
        mode, reason = resolve_augment("auto", train, (self.cfg.model or {}).get("name"))
        self.cfg = dataclasses.replace(self.cfg, augment=mode)
        if self.info.is_main:
            print(f"graphop train: augment auto -> {mode} ({reason}; set augment to none, "
                  "subsample or refine to choose)", flush=True)

    def _fit_normalizer(self, train, val, ckpt) -> Normalizer:
        """Fitted on the training set for a fresh run, restored from the checkpoint on resume;
        every sample is checked for NaN/inf either way."""
        cfg = self.cfg
        if ckpt is None:
            # a sphere about the origin keeps its coordinates: the spherical layers need the
            # centre at 0, and a sphere has no bounding box to map into the unit box
            normalizer = Normalizer.fit(train, fields=cfg.normalize_fields,
                                        coords=cfg.normalize_coords and not on_sphere(train[0]),
                                        progress=cfg.progress and self.info.is_main)
        else:
            normalizer = Normalizer.from_state_dict(ckpt["normalizer"])
            for i in range(len(train)):
                check_sample(train[i], i)
        for i in range(len(val)):
            check_sample(val[i], i)
        return normalizer

    def _model_config(self, train) -> dict:
        """``cfg.model`` completed from the data: channel counts, and the dimension and torus
        flag when the model takes them and the user did not set them."""
        from graphop.models import MODELS, model_arguments

        n_in, n_out = _channels(train[0])
        mc = {**self.cfg.model, "in_channels": n_in, "out_channels": n_out}
        accepted = model_arguments(mc["name"]) if mc.get("name") in MODELS else []
        first = train[0]
        if "dim" in accepted and "dim" not in mc and "latent_shape" not in mc:
            mc["dim"] = int(first.pos.shape[1])
        if "periodic" in accepted and "periodic" not in mc:
            mc["periodic"] = getattr(first, "periodic", None) is not None
        if "manifold" in accepted and "manifold" not in mc and on_sphere(first):
            mc["manifold"] = "sphere"
            mc.pop("dim", None)
        return mc

    def _build_model(self, model, train):
        """``(model, model config)``: the given model, or ``build_model`` of the completed
        config with its ``auto`` supports resolved (build errors are one-line
        :class:`ConfigError` s)."""
        if model is not None:
            if getattr(model, "unresolved", None):
                raise ConfigError(f"the model passed to Trainer has unresolved 'auto' supports "
                                  f"({', '.join(model.unresolved)}); build it from "
                                  "graphop.models.supports.resolve_supports(config, train_samples)")
            return model, dict(getattr(model, "config", {"name": type(model).__name__}))
        from graphop.models import build_model

        mc = self.resolve_supports(self._model_config(train), train)
        try:
            model = build_model(mc)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GraphopError):
                raise
            raise ConfigError(f"cannot build model {mc.get('name')!r}: {exc}") from exc
        return model, dict(getattr(model, "config", mc))

    def _place_model(self, model):
        """``(module, model)``: the module on the device, and the module wrapped in
        ``DistributedDataParallel`` when several processes train."""
        module = model.to(self.device)
        if not self.info.distributed:
            return module, module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return module, DistributedDataParallel(module, device_ids=ids)

    def _make_optimizer(self):
        cfg = self.cfg
        params = [p for p in self.module.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
                 if cfg.scheduler == "cosine" else None)
        return opt, sched

    def _make_loaders(self, train, val) -> None:
        world, rank = self.info.world_size, self.info.rank
        self.train_set = self.augmented(NormalizedDataset(train, self.normalizer))
        self.sampler = EpochSampler(self.train_set, world, rank, seed=self.cfg.seed)
        self.val_set = NormalizedDataset(
            torch.utils.data.Subset(val, list(range(rank, len(val), world))), self.normalizer)

    def _prebuild(self, train) -> None:
        """A fresh run's operators for every distinct training and validation geometry, built
        before the first epoch in ``prebuild_workers`` processes into the operator store
        (:func:`graphop.training.prebuild.prebuild_for`); skipped under DDP, for a resumed run,
        with one process, without the store, or for a model that its config does not
        rebuild."""
        from graphop.training.prebuild import prebuild_for

        cfg = self.cfg
        if self.info.distributed or self.epoch > 0 or self.step_in_epoch > 0:
            return
        prebuild_for(self.module, self.model_config,
                     [NormalizedDataset(train, self.normalizer), self.val_set], self.device,
                     cfg.prebuild_workers, cfg.progress and self.info.is_main,
                     who=f"graphop train (prebuild_workers: {cfg.prebuild_workers})")

    def _restore_progress(self, ckpt) -> None:
        """Epoch, position in the epoch, history, best metric, optimizer, scheduler and RNG
        states: fresh, or from the checkpoint."""
        self.epoch, self.step_in_epoch = 0, 0
        self.partial = {"loss_sum": 0.0, "count": 0.0, "time_s": 0.0}
        self.history: list = []
        self.best_metric, self.best_epoch = math.inf, 0
        if ckpt is None:
            return
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scheduler.T_max = self.cfg.epochs
        self.epoch, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0))
        self.partial = dict(ckpt.get("partial") or self.partial)
        self.history = list(ckpt.get("history", []))
        self.best_metric = float(ckpt.get("best_metric", math.inf))
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        set_rng_state(ckpt["rng"])

    def _prepare_run_dir(self, ckpt, overwrite: bool) -> None:
        """Rank 0 creates the run directory and writes ``config.yaml`` (and drops an
        overwritten run's TensorBoard curves)."""
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None and overwrite and (self.run_dir / "tb").is_dir():
            shutil.rmtree(self.run_dir / "tb")
        self.cfg.save(self.run_dir / "config.yaml")

    def resolve_supports(self, model_config: dict, train) -> dict:
        """``model_config`` with its ``"auto"`` supports (DISCO, encoder and smoothing radii)
        chosen from the training meshes in the normalised coordinates the model sees
        (:func:`graphop.models.supports.resolve_supports`); the choice is printed once."""
        from graphop.models.supports import resolve_supports

        log = (lambda line: print(f"graphop train: {line}", flush=True)) if self.info.is_main else None
        # the meshes the model trains on: with subsampling, the (coarser) epoch-0 subsamples;
        # refinement only adds finer copies, so the coarsest mesh is the data's own
        base = NormalizedDataset(train, self.normalizer)
        return resolve_supports(model_config,
                                base if self.cfg.augment == "refine" else self.augmented(base),
                                log=log)

    def augmented(self, dataset):
        """The training set as the model sees it: ``config.augment`` applied
        (:func:`graphop.data.augment.augmented`; never to validation)."""
        return augmented(dataset, self.cfg.augment, self.cfg.augment_fraction, self.cfg.seed,
                         self.cfg.augment_probability, self.cfg.augment_target_weight)

    @classmethod
    def resume(cls, run_dir, sets=(), overrides: dict | None = None, model=None, datasets=None
               ) -> "Trainer":
        """Continue the run in ``run_dir`` from its ``last.pt``, with its ``config.yaml``
        (``overrides``/``sets`` may change e.g. ``epochs`` or ``device``)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise GraphopError(f"{run_dir}: not a graphop run directory (no config.yaml)")
        if not (run_dir / "last.pt").is_file():
            raise GraphopError(f"{run_dir}: nothing to resume (no last.pt)")
        cfg = load_config(run_dir / "config.yaml", overrides, sets)
        cfg.out = str(run_dir)
        return cls(cfg, model=model, datasets=datasets, resume=True)

    # ------------------------------------------------------------------ state
    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def state(self) -> dict:
        """Everything a checkpoint holds (see :mod:`graphop.training.checkpoint`)."""
        return {"model_config": self.model_config, "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "normalizer": self.normalizer.state_dict(), "train_config": self.cfg.to_dict(),
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "partial": dict(self.partial), "history": list(self.history),
                "best_metric": float(self.best_metric), "best_epoch": self.best_epoch,
                "rng": rng_state()}

    def _save(self, name: str) -> Path | None:
        if not self.info.is_main:
            return None
        return save_checkpoint(self.run_dir / name, self.state())

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.info.is_main:
            print(f"\ngraphop: caught {signal.Signals(signum).name}; finishing this batch and saving "
                  "a resumable checkpoint (send again to abort)", file=sys.stderr, flush=True)

    def _interrupt(self, where: str):
        sig = int(self._stop_signal or signal.SIGTERM)
        path = self._save("last.pt")
        name = signal.Signals(sig).name
        raise TrainingInterrupted(
            f"interrupted by {name} {where}; resumable checkpoint saved to "
            f"{path or self.run_dir / 'last.pt'}; continue with: graphop train --resume {self.run_dir}",
            sig, str(path) if path else None)

    # ------------------------------------------------------------------ loops
    def _loader(self, dataset, shuffle: bool):
        from torch_geometric.loader import DataLoader

        g = torch.Generator().manual_seed(self.cfg.seed)
        # pinned batches on a GPU: their copy to the device does not wait (to_device below)
        kw = dict(batch_size=self.local_bs, num_workers=self.cfg.num_workers, generator=g,
                  pin_memory=self.device.type == "cuda")
        if shuffle:
            return DataLoader(dataset, sampler=self.sampler, **kw)
        return DataLoader(dataset, shuffle=False, **kw)

    def _train_epoch(self) -> dict:
        cfg, e = self.cfg, self.epoch
        self.sampler.set_epoch(e)
        if isinstance(self.train_set, AugmentedDataset):
            self.train_set.set_epoch(e)
        self.sampler.skip = self.step_in_epoch * self.local_bs
        steps = math.ceil(self.sampler.num_samples / self.local_bs)
        loss_sum, count = float(self.partial["loss_sum"]), float(self.partial["count"])
        t_before = float(self.partial["time_s"])
        self.model.train()
        # off a terminal no per-batch lines: fit() prints one line per epoch
        bar = progress(total=steps, initial=self.step_in_epoch, desc=f"epoch {e + 1}/{cfg.epochs}",
                       unit="batch", enabled=cfg.progress and self.info.is_main, lines=0)
        t0 = time.perf_counter()
        # a step's numbers (loss sum, count, non-finite, stop) are read on the host one step
        # late on a GPU (copied without waiting, read while the next step runs), at once
        # elsewhere: reading them at once would make every GPU step wait for its forward pass
        lag = self.device.type == "cuda" or self._lagged_checks
        pending = None
        acc = {"loss_sum": loss_sum, "count": count}

        def settle(item):
            """Check one step's numbers (raises if its loss was not finite) and add them up."""
            st, event, bb, src = item
            if event is not None:
                event.synchronize()
            st = st.tolist()
            if st[2] > 0:
                bad = "nan" if st[4] > 0 else "inf"
                which = f" (samples: {', '.join(map(str, src))[:200]})" if isinstance(src, list) else ""
                best = (f"best checkpoint {self.run_dir / 'best.pt'} (epoch {self.best_epoch}, "
                        f"val rel_l2 {self.best_metric:.4g}) is kept" if self.best_epoch
                        else "no checkpoint was written")
                raise TrainingDiverged(
                    f"training loss became {bad} at epoch {e + 1}, batch {bb + 1}{which}; stopped. "
                    f"{best}; lower the learning rate (lr={cfg.lr:g}) or set grad_clip")
            acc["loss_sum"] += st[0]
            acc["count"] += st[1]
            return st[3] > 0

        def record():
            elapsed = t_before + time.perf_counter() - t0
            self.partial = {"loss_sum": acc["loss_sum"], "count": acc["count"], "time_s": elapsed}
            if acc["count"] > 0:
                bar.set_postfix(loss=f"{acc['loss_sum'] / acc['count']:.4g}",
                                samples_s=f"{acc['count'] / max(elapsed, 1e-9):.1f}")

        for b, batch in enumerate(self._loader(self.train_set, True), start=self.step_in_epoch):
            batch = to_device(batch, self.device, non_blocking=lag)
            err = relative_l2_loss(self.normalizer.decode(self.model(batch)), batch, reduction="none")
            loss = err.mean()
            det = err.detach()
            # made on the device (fills, no copies from the host)
            stats = torch.stack([torch.nan_to_num(det.sum(), 0.0, 0.0, 0.0).double(),
                                 torch.full((), float(det.numel()), dtype=torch.float64,
                                            device=det.device),
                                 (~torch.isfinite(det)).any().double(),
                                 torch.full((), 1.0 if self._stop_signal else 0.0,
                                            dtype=torch.float64, device=det.device),
                                 torch.isnan(det).any().double()])
            all_reduce_sum(stats)
            src = getattr(batch, "source", None)
            if lag:
                host = torch.empty(5, dtype=torch.float64,
                                   pin_memory=self.device.type == "cuda")
                host.copy_(stats, non_blocking=True)
                event = None
                if self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()
                # the previous step is checked before this one updates the weights
                stop = pending is not None and settle(pending)
                pending = (host, event, b, src)
            else:
                stop = settle((stats, None, b, src))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step_in_epoch = b + 1
            bar.update(1)
            # one process reads its own signal flag; processes of a DDP job agree through stats
            stop = stop or (not self.info.distributed and self._stop_signal is not None)
            if stop and pending is not None:   # the checkpoint holds every finished step
                stop = settle(pending) or stop
                pending = None
            record()
            if stop:
                bar.close()
                self._interrupt(f"in epoch {e + 1} after batch {b + 1}/{steps}")
        if pending is not None and settle(pending):      # the epoch's last step
            record()
            bar.close()
            self._interrupt(f"in epoch {e + 1} after batch {self.step_in_epoch}/{steps}")
        record()
        bar.close()
        elapsed = t_before + time.perf_counter() - t0
        return {"train_loss": acc["loss_sum"] / max(acc["count"], 1.0), "time_s": elapsed,
                "samples_per_s": acc["count"] / max(elapsed, 1e-9)}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean relative L2 error over the validation set (all processes together)."""
        self.module.eval()
        acc = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in self._loader(self.val_set, False):
            batch = to_device(batch, self.device)
            err = relative_l2_loss(self.normalizer.decode(self.module(batch)), batch, reduction="none")
            acc[0] += err.double().sum()
            acc[1] += err.numel()
        all_reduce_sum(acc)
        return float(acc[0] / acc[1].clamp_min(1.0))

    def fit(self, stop_at: int | None = None) -> dict:
        """Train until ``config.epochs`` (or until ``stop_at`` epochs are complete); returns the
        run summary (also written to ``RUN_DIR/summary.json``)."""
        cfg = self.cfg
        end = cfg.epochs if stop_at is None else min(int(stop_at), cfg.epochs)
        main_ = self.info.is_main
        logger = RunLogger(self.run_dir, start_epoch=self.epoch) if main_ else None
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._on_signal)
        if main_ and self.epoch == 0 and self.step_in_epoch == 0:
            print(f"graphop train: {self.n_train} training / {self.n_val} validation samples, model "
                  f"{self.model_config.get('name')} with {self.n_parameters:,} parameters, "
                  f"device {self.device}, {self.info.world_size} process(es), run dir {self.run_dir}",
                  flush=True)
        try:
            while self.epoch < end:
                row = self._train_epoch()
                val = self.validate()
                e = self.epoch + 1
                if not math.isfinite(val):
                    raise TrainingDiverged(f"validation error became {val} after epoch {e}; stopped "
                                           f"(best checkpoint from epoch {self.best_epoch} is kept)")
                lr = self.optimizer.param_groups[0]["lr"]
                if self.scheduler is not None:
                    self.scheduler.step()
                self.epoch, self.step_in_epoch = e, 0
                self.partial = {"loss_sum": 0.0, "count": 0.0, "time_s": 0.0}
                self.history.append({"epoch": e, "train_loss": row["train_loss"], "val_rel_l2": val,
                                     "lr": float(lr), "time_s": row["time_s"],
                                     "samples_per_s": row["samples_per_s"]})
                improved = val < self.best_metric
                if improved:
                    self.best_metric, self.best_epoch = val, e
                    self._save("best.pt")
                self._save("last.pt")
                if main_:
                    logger.epoch(self.history)
                    write(f"epoch {e}/{cfg.epochs}  train rel_l2 {row['train_loss']:.4g}  "
                          f"val rel_l2 {val:.4g}{'  (best)' if improved else ''}  "
                          f"{row['samples_per_s']:.1f} samples/s", file=sys.stdout)
                if self._stop_signal:
                    self._interrupt(f"after epoch {e}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if logger is not None:
                logger.close(self.history, title=f"{self.model_config.get('name')}: {self.run_dir.name}")
        return self._summary()

    def _summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        out = {"run_dir": str(self.run_dir), "epochs_completed": self.epoch,
               "best_val_rel_l2": self.best_metric if self.best_epoch else None,
               "best_epoch": self.best_epoch, "final_train_loss": last.get("train_loss"),
               "final_val_rel_l2": last.get("val_rel_l2"), "n_train": self.n_train,
               "n_val": self.n_val, "n_parameters": self.n_parameters, "model": self.model_config,
               "world_size": self.info.world_size,
               # training time over all epochs, resumed ones included (validation not counted)
               "train_seconds": float(sum(h["time_s"] for h in self.history)),
               "samples_per_s": (float(statistics.median(h["samples_per_s"] for h in self.history))
                                 if self.history else None)}
        if self.info.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(out, indent=2, default=str))
        return out
