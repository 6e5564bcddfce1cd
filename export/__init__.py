"""Checkpoint to validated ONNX (FFTs lowered), FP16 conversion and TensorRT engines.

    from specdet.export import export_onnx, export_checkpoint, build_engine
"""

from specdet._shadowing import hand_over
from specdet.export.artifact import export_checkpoint
from specdet.export.engine import build_engine
from specdet.export.onnx import export_onnx

__all__ = ["build_engine", "export_checkpoint", "export_onnx"]

hand_over(__name__)  # imported as a bare `export` from the repository root: the installed package instead
