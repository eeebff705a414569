"""Evaluation of a trained model: metrics per split, per domain family and per resolution, a
markdown table, JSON, and pictures of the best, median and worst test samples.

The metric is the quadrature-weighted relative L2 error of every sample
(:func:`graphop.training.metrics.relative_l2`), in physical units::

    rel_l2(s) = sqrt( sum_j w_j |pred_j - u_j|^2 / sum_j w_j |u_j|^2 )

reported as mean, median, max and standard deviation over the samples of each group. Groups:

* split: ``train`` and ``test`` of the dataset root (whichever exist), or ``all`` (every file
  of the folder; see :func:`evaluate_checkpoint` for which one a folder gets);
* family: the domain family of a generated dataset (from its ``manifest.json``), or the
  sample's sub-folder for a folder of the user's own meshes;
* resolution: the requested mesh size of a generated dataset (the manifest's ``points`` list;
  each sample is assigned the nearest size in log scale), else the number of points rounded
  to two significant digits.

Outputs in ``OUT`` (default ``RUN_DIR/eval``): ``results.md``, ``results.json`` and
``sample_best.png``, ``sample_median.png``, ``sample_worst.png`` (truth, prediction and error
drawn on the mesh with matplotlib ``tripcolor``; a 3D scatter for volume meshes).

Operators: :func:`evaluate_checkpoint` uses the operator store as ``graphop train`` does
(``$GRAPHOP_OPERATOR_STORE``; ``off`` turns it off), so a second evaluation of the same meshes
loads their operators, and a split of many new meshes has them built first in worker
processes by ``graphop train``'s ``prebuild_workers: auto`` rule
(:mod:`graphop.training.prebuild`).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from graphop.data.sample import channel_names, describe
from graphop.data.progress import progress as _progress
from graphop.errors import DataError
from graphop.inference.predict import predict_data
from graphop.layers.sparse import to_device
from graphop.training.checkpoint import load_trained_model
from graphop.training.metrics import relative_l2

__all__ = ["evaluate_dataset", "evaluate_checkpoint", "default_splits", "summarize",
           "format_markdown", "plot_sample", "sample_mesh"]


def _manifest(root: Path) -> dict | None:
    p = root / "manifest.json"
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None
    return None


def _resolution_label(n: int, sizes) -> str:
    if sizes:
        best = min(sizes, key=lambda s: abs(math.log(max(n, 1)) - math.log(s)))
        return str(int(best))
    digits = max(0, int(math.floor(math.log10(max(n, 1)))) - 1)
    return str(int(round(n, -digits)))


def _sample_files(dataset) -> list | None:
    for name in ("files", "paths"):
        v = getattr(dataset, name, None)
        if v is not None and len(v) == len(dataset):
            return [Path(p) for p in v]
    return None


@torch.no_grad()
def evaluate_dataset(model, normalizer, dataset, device="cpu", batch_size: int = 4,
                     root=None, progress: bool = True, desc: str = "evaluate") -> list[dict]:
    """One record per sample: ``index``, ``source``, ``rel_l2``, ``n_points``, ``family``,
    ``resolution``. Samples are batched (any mix of meshes); no loop over nodes."""
    from torch_geometric.loader import DataLoader
    from graphop.data.normalize import NormalizedDataset

    root = Path(root) if root is not None else None
    man = _manifest(root) if root is not None else None
    fam_of, sizes = {}, None
    if man:
        sizes = [int(s) for s in man.get("points", [])] or None
        for rec in man.get("samples", man.get("records", [])) or []:
            if isinstance(rec, dict) and "file" in rec:
                fam_of[str(Path(rec["file"]))] = rec.get("family")
    files = _sample_files(dataset)
    model.eval()
    loader = DataLoader(NormalizedDataset(dataset, normalizer), batch_size=batch_size, shuffle=False)
    out, i0 = [], 0
    for batch in _progress(loader, desc=desc, unit="batch", enabled=progress):
        batch = to_device(batch, device)
        pred = normalizer.decode(model(batch))
        err = relative_l2(pred, batch.y.to(pred.dtype), batch.weight, batch.batch,
                          batch.num_graphs).cpu().double()
        counts = torch.bincount(batch.batch.cpu(), minlength=batch.num_graphs)
        fams = getattr(batch, "family", None)
        for k in range(batch.num_graphs):
            i = i0 + k
            src = str(files[i]) if files else None
            rel = None
            if src and root is not None:
                try:
                    rel = str(Path(src).resolve().relative_to(root.resolve()))
                except ValueError:
                    rel = None
            fam = fams[k] if isinstance(fams, (list, tuple)) and fams[k] else None
            fam = fam or (fam_of.get(rel) if rel else None)
            if fam is None and rel:
                parts = Path(rel).parts
                inner = [p for p in parts[:-1] if p not in ("train", "test")]
                fam = "/".join(inner) if inner else "all"
            n = int(counts[k])
            out.append({"index": i, "source": rel or src, "rel_l2": float(err[k]), "n_points": n,
                        "family": fam or "all", "resolution": _resolution_label(n, sizes)})
        i0 += batch.num_graphs
    return out


def summarize(records: list[dict]) -> dict:
    """mean (``rel_l2``), median, max, std and ``n_samples`` of a list of records."""
    v = np.array([r["rel_l2"] for r in records], dtype=np.float64)
    if not len(v):
        return {"rel_l2": None, "median": None, "max": None, "std": None, "n_samples": 0}
    return {"rel_l2": float(v.mean()), "median": float(np.median(v)), "max": float(v.max()),
            "std": float(v.std()), "n_samples": int(len(v))}


def _groups(records: list[dict], key: str) -> dict:
    labels = sorted({r[key] for r in records},
                    key=lambda s: (0, float(s)) if str(s).replace(".", "", 1).isdigit() else (1, str(s)))
    return {str(lab): summarize([r for r in records if r[key] == lab]) for lab in labels}


def format_markdown(report: dict) -> str:
    """The report as markdown tables (overall per split, then per family and resolution)."""
    def row(name, s):
        return (f"| {name} | {s['n_samples']} | {s['rel_l2']:.4f} | {s['median']:.4f} | "
                f"{s['max']:.4f} | {s['std']:.4f} |")

    head = ["| group | samples | mean rel. L2 | median | max | std |",
            "|---|---:|---:|---:|---:|---:|"]
    lines = [f"# Evaluation of `{report['checkpoint']}`", "",
             f"data: `{report['data']}`; model: `{report['model']}`; metric: quadrature-weighted "
             "relative L2 error per sample.", "", "## By split", "", *head]
    for split, s in report["splits"].items():
        lines.append(row(split, s))
    for title, key in (("By domain family", "by_family"), ("By resolution (points)", "by_resolution")):
        lines += ["", f"## {title}", "", *head]
        for split, groups in report[key].items():
            for lab, s in groups.items():
                lines.append(row(f"{split} / {lab}", s))
    if report.get("plots"):
        lines += ["", "## Samples", ""]
        for name, p in report["plots"].items():
            lines.append(f"![{name}]({Path(p).name})")
    return "\n".join(lines) + "\n"


def sample_mesh(data):
    """A :class:`graphop.Mesh` (points, cells, weights) back from a sample ``Data``."""
    from graphop.geometry.mesh import Mesh

    cells = {}
    face = getattr(data, "face", None)
    if face is not None:
        cells["triangle"] = face.t().cpu().numpy()
    for key in data.keys():
        if key.startswith("cells_"):
            cells[key[len("cells_"):]] = data[key].cpu().numpy()
    return Mesh(data.pos.detach().cpu().double().numpy(), cells,
                weights=data.weight.detach().cpu().double().numpy(),
                source=describe(data), validate=False)


def plot_sample(data, pred: torch.Tensor, path, title: str = "", target_names=None) -> Path:
    """Truth, prediction and error (prediction - truth) of one sample drawn on its mesh, one
    row per target channel, with :func:`graphop.inference.plot.plot_fields` (tripcolor in 2D, a cut
    volume or a scatter in 3D). In 2D truth and prediction share one colour scale and the
    error uses a symmetric diverging one."""
    from graphop.inference.plot import _pyplot, plot_fields

    n = data.pos.shape[0]
    y = data.y.detach().cpu().double().reshape(n, -1).numpy()
    p = pred.detach().cpu().double().reshape(n, -1).numpy()
    names = list(target_names or [])
    fields = {}
    for c in range(y.shape[1]):
        name = names[c] if c < len(names) else f"channel {c}"
        fields[f"truth {name}"] = y[:, c]
        fields[f"prediction {name}"] = p[:, c]
        fields[f"error {name} (prediction - truth)"] = p[:, c] - y[:, c]
    mesh = sample_mesh(data).with_point_data(**fields)
    fig = plot_fields(mesh, list(fields), title=title)
    if mesh.dim == 2:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        for c in range(y.shape[1]):
            arts = [ax.collections[0] for ax in panels[3 * c:3 * c + 3] if ax.collections]
            if len(arts) == 3:
                lo = float(min(y[:, c].min(), p[:, c].min()))
                hi = float(max(y[:, c].max(), p[:, c].max()))
                arts[0].set_clim(lo, hi)
                arts[1].set_clim(lo, hi)
                emax = float(np.abs(p[:, c] - y[:, c]).max()) or 1.0
                arts[2].set_cmap("RdBu_r")
                arts[2].set_clim(-emax, emax)
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    finally:
        _pyplot().close(fig)
    return path


def default_splits(root, own: bool) -> list[str]:
    """The splits :func:`evaluate_checkpoint` scores when none are asked for:

    * a folder with ``train/`` or ``test/`` sub-folders: ``train`` and ``test`` (the folders);
    * the run's own training folder without sub-folders: ``train`` and ``test`` of the seeded
      80/20 file split that training used (``MeshFolderDataset`` defaults: test fraction 0.2,
      seed 0), so the headline is the held-out 20% the model never saw;
    * any other flat folder: ``all``, every file (nothing of it was used for training).
    """
    root = Path(root)
    if any((root / s).is_dir() for s in ("train", "test")) or own:
        return ["train", "test"]
    return ["all"]


def evaluate_checkpoint(checkpoint, data=None, splits=None, out=None, device="cpu",
                        batch_size: int = 4, plots: bool = True, progress: bool = True) -> dict:
    """Evaluate a checkpoint file or run directory on the dataset root ``data`` (default: the
    run's training data). Writes ``results.md``/``results.json`` (and PNGs) to ``out`` and
    returns the report.

    Args:
        splits: names among ``train``, ``test`` and ``all`` (every file of ``data``); default
            :func:`default_splits` (a flat folder other than the run's training data is scored
            whole).

    ``report["rel_l2"]``/``["n_samples"]`` (the headline) are those of the ``test`` split, else
    of ``all``, else of the first split evaluated."""
    from graphop.data import MeshFolderDataset
    from graphop.training.distributed import resolve_device
    from graphop.training.trainer import attach_operator_store

    dev = resolve_device(device)
    model, normalizer, ckpt = load_trained_model(checkpoint, dev)
    attach_operator_store()
    tc = ckpt["train_config"]
    root = Path(data or tc.get("data", ""))
    if not str(root) or not root.exists():
        raise DataError(f"{root}: data directory not found")
    own = data is None or (bool(tc.get("data")) and Path(tc["data"]).exists()
                           and root.resolve() == Path(tc["data"]).resolve())
    splits = list(splits) if splits else default_splits(root, own)
    bad = [s for s in splits if s not in ("train", "test", "all")]
    if bad:
        raise DataError(f"unknown split(s) {', '.join(map(repr, bad))}; choose from train, "
                        "test, all")
    has_sub = any((root / s).is_dir() for s in ("train", "test"))
    per_split, records_of, datasets, warned = {}, {}, {}, []
    for split in splits:
        if has_sub and split != "all" and not (root / split).is_dir():
            continue  # a split folder that does not exist (never a fraction of the others)
        ds = MeshFolderDataset(root, inputs=list(tc["inputs"]), targets=list(tc["targets"]),
                               split=None if split == "all" else split)
        if len(ds) == 0:
            continue
        warned += _support_warnings(ckpt["model_config"], normalizer, ds, split)
        _prebuild_split(model, ckpt["model_config"], normalizer, ds, dev, progress, split)
        recs = evaluate_dataset(model, normalizer, ds, dev, batch_size, root, progress,
                                desc=f"evaluate {split}")
        per_split[split], records_of[split], datasets[split] = summarize(recs), recs, ds
    if not per_split:
        raise DataError(f"{root}: no samples to evaluate in split(s) {', '.join(splits)}")
    main_split = next((s for s in ("test", "all") if s in per_split), next(iter(per_split)))
    ckpt_path = Path(ckpt["path"])
    out = Path(out) if out is not None else ckpt_path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(ckpt_path), "data": str(root),
              "model": ckpt["model_config"].get("name"), "epoch": int(ckpt.get("epoch", 0)),
              "split": main_split, "rel_l2": per_split[main_split]["rel_l2"],
              "n_samples": per_split[main_split]["n_samples"], "splits": per_split,
              "by_family": {s: _groups(r, "family") for s, r in records_of.items()},
              "by_resolution": {s: _groups(r, "resolution") for s, r in records_of.items()},
              "samples": records_of, "plots": {}, "support_warnings": warned}
    if plots:
        recs = sorted(records_of[main_split], key=lambda r: r["rel_l2"])
        picks = {"best": recs[0], "median": recs[len(recs) // 2], "worst": recs[-1]}
        for name, rec in picks.items():
            sample = datasets[main_split][rec["index"]]
            pred = predict_data(model, normalizer, sample, dev)
            png = plot_sample(sample, pred, out / f"sample_{name}.png",
                              title=f"{name} {main_split} sample: {rec['source'] or rec['index']}  "
                                    f"(rel. L2 {rec['rel_l2']:.4f}, {rec['n_points']} points)",
                              target_names=channel_names(tc["targets"], sample.y.shape[1]))
            report["plots"][name] = str(png)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(format_markdown(report))
    report["out"] = str(out)
    return report


def _prebuild_split(model, model_config, normalizer, dataset, device, progress, split) -> None:
    """The operators of a split's distinct geometries built first in worker processes into
    the operator store, by the rule ``graphop train`` follows (``prebuild_workers: auto``,
    :mod:`graphop.training.prebuild`): two or more threads, 32 or more geometries, and their
    builds estimated at ``MIN_SECONDS`` (8 s) or more. What is in the store already is
    loaded, not built."""
    from graphop.data.normalize import NormalizedDataset
    from graphop.training.prebuild import prebuild_for

    prebuild_for(model, model_config, [NormalizedDataset(dataset, normalizer)], device, "auto",
                 progress, who=f"graphop evaluate {split}")


def _support_warnings(model_config, normalizer, dataset, split: str) -> list[str]:
    """One stderr line per mesh of ``dataset`` that under-resolves a support of the model
    (:func:`graphop.models.supports.dataset_support_warnings`); returns the lines."""
    from graphop.data.normalize import NormalizedDataset
    from graphop.models.supports import dataset_support_warnings

    lines = [f"{split}: {line}" for line in
             dataset_support_warnings(model_config, NormalizedDataset(dataset, normalizer))]
    for line in lines:
        print(f"graphop evaluate: warning: {line}", file=sys.stderr, flush=True)
    return lines


