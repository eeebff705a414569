"""The training configuration: one dataclass, filled from defaults < YAML < flags < ``--set``.

``graphop train CONFIG.yaml --set lr=3e-4 --set model.width=32`` and
``graphop train --data DIR --inputs a --targets u --model local_gno --epochs 20 --out RUN``
both end in a :class:`TrainConfig`. Keys are the dataclass fields; ``model`` is a free dict
(``name`` plus the keyword arguments of ``graphop.models.build_model``) addressed with dotted
keys (``model.width=32``). An unknown key is a :class:`graphop.errors.ConfigError` that lists
the valid keys; a value that cannot be converted to the field's type names the key and type
(``epochs: expected an integer, got 'many'``). Model arguments are checked against the types of
the model's defaults in the same way (``model.width: expected an integer, got 'wide'``).

Example YAML::

    data: datasets/darcy
    inputs: [a]
    targets: [u]
    model: {name: local_gno, width: 32, n_layers: 4}
    epochs: 50
    batch_size: 8
    lr: 1.0e-3
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graphop.errors import ConfigError

__all__ = ["TrainConfig", "load_config", "apply_overrides", "parse_value", "check_model_values"]


@dataclass
class TrainConfig:
    """Everything a training run needs.

    Args:
        data: dataset root (a MeshFolderDataset folder or a generated dataset).
        inputs: point_data names of the input fields (may be empty).
        targets: point_data names of the target fields (at least one).
        model: ``{"name": ..., **kwargs}`` for ``graphop.models.build_model``; ``in_channels``
            and ``out_channels`` are filled in from the data.
        epochs: number of epochs (default 50).
        batch_size: global batch size, split evenly over processes (default 8).
        lr: peak learning rate (default 1e-3).
        weight_decay: decoupled weight decay (default 1e-4).
        optimizer: ``adamw`` | ``adam`` | ``sgd`` (default adamw).
        scheduler: ``cosine`` (to 0 over ``epochs``) | ``none`` (default cosine).
        grad_clip: clip the global gradient norm to this value (0 = off).
        val_fraction: fraction of the training split held out for per-epoch validation;
            0 validates on the test split instead (default 0.1).
        seed: seeds the model initialisation, the validation split and the per-epoch data
            order (default 0).
        out: run directory for checkpoints, logs and plots (default runs/run).
        device: ``auto`` (cuda when available) | ``cpu`` | ``cuda`` | ``cuda:N``.
        num_workers: DataLoader worker processes (default 0).
        normalize_fields: fit input/target normalisers on the training set (default True).
        normalize_coords: fit one coordinate AffineMap on the training set (default True).
        progress: show progress bars (default True; off a terminal, one line per epoch and
            about one per 10% of a long data read; :mod:`graphop.data.progress`).
        augment: ``auto`` | ``none`` | ``subsample`` | ``refine``: every epoch, train on a
            random subsample of each training mesh (boundary points plus ``augment_fraction`` of
            the interior points, exact field values, weights gathered onto the kept points), or,
            with probability ``augment_probability``, on its uniform refinement carrying the
            same piecewise-linear fields; validation never is; see :mod:`graphop.data.augment`.
            ``auto`` (default): ``refine`` when every training sample shares one mesh with
            cells, else ``none`` (:func:`graphop.data.augment.resolve_augment`; the trainer
            prints the choice and saves it in ``config.yaml``).
        augment_fraction: share of interior points a subsample keeps, in (0, 1] (default 0.75).
        augment_probability: ``refine``: chance that a training sample is refined in an epoch,
            in [0, 1] (default 0.5).
        augment_target_weight: ``refine``: weight t in [0, 1] of the interpolated targets at
            a refined sample's new points (default 1: the refined mesh's quadrature of the error
            against the piecewise-linear target; 0: the loss counts the original nodes only).
        operator_store: keep every mesh's operators on disk in the user's cache directory and
            load them in later runs on the same data (default True; ``$GRAPHOP_OPERATOR_STORE``
            = ``off`` or a folder overrides; :mod:`graphop.layers.store`).
        prebuild_workers: ``auto`` or a number of processes that build the operators of every
            distinct training and validation geometry into the operator store before the first
            epoch (:mod:`graphop.training.prebuild`); 0 builds them during the first epoch.
            ``auto`` (default): the torch threads given (``graphop --threads``), at most 8,
            when that is at least 2, the data has at least 32 geometries and one geometry's
            operators take long enough to build (timed on the second) that all of them would
            take ``prebuild.MIN_SECONDS`` (8 s) or more, else 0.
    """

    data: str = ""
    inputs: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    model: dict = field(default_factory=lambda: {"name": "local_gno"})
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    grad_clip: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    out: str = "runs/run"
    device: str = "auto"
    num_workers: int = 0
    normalize_fields: bool = True
    normalize_coords: bool = True
    progress: bool = True
    augment: str = "auto"
    augment_fraction: float = 0.75
    augment_probability: float = 0.5
    augment_target_weight: float = 1.0
    operator_store: bool = True
    prebuild_workers: str = "auto"

    # ------------------------------------------------------------------ API
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["inputs"] = list(d["inputs"])
        d["targets"] = list(d["targets"])
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        cfg = cls()
        for k, v in (d or {}).items():
            cfg.set(k, v)
        return cfg

    def set(self, key: str, value) -> None:
        """Set ``key`` (dotted for ``model.*``) from a value or a string, with type checks."""
        head, _, rest = str(key).partition(".")
        if head not in self.keys():
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(self.keys())}"
                              " (and model.<argument>)")
        if rest:
            if head != "model":
                raise ConfigError(f"config key {head!r} has no sub-keys (got {key!r})")
            self.model = dict(self.model)
            self.model[rest] = parse_value(value) if isinstance(value, str) else value
            return
        setattr(self, head, _coerce(head, value, _field_type(head)))

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for missing or out-of-range values."""
        if not self.data:
            raise ConfigError("no training data: pass --data DIR or set 'data:' in the config")
        if not self.targets:
            raise ConfigError("no target fields: pass --targets NAME or set 'targets:'")
        if not isinstance(self.model, dict) or not self.model.get("name"):
            raise ConfigError("model must be a dict with a 'name' (e.g. {name: local_gno})")
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("grad_clip", self.grad_clip >= 0, ">= 0"),
                  ("val_fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
                  ("num_workers", self.num_workers >= 0, ">= 0")]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"config key {name!r} must be {rule}, got {getattr(self, name)!r}")
        self.prebuild_workers = str(self.prebuild_workers).strip()
        if self.prebuild_workers != "auto" and not self.prebuild_workers.isdigit():
            raise ConfigError(f"config key 'prebuild_workers' must be auto or an integer >= 0, "
                              f"got {self.prebuild_workers!r}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ConfigError(f"optimizer must be adamw, adam or sgd, got {self.optimizer!r}")
        from graphop.data.augment import AUGMENTATIONS   # the one list of modes

        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be {', '.join(AUGMENTATIONS[:-1])} or "
                              f"{AUGMENTATIONS[-1]}, got {self.augment!r}")
        if not 0 <= self.augment_probability <= 1:
            raise ConfigError(f"config key 'augment_probability' must be in [0, 1], got "
                              f"{self.augment_probability!r}")
        if not 0 <= self.augment_target_weight <= 1:
            raise ConfigError(f"config key 'augment_target_weight' must be in [0, 1], got "
                              f"{self.augment_target_weight!r}")
        if not 0 < self.augment_fraction <= 1:
            raise ConfigError(f"config key 'augment_fraction' must be in (0, 1], got "
                              f"{self.augment_fraction!r}")
        if self.scheduler not in ("cosine", "none"):
            raise ConfigError(f"scheduler must be cosine or none, got {self.scheduler!r}")
        overlap = set(self.inputs) & set(self.targets)
        if overlap:
            raise ConfigError(f"fields {sorted(overlap)} are both inputs and targets")
        self.model = check_model_values(self.model)
        return self

    def save(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_model_values(model: dict) -> dict:
    """``model`` with every argument whose default in the registered model's signature is a
    bool, int, float or str converted to that type; a value that does not convert is a
    :class:`ConfigError` naming the dotted key (``model.width: expected an integer, got
    'wide'``). Unknown model names and arguments are left to ``build_model``."""
    import inspect

    from graphop.models import MODELS

    fn = MODELS.get(model.get("name")) if isinstance(model, dict) else None
    if fn is None:
        return model
    sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    out = dict(model)
    for p in sig.parameters.values():
        default = p.default
        if p.name not in out:
            continue
        if default == "auto":  # a support: "auto" or a length (None is left to the model)
            v = out[p.name]
            if v is None or (isinstance(v, str) and v.strip().lower() == "auto"):
                out[p.name] = None if v is None else "auto"
            else:
                try:
                    out[p.name] = _coerce(f"model.{p.name}", v, float)
                except ConfigError:
                    raise ConfigError(f"model.{p.name}: expected 'auto' or a number, "
                                      f"got {v!r}") from None
        elif type(default) in (bool, int, float, str):
            out[p.name] = _coerce(f"model.{p.name}", out[p.name], type(default))
    return out


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list of names", dict: "a mapping"}


def _field_type(name: str):
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def parse_value(text: str):
    """A ``--set`` value: YAML scalar/list/dict, with ``1e-3``-style floats accepted."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
        try:
            return float(v)
        except ValueError:
            pass
    return v


def _coerce(key: str, value, typ):
    bad = ConfigError(f"{key}: expected {_EXPECTED.get(typ, getattr(typ, '__name__', typ))}, "
                      f"got {value!r}")
    if typ is list:
        if isinstance(value, str):
            value = parse_value(value) if value.strip().startswith("[") else \
                [s.strip() for s in value.split(",") if s.strip()]
        if value is None:
            return []
        if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
            return list(value)
        raise bad
    if typ is dict:
        if isinstance(value, str):
            value = parse_value(value)
        if isinstance(value, str):  # a bare model name
            return {"name": value}
        if isinstance(value, dict):
            return dict(value)
        raise bad
    if typ is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise bad
        if isinstance(value, bool):
            return value
        raise bad
    if typ is int:
        if isinstance(value, bool):
            raise bad
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if f != int(f):
            raise bad
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if typ is str:
        if value is None or isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise bad  # pragma: no cover


def read_yaml_mapping(path, what: str = "config file") -> dict:
    """The mapping in the YAML file ``path`` (an empty file is ``{}``); one-line
    :class:`ConfigError` for a missing file, invalid YAML or a non-mapping (``what`` names it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({' '.join(str(exc).split())})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a {what} is a mapping of keys to values")
    return raw


def load_config(path=None, overrides: dict | None = None, sets=()) -> TrainConfig:
    """defaults < YAML file ``path`` < ``overrides`` (flags, None values skipped) < ``sets``
    (``key=value`` strings). Raises :class:`ConfigError` for unknown keys or bad values."""
    cfg = TrainConfig()
    if path is not None:
        p = Path(path)
        raw = read_yaml_mapping(p, "config file")
        try:
            for k, v in raw.items():
                cfg.set(k, v)
            cfg.model = check_model_values(cfg.model)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None
    for k, v in (overrides or {}).items():
        if v is not None:
            cfg.set(k, v)
    apply_overrides(cfg, sets)
    return cfg


def apply_overrides(cfg: TrainConfig, sets) -> TrainConfig:
    """Apply ``key=value`` strings (the ``--set`` flag) to ``cfg``."""
    for item in sets or ():
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        cfg.set(key.strip(), value)
    return cfg
