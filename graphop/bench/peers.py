"""Peers of the benchmarks: neuraloperator's FNO and LocalNO on a grid, its GINO on a point set.

This file imports nothing from graphop (only the standard library, numpy and torch; neuralop
inside the functions), because it also runs as a script in another interpreter: neuraloperator
pins torch and torch-harmonics versions that may clash with graphop's, so the usual setup is a
separate virtual environment named by an environment variable (``GRAPHOP_NEURALOP_PYTHON`` for
the grid peers, ``GRAPHOP_GINO_PYTHON`` or the same variable for GINO). :func:`run_peer` runs a
peer in this process when ``import neuralop`` works here, otherwise in that interpreter, and
returns its numbers, or a one-entry dict saying why there are none.

    python peers.py PEER IN.json OUT.json     # the worker: kwargs in, numbers out
    python peers.py serve-grid                # epochs on request (:func:`grid_peers`)

:func:`grid_peers` keeps FNO and LocalNO alive (in this process or in a worker of that
interpreter) and times one epoch at a time, so that the grid benchmark can alternate them with
graphop's models epoch by epoch: on a shared machine whose load drifts over minutes, ratios of
epochs run seconds apart are steadier than ratios of separate runs.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

__all__ = ["run_peer", "grid_peers", "GridPeers", "PEERS"]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> tuple[float, float]:
    """(first call's time, median of ``repeats`` further calls) in seconds, CUDA synchronised
    before every clock reading."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return first, statistics.median(ts)


class GridPeers:
    """neuraloperator's FNO and LocalNO on an n x n grid, built once and timed epoch by epoch.

    ``samples`` random samples in batches of ``batch`` (MSE, Adam); :meth:`epoch` runs one
    training epoch of one model and returns its seconds (CUDA synchronised), so that a caller
    can interleave the peers' epochs with its own (:func:`grid_peers`).
    """

    def __init__(self, n: int, device: str, samples: int, batch: int, width: int, layers: int,
                 modes):
        import warnings

        from neuralop.models import FNO
        from neuralop.models.local_no import LocalNO

        warnings.simplefilter("ignore")
        self.device, self.samples, self.batch = torch.device(device), int(samples), int(batch)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 1, n, n, generator=g)
        y = torch.randn(samples, 1, n, n, generator=g)
        self.x, self.y = x.to(self.device), y.to(self.device)
        modes = tuple(int(m) for m in modes)
        makers = {
            "neuralop_fno": lambda: FNO(n_modes=modes, in_channels=1, out_channels=1,
                                        hidden_channels=width, n_layers=layers),
            "neuralop_local_no": lambda: LocalNO(n_modes=modes, in_channels=1, out_channels=1,
                                                 hidden_channels=width, default_in_shape=(n, n),
                                                 n_layers=layers),
        }
        self.models = {}
        for name, make in makers.items():
            torch.manual_seed(0)
            model = make().to(self.device)
            self.models[name] = (model, torch.optim.Adam(model.parameters(), 1e-3))
        self.names, self.python = list(self.models), sys.executable
        self.params = {k: sum(p.numel() for p in m.parameters())
                       for k, (m, _) in self.models.items()}

    def epoch(self, name: str) -> float:
        """Seconds of one training epoch of peer ``name``."""
        model, opt = self.models[name]
        _sync(self.device)
        t = time.perf_counter()
        perm = torch.randperm(self.samples, device=self.device)
        for i in range(0, self.samples, self.batch):
            idx = perm[i:i + self.batch]
            loss = torch.nn.functional.mse_loss(model(self.x[idx]), self.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(self.device)
        return time.perf_counter() - t

    def close(self) -> None:
        self.models.clear()


def neuralop_grid(n: int, repeats: int, device: str, samples: int, batch: int, width: int,
                  layers: int, modes) -> dict:
    """samples/s of a training epoch (MSE, Adam) of neuraloperator's FNO and LocalNO on an
    n x n grid, ``samples`` random samples in batches of ``batch``: one warm-up epoch, then
    the median of ``repeats`` (:class:`GridPeers`)."""
    peers = GridPeers(n, device, samples, batch, width, layers, modes)
    out = {}
    for name in peers.names:
        _, t = timed(lambda: peers.epoch(name), device, repeats)
        out[f"{name}_samples_s"] = samples / t
        out[f"{name}_params"] = peers.params[name]
    return out


class _RemoteGridPeers:
    """:class:`GridPeers` in another interpreter (this file's ``serve-grid`` mode): one JSON
    line per request on its stdin, one per answer on its stdout."""

    def __init__(self, python: str, kwargs: dict, threads: int):
        # stderr to a file: a pipe nobody reads would stall a worker that warns a lot
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "serve-grid"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        hello = self._ask({"kwargs": kwargs, "threads": threads})
        self.names, self.params, self.python = hello["names"], hello["params"], python

    def _ask(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.kill()
            self.proc.wait()
            self.err.seek(0)
            tail = self.err.read().strip().splitlines()[-3:]
            self.close()
            raise RuntimeError(f"worker failed: {' | '.join(tail) or 'no output'}")
        return json.loads(line)

    def epoch(self, name: str) -> float:
        return float(self._ask({"epoch": name})["seconds"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                f.close()
            except OSError:
                pass


def _worker_python(python: str | None, env_vars):
    """The interpreter a worker runs in: ``python``, else the first of ``env_vars`` that is
    set; without either, the one-entry dict saying why there is no peer."""
    python = python or next((os.environ[v] for v in env_vars if os.environ.get(v)), None)
    if not python:
        return {"neuralop": f"not importable (set {env_vars[0]} to a python that has "
                            "neuraloperator and torch-harmonics)"}
    return python


def grid_peers(kwargs: dict, python: str | None = None, env_vars=("GRAPHOP_NEURALOP_PYTHON",)):
    """:class:`GridPeers` made from ``kwargs`` (its arguments, JSON) in this process when
    neuraloperator imports here, else in the interpreter ``python`` (or the first of
    ``env_vars`` that is set) with this process's torch thread count. Either way the result has
    ``names``, ``params``, ``python`` (the interpreter), ``epoch(name) -> seconds`` and
    ``close()``. Without a peer: a
    one-entry dict saying why (``{"neuralop": ...}``), as :func:`run_peer` gives."""
    if _importable():
        return GridPeers(**kwargs)
    python = _worker_python(python, env_vars)
    if isinstance(python, dict):
        return python
    try:
        return _RemoteGridPeers(python, kwargs, torch.get_num_threads())
    except (RuntimeError, OSError, ValueError) as exc:
        return {"neuralop": str(exc) if str(exc).startswith("worker failed")
                else f"worker failed: {exc}"}


def _worker_ready(job: dict) -> bool:
    """A worker's start: torch's thread count from ``job``; False (with the reason on stderr)
    when neuraloperator does not import in this interpreter."""
    torch.set_num_threads(int(job["threads"]))
    if not _importable():
        print("neuraloperator (with torch-harmonics) is not importable in "
              f"{sys.executable}", file=sys.stderr)
        return False
    return True


def _serve_grid() -> int:
    """The ``serve-grid`` worker: the first stdin line ``{"kwargs", "threads"}`` builds the
    peers and is answered with their names and parameter counts; then each ``{"epoch": NAME}``
    line with ``{"seconds": ...}``, until stdin closes. Anything the models print goes to
    stderr, so stdout carries only the answers."""
    out = sys.stdout
    sys.stdout = sys.stderr
    first = sys.stdin.readline()
    if not first:
        return 0
    job = json.loads(first)
    if not _worker_ready(job):
        return 3
    peers = GridPeers(**job["kwargs"])
    out.write(json.dumps({"names": peers.names, "params": peers.params}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        out.write(json.dumps({"seconds": peers.epoch(request["epoch"])}) + "\n")
        out.flush()
    return 0


def _gino(width, n_layers, latent_shape, modes, radius, device, lo, hi):
    """neuraloperator's GINO (1 -> 1 channels, 2D, both GNO radii ``radius``, no open3d or
    torch-scatter) on ``device`` with seed 0, and its latent queries: a grid of
    ``latent_shape`` nodes spanning [lo, hi]^2, [1, *latent_shape, 2]."""
    from neuralop.models import GINO

    torch.manual_seed(0)
    model = GINO(in_channels=1, out_channels=1, gno_coord_dim=2, in_gno_radius=radius,
                 out_gno_radius=radius, fno_n_modes=tuple(int(m) for m in modes),
                 fno_hidden_channels=width, fno_n_layers=n_layers, gno_use_open3d=False,
                 gno_use_torch_scatter=False).to(device)
    axes = [np.linspace(lo, hi, int(s)) for s in latent_shape]
    latent = torch.as_tensor(np.stack(np.meshgrid(*axes, indexing="ij"), -1),
                             dtype=torch.float32, device=device)[None]
    return model, latent


def neuralop_gino(pos, batch: int, width: int, n_layers: int, latent_shape, modes,
                  radius: float, repeats: int, device: str, lo: float = -0.05,
                  hi: float = 1.05) -> dict:
    """Step time (forward, MSE, backward, Adam) of neuraloperator's GINO on the 2D points
    ``pos`` [N, 2] with a latent grid of ``latent_shape`` nodes spanning [lo, hi]^2."""
    dev = torch.device(device)
    model, latent = _gino(width, n_layers, latent_shape, modes, radius, dev, lo, hi)
    geom = torch.as_tensor(np.asarray(pos), dtype=torch.float32, device=dev)[None]
    x = (torch.sin(4 * geom[..., :1]).repeat(batch, 1, 1)
         * torch.arange(1, batch + 1, device=dev)[:, None, None])
    y = torch.cos(3 * x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        out = model(input_geom=geom, latent_queries=latent, output_queries=geom, x=x)
        torch.nn.functional.mse_loss(out, y).backward()
        opt.step()

    first, t = timed(step, device, repeats)
    return {"neuralop_gino_step_s": t, "neuralop_gino_first_step_s": first,
            "neuralop_gino_params": sum(p.numel() for p in model.parameters())}


def neuralop_gino_meshes(meshes, repeats: int, device: str, batch: int, width: int,
                         n_layers: int, latent_shape, modes, radius: float, lo: float = -0.05,
                         hi: float = 1.05) -> dict:
    """samples/s of a training epoch of neuraloperator's GINO on a dataset with one mesh per
    sample (``meshes``: a list of [N_i, 2] point lists, the samples' fields made from their
    coordinates): GINO takes one geometry per forward pass, so each step runs one forward
    pass per sample of its batch, sums their MSE losses and makes one Adam step."""
    dev = torch.device(device)
    model, latent = _gino(width, n_layers, latent_shape, modes, radius, dev, lo, hi)
    data = []
    for i, pts in enumerate(meshes):
        g = torch.as_tensor(np.asarray(pts), dtype=torch.float32, device=dev)[None]
        a = torch.sin(3 * g[..., :1] + i) * torch.cos(2 * g[..., 1:2])
        data.append((g, a, torch.cos(a)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(0)

    def epoch():
        perm = order.permutation(len(data))
        for b in range(0, len(data), batch):
            opt.zero_grad()
            loss = 0.0
            for i in perm[b:b + batch]:
                g, x, y = data[i]
                out = model(input_geom=g, latent_queries=latent, output_queries=g, x=x)
                loss = loss + torch.nn.functional.mse_loss(out, y)
            loss.backward()
            opt.step()

    first, t = timed(epoch, device, repeats)
    return {"neuralop_gino_samples_s": len(data) / t, "neuralop_gino_first_samples_s":
            len(data) / first, "neuralop_gino_params": sum(p.numel() for p in model.parameters())}


#: the peers :func:`run_peer` knows, by name
PEERS = {"grid": neuralop_grid, "gino": neuralop_gino, "gino_meshes": neuralop_gino_meshes}


def _importable() -> bool:
    try:
        import neuralop  # noqa: F401
        from neuralop.models import GINO  # noqa: F401
        from neuralop.models.local_no import LocalNO  # noqa: F401
    except Exception:   # noqa: BLE001 - any import failure means: not usable here
        return False
    return True


def run_peer(peer: str, kwargs: dict, python: str | None = None,
             env_vars=("GRAPHOP_NEURALOP_PYTHON",)) -> dict:
    """The numbers of ``PEERS[peer](**kwargs)``: in this process when neuraloperator imports
    here, else in the interpreter ``python`` (or the first of ``env_vars`` that is set) running
    this file with this process's torch thread count; ``kwargs`` must be JSON (lists for
    arrays). Without either: ``{"neuralop": "not importable ..."}``; a failing worker:
    ``{"neuralop": "worker failed: <its last lines>"}``."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; known: {sorted(PEERS)}")
    if _importable():
        out = PEERS[peer](**kwargs)
        out["neuralop_python"] = sys.executable
        return out
    python = _worker_python(python, env_vars)
    if isinstance(python, dict):
        return python
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(src, "w") as fh:
            json.dump({"kwargs": kwargs, "threads": torch.get_num_threads()}, fh)
        proc = subprocess.run([python, os.path.abspath(__file__), peer, src, dst],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"neuralop": f"worker failed: {' | '.join(tail)}"}
        with open(dst) as fh:
            out = json.load(fh)
    out["neuralop_python"] = python
    return out


def _main(argv) -> int:
    if argv[:1] == ["serve-grid"]:
        return _serve_grid()
    peer, src, dst = argv
    with open(src) as fh:
        job = json.load(fh)
    if not _worker_ready(job):
        return 3
    out = PEERS[peer](**job["kwargs"])
    out["neuralop_torch"] = torch.__version__
    with open(dst, "w") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
