"""Inference: evaluation of a trained run on test sets, prediction on new meshes, plots."""
from graphop.inference.evaluate import evaluate_checkpoint, format_markdown
from graphop.inference.predict import predict_file, predict_mesh

__all__ = ["evaluate_checkpoint", "format_markdown", "predict_file", "predict_mesh"]
