"""Peak-memory measurement shared by the benchmark scripts: run one cell in a fresh child process."""

from __future__ import annotations

import json
import subprocess
import sys


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now; VmHWM: peak resident so far)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def report_peak(run, warm_up) -> None:
    """In a child process: warm up (lazy initialisation), then print the peak RSS rise of ``run()`` in MB."""
    import gc

    warm_up()
    gc.collect()
    before = status_kb("VmRSS")
    run()
    print(json.dumps({"peak_mb": (status_kb("VmHWM") - before) / 1024}))


def measure_in_child(script: str, *args: str) -> float:
    """Run ``python script --memory-probe args...`` and read the peak it reports."""
    proc = subprocess.run(
        [sys.executable, script, "--memory-probe", *map(str, args)], capture_output=True, text=True, check=True
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])
