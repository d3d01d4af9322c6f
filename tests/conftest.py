"""Shared fixtures. Real data lives in ../shared/data (beside the project root), never in the
repo; tests that need it skip with a message when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test naming what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (set CXR_SHARED_DATA or place "
                    f"the shared data folder beside the project root)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module of tiny tensors: on a small shared CPU,
    OpenMP spin-waiting between threads costs more than the second core gains."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
