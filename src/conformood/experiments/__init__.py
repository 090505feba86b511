"""End-to-end runs that tie the layers together. Each has one shape: ``run_*(config, out) -> result``, which
writes the result as JSON (:mod:`conformood.results`) and then renders its report with :mod:`conformood.report`."""

from .ccs import CCSSimConfig, run_ccs_sim
from .coat import CoatConfig, run_coat
from .demo import DemoConfig, run_demo
from .deploy import export_files, monitor_files, score_file
from .evaluate import EvaluateConfig, run_evaluation
from .extract import ExtractConfig, extract_file
from .inspection import InspectionConfig, run_inspection_demo
from .sources import Encoder, Features, get_encoder, load_features, read_features
from .train import run_training

__all__ = [
    "CCSSimConfig",
    "CoatConfig",
    "DemoConfig",
    "EvaluateConfig",
    "Encoder",
    "ExtractConfig",
    "Features",
    "extract_file",
    "export_files",
    "get_encoder",
    "load_features",
    "monitor_files",
    "read_features",
    "run_ccs_sim",
    "run_coat",
    "run_demo",
    "run_inspection_demo",
    "InspectionConfig",
    "run_evaluation",
    "run_training",
    "score_file",
]
