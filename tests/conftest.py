"""Shared test settings.

Reference material lives outside the repository. One setting finds it: `OFA_SHARED` (default: the folder
`shared/` beside this checkout). The parity fixtures can also be pointed at directly with `OFA_PARITY_FIXTURE`
and `CNCLIP_PARITY_FIXTURE`. Tests that need them skip with the reason when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("OFA_SHARED", REPO.parent / "shared"))


def ofa_fixture_dir() -> Path:
    return Path(os.environ.get("OFA_PARITY_FIXTURE", shared_dir() / "fixtures" / "ofa_reference"))


def require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set OFA_SHARED or the fixture's variable to run this test)")
    return path


@pytest.fixture(scope="session")
def ofa_fixture() -> Path:
    return require(ofa_fixture_dir(), "OFA parity fixture")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
