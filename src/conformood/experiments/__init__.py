"""End-to-end runs that tie the layers together (each writes JSON first, then renders a report)."""

from .demo import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
