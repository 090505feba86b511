"""The demo's stated targets with default settings (slow: about 90 s on 2 cores; `make test-slow`)."""

import pytest

from conformood.experiments import DemoConfig, run_demo


@pytest.mark.slow
def test_default_demo_meets_targets(tmp_path):
    result = run_demo(DemoConfig(), tmp_path, progress=False)
    assert result["mean"]["firm"]["auroc"] >= 0.95
    assert result["mean"]["firm"]["realised_fpr_at_alpha"] <= 0.13
    assert result["wall_time_s"] < 300
