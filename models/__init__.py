"""Detector definitions shared by training, export and the runtimes."""

from specdet._shadowing import hand_over
from specdet.models.registry import create_model, default_preprocessing, list_models, model_config
from specdet.models.scoring import ScoringModule

__all__ = ["ScoringModule", "create_model", "default_preprocessing", "list_models", "model_config"]

hand_over(__name__)  # imported as a bare `models` from the repository root: the installed package instead
