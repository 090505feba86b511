"""End-to-end runs that tie the layers together. Each has one shape: ``run_*(config, out) -> result``, which
writes the result as JSON (:mod:`conformood.results`) and then renders its report with :mod:`conformood.report`."""

from .ccs import CCSSimConfig, run_ccs_sim
from .coat import CoatConfig, run_coat
from .demo import DemoConfig, run_demo
from .evaluate import EvaluateConfig, feature_files_from_checkpoint, run_evaluation, score_file
from .inspection import InspectionConfig, run_inspection_demo
from .train import run_training

__all__ = [
    "CCSSimConfig",
    "CoatConfig",
    "DemoConfig",
    "EvaluateConfig",
    "feature_files_from_checkpoint",
    "run_ccs_sim",
    "run_coat",
    "run_demo",
    "run_inspection_demo",
    "InspectionConfig",
    "run_evaluation",
    "run_training",
    "score_file",
]
