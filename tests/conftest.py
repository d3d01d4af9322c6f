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


# --- one rehearsal of the whole plan, shared by every test that reads its reports ---------
MODEL_STEPS = ["02_chexnet", "03_resnet_ablation_final", "04_efficientnet_b4", "05_vit",
               "06_mlp_mixer"]


def _plan_steps() -> list[str]:
    from utils.study.plan import default_plan

    return [s.name for s in default_plan()]


# every step of the plan (each ablation variant is a step of the 03 notebook): seconds each
SMOKE_STEPS = _plan_steps()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`run_all.py --rehearse --bundle`: the full profile's plan (3 seeds, every source of
    the generated demo set, every ablation variant and transfer arm) at toy scale, once per
    test session (minutes; it covers all the smoke profile did, on full's structure):
    tests/test_rehearsal.py checks the study, tests/test_notebooks.py the run and its
    console, tests/test_browser.py its pages and bundle. Returns (completed process,
    reports dir, checkpoints dir, bundle zip)."""
    import subprocess

    tmp = tmp_path_factory.mktemp("rehearsal")
    reports, ckpts, bundle = tmp / "reports", tmp / "checkpoints", tmp / "share" / "bundle.zip"
    proc = subprocess.run(
        [sys.executable, "run_all.py", "--rehearse", "--reports-dir", str(reports),
         "--checkpoint-dir", str(ckpts), "--bundle", str(bundle)],
        cwd=ROOT, capture_output=True, text=True, timeout=3600)  # a hang guard
    return proc, reports, ckpts, bundle


CI_LOGS = Path(os.environ.get("CXR_CI_LOGS", ROOT / "ci-logs"))


_SESSION_START: list[float] = []


def pytest_sessionstart(session) -> None:
    import time

    _SESSION_START.append(time.time())


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the browser test's screenshots at the end of the run (CI keeps its log): only
    those this session wrote, so an older run's files are not passed off as this one's."""
    started = _SESSION_START[0] if _SESSION_START else 0.0
    folder = CI_LOGS / "browser"
    shots = sorted(p for p in folder.glob("*.png") if p.stat().st_mtime >= started) \
        if folder.is_dir() else []
    if shots:
        terminalreporter.write_line(f"browser screenshots ({len(shots)}) in {CI_LOGS / 'browser'}: "
                                    + ", ".join(p.name for p in shots))
