"""Reports of an experiment run: ``results.md``, ``results.json`` and PNG figures.

Tables give, per variant and test set, the mean +- standard deviation over seeds of the
per-seed mean relative L2 error (quadrature-weighted, physical units); with ``compare: V`` a
second table gives the relative change (err_variant - err_V) / err_V in percent. Figures:

* ``errors.png``: grouped bars, one group per test set, one bar per variant (error bars = std);
* ``error_vs_resolution.png``: error against mean points per sample over the test sets listed
  in ``figures.resolution`` (log-log), one line per variant;
* ``sample_prediction.png``: the first sample of ``figures.sample`` (default: the first test
  set): truth, then every variant's prediction (seed of the first run) and its error.

Quick runs write ``results-quick.md``/``.json`` and ``*-quick.png`` so they are never confused
with full runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from graphop.layers.sparse import to_device

__all__ = ["write_report", "format_results"]


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n_seeds"] > 1 else f"{s['mean']:.4f}"


def format_results(res: dict) -> str:
    """The markdown report of a results dict (see :func:`graphop.experiments.runner.run_experiment`)."""
    cfg, tests = res["config"], list(res["test_sets"])
    variants = list(res["variants"])
    q = " (QUICK variant: small data and few epochs; not the full experiment)" if res["quick"] else ""
    tr = cfg.get("training") or {}
    lines = [f"# {res['experiment']}{q}", "", " ".join(str(cfg.get("description", "")).split()), "",
             f"- commit: `{res['commit'] or 'unknown (not a git checkout)'}`; started {res['started']}; "
             f"total wall time {res['wall_s'] / 60:.1f} min (data {res['data_wall_s']:.0f} s); "
             f"torch {res['torch']}, {res['threads']} thread(s) per run, "
             f"{res.get('jobs', 1)} run(s) at a time",
             f"- problem `{cfg['problem']}`, inputs {cfg.get('inputs') or []} -> targets {cfg['targets']}",
             f"- training set: {res['train_set']['n_samples']} samples, "
             f"{res['train_set']['mean_points']:.0f} points on average "
             f"(spec {json.dumps(cfg['train'])}); val_fraction {tr.get('val_fraction', 0.1)}",
             f"- training: {json.dumps({k: v for k, v in tr.items() if k != 'val_fraction'})}; "
             f"seeds {cfg['seeds']}; the final-epoch model is evaluated",
             "- metric: relative L2 error with the meshes' quadrature weights, mean over test "
             "samples, then mean ± std (ddof=1) over seeds"]
    if cfg.get("variants_in_config"):
        dropped = [v for v in cfg["variants_in_config"] if v not in res["variants"]]
        lines.append(f"- variants run: {', '.join(variants)} (not run: "
                     f"{', '.join(dropped) or 'none'})")
    lines += ["", "## Test sets", "",
             "| test set | samples | points (mean, min-max) | spec |", "|---|---|---|---|"]
    for t, i in res["test_sets"].items():
        lines.append(f"| {t} | {i['n_samples']} | {i['mean_points']:.0f} ({i['min_points']}-"
                     f"{i['max_points']}) | `{json.dumps(i['spec'])}` |")
    lines += ["", "## Relative L2 error", "",
              "| variant | parameters | " + " | ".join(tests) + " | train time / run |",
              "|---|---|" + "---|" * len(tests) + "---|"]
    for v in variants:
        runs = [r for r in res["runs"] if r["variant"] == v]
        walls = [r["train_wall_s"] for r in runs if np.isfinite(r["train_wall_s"])]
        wall = f"{np.mean(walls):.0f} s" if walls else "not recorded"
        cells = [_fmt(res["summary"][v][t]) for t in tests]
        uw = " (uniform weights)" if res["variants"][v]["uniform_weights"] else ""
        lines.append(f"| {v}{uw} | {res['variants'][v]['n_parameters']:,} | " + " | ".join(cells)
                     + f" | {wall} |")
    base = cfg.get("compare")
    if base:
        lines += ["", f"## Change against `{base}` (negative = lower error)", "",
                  "| variant | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
        for v in variants:
            if v == base:
                continue
            cells = []
            for t in tests:
                b, e = res["summary"][base][t]["mean"], res["summary"][v][t]["mean"]
                cells.append(f"{100 * (e - b) / b:+.1f}%")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| variant | seed | epochs | final train loss | final val | "
              + " | ".join(tests) + " |", "|---|---|---|---|---|" + "---|" * len(tests)]
    for r in res["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['final_train_loss']:.4f} | "
                     f"{r['final_val_rel_l2']:.4f} | "
                     + " | ".join(f"{r['tests'][t]['rel_l2']:.4f}" for t in tests) + " |")
    if res.get("figures"):
        lines += ["", "## Figures", ""] + [f"![{k}]({Path(p).name})" for k, p in res["figures"].items()]
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _bars(res, path):
    plt = _plt()
    tests, variants = list(res["test_sets"]), list(res["variants"])
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tests) * max(1, len(variants)) / 3), 4))
    w = 0.8 / len(variants)
    for k, v in enumerate(variants):
        m = [res["summary"][v][t]["mean"] for t in tests]
        s = [res["summary"][v][t]["std"] for t in tests]
        ax.bar(np.arange(len(tests)) + (k - (len(variants) - 1) / 2) * w, m, w, yerr=s, label=v,
               capsize=2)
    ax.set_xticks(np.arange(len(tests)), tests, rotation=20, ha="right")
    _finish(plt, fig, ax, res, path)


def _finish(plt, fig, ax, res, path):
    """Shared axis label, title, legend and save of the experiment figures."""
    ax.set_ylabel("relative L2 error")
    ax.set_title(res["experiment"] + (" (quick)" if res["quick"] else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _resolution(res, tests, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [res["test_sets"][t]["mean_points"] for t in tests]
    for v in res["variants"]:
        m = [res["summary"][v][t]["mean"] for t in tests]
        s = [res["summary"][v][t]["std"] for t in tests]
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=v)
    ax.axvline(res["train_set"]["mean_points"], color="gray", ls=":", label="training resolution")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("points per sample (test)")
    _finish(plt, fig, ax, res, path)


def _draw(ax, data, values, title, cmap="viridis", clim=None):
    pos = data.pos.detach().cpu().numpy()
    if pos.shape[1] == 3:  # a slab around the middle plane z = median
        z = np.median(pos[:, 2])
        keep = np.abs(pos[:, 2] - z) <= 0.1 * (pos[:, 2].max() - pos[:, 2].min())
        art = ax.scatter(pos[keep, 0], pos[keep, 1], c=values[keep], s=6, cmap=cmap)
    else:
        face = getattr(data, "face", None)
        tri = None if face is None else face.t().cpu().numpy()
        art = ax.tripcolor(pos[:, 0], pos[:, 1], values, triangles=tri, shading="gouraud", cmap=cmap)
    if clim is not None:
        art.set_clim(*clim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return art


@torch.no_grad()
def _sample_figure(res, sets, keep, test, path):
    plt = _plt()
    data = sets[test][0]
    y = data.y.reshape(data.y.shape[0], -1)[:, 0].double().numpy()
    preds = {}
    for v, (model, normalizer, wrap) in keep.items():
        d = wrap(sets[test])[0]
        dev = next(model.parameters()).device
        model.eval()
        p = normalizer.decode(model(normalizer.encode(to_device(d, dev))))
        preds[v] = p.reshape(p.shape[0], -1)[:, 0].double().cpu().numpy()
    n = 1 + len(preds)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
    clim = (float(y.min()), float(y.max()))
    art = _draw(axes[0, 0], data, y, f"truth ({test}, {len(y)} points)", clim=clim)
    fig.colorbar(art, ax=axes[0, 0], fraction=0.046)
    axes[1, 0].axis("off")
    emax = max([float(np.abs(p - y).max()) for p in preds.values()] + [1e-12])
    for k, (v, p) in enumerate(preds.items(), start=1):
        _draw(axes[0, k], data, p, f"{v}", clim=clim)
        art = _draw(axes[1, k], data, p - y, f"error {v}", cmap="RdBu_r", clim=(-emax, emax))
    fig.colorbar(art, ax=axes[1, -1], fraction=0.046)
    fig.suptitle(res["experiment"] + (" (quick)" if res["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder, res: dict, sets: dict, keep: dict) -> dict:
    """Write the figures, ``results[-quick].md`` and ``results[-quick].json`` into ``folder``;
    returns ``res`` with ``figures`` (name -> path) filled in."""
    folder = Path(folder)
    sfx = "-quick" if res["quick"] else ""
    figs = {}
    p = folder / f"errors{sfx}.png"
    _bars(res, p)
    figs["errors"] = str(p)
    fcfg = res["config"].get("figures") or {}
    rtests = list(fcfg.get("resolution") or [])
    if len(rtests) >= 2:
        p = folder / f"error_vs_resolution{sfx}.png"
        _resolution(res, rtests, p)
        figs["error_vs_resolution"] = str(p)
    test = fcfg.get("sample") or next(iter(sets))
    if keep:
        p = folder / f"sample_prediction{sfx}.png"
        _sample_figure(res, sets, keep, test, p)
        figs["sample_prediction"] = str(p)
    res["figures"] = figs
    (folder / f"results{sfx}.json").write_text(json.dumps(res, indent=1, default=str))
    (folder / f"results{sfx}.md").write_text(format_results(res))
    return res
