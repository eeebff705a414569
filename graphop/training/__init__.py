"""Training: the :class:`Trainer` (checkpoints, resume, DDP), its config, checkpoints, the run
log, the distributed helpers and the quadrature-weighted metrics."""
from graphop.training.checkpoint import load_checkpoint, load_trained_model, save_checkpoint
from graphop.training.config import TrainConfig, load_config
from graphop.training.metrics import relative_l2, relative_l2_loss
from graphop.training.trainer import Trainer, TrainingDiverged, TrainingInterrupted

__all__ = ["Trainer", "TrainingDiverged", "TrainingInterrupted", "TrainConfig", "load_config",
           "save_checkpoint", "load_checkpoint", "load_trained_model", "relative_l2",
           "relative_l2_loss"]
