"""`train.keep_freed_memory` (ofa/training/memory.py): glibc keeps freed buffers for the next training step
instead of handing them back to the OS and faulting fresh pages in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ofa.training.memory import keep_freed_memory
from tests.test_training import run_in_process, tiny_recipe

# Minor page faults per "step" that holds 48 MiB of activations (12 x 4 MiB, written) and frees them all at the
# end, as a training step does. glibc's default gives the freed heap top back to the OS, so its pages fault in
# again (up to 12,288 a step); kept, the next step reuses them.
PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from ofa.training.memory import keep_freed_memory
    torch.set_num_threads(1)
    if sys.argv[1] == "keep" and not keep_freed_memory():
        sys.exit("keep_freed_memory() returned False")
    def step():
        held = [torch.empty(1024 * 1024).fill_(1.0) for _ in range(12)]
        del held
    step()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4)
    """
)


def faults_per_step(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=240, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def is_glibc() -> bool:
    return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts: Linux only")
def test_kept_memory_is_reused_without_page_faults():
    if not is_glibc():
        pytest.skip("keep_freed_memory only changes glibc's malloc")
    default = faults_per_step("default")
    if default < 2000:
        pytest.skip(f"this system's malloc hardly faults here anyway ({default:.0f} minor faults per step)")
    kept = faults_per_step("keep")
    # Measured on the project's CPU: 3,324 or 12,260 faults per step by default (glibc's adaptive thresholds
    # settle differently from run to run), 0 or 256 with the setting.
    assert kept * 5 < default, (kept, default)


def test_reports_whether_it_applies():
    assert keep_freed_memory() is is_glibc()


@pytest.mark.parametrize("keep", [True, False])
def test_the_recipe_switch_decides(tmp_path, monkeypatch, keep):
    import ofa.training.run as run_module

    calls: list[bool] = []
    monkeypatch.setattr(run_module, "keep_freed_memory", lambda: calls.append(True) or True)
    run_in_process(tiny_recipe(tmp_path / "run", size=2, max_steps=1, keep_freed_memory=keep))
    assert calls == ([True] if keep else [])
