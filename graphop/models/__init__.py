"""Models: LocalGNO (global FNO + DISCO + differential branches), its ablations and baselines,
all built from plain dicts through :func:`build_model`."""
from .gnn import MeshGraphNet
from .local_gno import LocalGNO
from .registry import MODELS, build_model, model_arguments, register_model

__all__ = ["LocalGNO", "MeshGraphNet", "MODELS", "build_model", "register_model", "model_arguments"]
