"""Keeping freed memory: large blocks are reused instead of faulted in again, the command turns it on, the
environment variable turns it off, and results record it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conformood import allocator
from conformood.cli import main
from conformood.results import environment

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")

# allocate, touch and free a 64 MB block 30 times (after 3 warm-ups); print the minor page faults of each
_FAULTS = textwrap.dedent("""
    import json, resource, sys
    from conformood import allocator
    applied = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
    import torch
    faults = []
    for _ in range(33):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20).sum()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults[3:], "state": allocator.allocator_state()}))
""")


def _faults(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"LD_PRELOAD", "MALLOC_CONF"}}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


@glibc
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = (64 << 20) // 4096
    assert default["applied"] is False and kept["applied"] is True
    # glibc maps and unmaps each 64 MB block: every page of every block faults
    assert np.median(default["faults"]) > 0.9 * pages
    # reused from the heap: most blocks fault nothing (the heap still grows now and then, when a block does not
    # fit the freed space; that is why the median and not every block)
    assert np.median(kept["faults"]) < 0.1 * pages and sum(kept["faults"]) < 0.5 * sum(default["faults"])
    assert kept["state"]["keep_freed_memory"] is True and default["state"]["keep_freed_memory"] is False
    assert kept["state"]["libc"].startswith("glibc")


@pytest.mark.parametrize("value, expected", [("1", True), ("", True), ("yes", True), ("ON", True), ("maybe", None),
                                             ("0", False), ("false", False), (" off ", False)])
def test_the_environment_variable_turns_it_on_and_off(value, expected):
    if expected is None:  # set but empty is as if unset (`VAR= conformood …`); anything else is refused
        with pytest.raises(ValueError, match="CONFORMOOD_KEEP_FREED_MEMORY must be 1 or 0"):
            allocator.wanted({allocator.ENV_VAR: value})
    else:
        assert allocator.wanted({allocator.ENV_VAR: value}) is expected
    assert allocator.wanted({}) is True


def test_the_command_keeps_freed_memory_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and calls == [1]
    monkeypatch.setenv(allocator.ENV_VAR, "0")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert calls == [1]


def test_a_bad_value_is_one_line_and_exit_code_2():
    env = {**os.environ, allocator.ENV_VAR: "maybe"}
    out = subprocess.run([sys.executable, "-m", "conformood", "--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "Error: CONFORMOOD_KEEP_FREED_MEMORY must be 1 or 0 (true/false, yes/no, on/off), got 'maybe'"]


def test_results_record_the_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    state = environment()["allocator"]
    assert state["ld_preload"] == "libjemalloc.so.2" and state["malloc_conf"] == "dirty_decay_ms:-1"
    assert set(state) == {"libc", "keep_freed_memory", "ld_preload", "malloc_conf"}
    monkeypatch.delenv("LD_PRELOAD")
    assert environment()["allocator"]["ld_preload"] is None and "malloc_conf" not in environment()["allocator"]
