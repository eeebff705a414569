"""Models: LocalGNO (global FNO + DISCO + differential branches), its ablations and baselines
(GNN, grid FNO), all built from plain dicts through :func:`build_model`."""
from graphop.models.fno import FNO
from graphop.models.gnn import MeshGraphNet
from graphop.models.local_gno import LocalGNO
from graphop.models.registry import MODELS, build_model, model_arguments, register_model
from graphop.models.supports import resolve_supports, support_warnings

__all__ = ["LocalGNO", "MeshGraphNet", "FNO", "MODELS", "build_model", "register_model",
           "model_arguments", "resolve_supports", "support_warnings"]
