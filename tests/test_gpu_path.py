"""The GPU path (issue 24) checked where a CPU can decide: host syncs in a training step,
resume across GPU and process counts, a slow rank-0 preparation, every visible GPU used,
cuDNN autotuning, no silent CPU fallback, and the smaller items.

What only a GPU shows is measured by `python -m benchmarks.gpu` (host syncs per step under
CUDA's sync debug mode, cuDNN autotuning on vs off); its code paths run in
tests/test_benchmarks_scale.py. Process tests start 2 gloo processes with torchrun.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from benchmarks.gpu_parts import SyncCounter
from conftest import ROOT
from utils import runtime
from utils.config import make_config
from utils.models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HELPER = Path(__file__).with_name("helpers_gpu_path.py")


def _batches(n: int = 4, size: int = 32, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, size, size, generator=g),
             (torch.rand(batch, 1, generator=g) < 0.5).float(), [{}] * batch)
            for _ in range(n)]


# --- 1. no host sync per BatchNorm layer ------------------------------------------------

class _CountingForward(nn.Module):
    """Wraps a model; counts host syncs inside its training forwards."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.syncs = inner, []

    def forward(self, x):
        if not self.training:
            return self.inner(x)
        with SyncCounter() as counter:
            out = self.inner(x)
        self.syncs += counter.calls
        return out


def test_a_training_forward_of_fit_never_waits_for_the_device():
    """A random-init registry model (cumulative BN) trained by fit: torch's momentum=None
    path called float(num_batches_tracked) once per BN layer per step (8 for simple_cnn)."""
    from utils.training.loop import fit

    model = create_model("simple_cnn", 1, pretrained=False)
    assert any(isinstance(m, nn.BatchNorm2d) and m.momentum is None for m in model.modules())
    wrapped = _CountingForward(model)
    cfg = make_config({"epochs": 1, "device": "cpu", "image_size": 32, "amp": False,
                       "monitor": "val_loss"}, profile="smoke")
    fit(wrapped, _batches(), _batches(1, seed=1), cfg, loss_fn=nn.BCEWithLogitsLoss(),
        device="cpu")
    assert wrapped.syncs == []
    # the marker is back: code outside fit (precise BN, user loops) sees the model as built
    assert all(m.momentum is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_fits_whole_training_step_has_no_host_sync_with_every_option():
    from utils.training.loop import TrainStep

    cfg = make_config({"model": "simple_cnn", "image_size": 32, "pretrained": False,
                       "device": "cpu", "grad_clip": 1.0, "ema_decay": 0.9,
                       "warmup_epochs": 1.0, "epochs": 2}, profile="full")
    step = TrainStep(create_model("simple_cnn", 1, pretrained=False), cfg,
                     nn.BCEWithLogitsLoss(), "cpu", steps_per_epoch=4)
    images, targets, _ = _batches(1)[0]
    step(images, targets)
    with SyncCounter() as counter:
        step(images, targets)
    step.close()
    assert counter.calls == []


def test_the_host_clock_gives_torchs_cumulative_average_bit_for_bit():
    from utils.training.schedules import BatchNormClock

    torch.manual_seed(0)
    torchs = create_model("simple_cnn", 1, pretrained=False)
    ours = create_model("simple_cnn", 1, pretrained=False)
    ours.load_state_dict(torchs.state_dict())
    clock = BatchNormClock(ours)
    assert len(clock.layers) == sum(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                    for m in ours.modules()) > 0
    for k, (images, _, _) in enumerate(_batches(5)):
        torch.manual_seed(k)  # the same dropout masks on both sides
        torchs.train()(images)
        clock.tick()
        torch.manual_seed(k)
        ours.train()(images)
    clock.restore()
    for (name, a), b in zip(torchs.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_resumed_clock_counts_on_from_the_saved_batches():
    from utils.training.schedules import BatchNormClock

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=None))
    model[1].num_batches_tracked.fill_(9)
    clock = BatchNormClock(model.train())
    clock.tick()
    assert model[1].momentum == 1 / 10


def test_compiled_training_keeps_two_graphs_not_one_per_step():
    """dynamo guards module floats: a momentum changing every step recompiled every step."""
    from torch._dynamo.utils import counters

    from utils.training.schedules import BatchNormClock

    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 36, 1)).train()
    clock = BatchNormClock(model, compiled=True)
    compiled = torch.compile(model, backend="eager")
    for images, _, _ in _batches(6, size=8):
        clock.tick()
        compiled(images).sum().backward()
    assert counters["stats"]["unique_graphs"] <= 2
    assert [clock.momentum(n) for n in (0, 1, 50)] == [1.0, 0.1, 0.1]
    torch._dynamo.reset()


# --- 2. resume on a machine with another number of GPUs or processes --------------------

def test_cuda_generators_of_two_gpus_restore_on_one(monkeypatch):
    from utils.training import rngstate

    restored, state = [], rngstate.capture(())

    def set_state(state, device=0):
        if int(device) >= 1:
            raise IndexError("list index out of range")  # what a missing GPU raised
        restored.append(int(device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)
    state["cuda"] = [torch.get_rng_state(), torch.get_rng_state()]  # saved on 2 GPUs
    with pytest.warns(UserWarning, match="2 GPU.*has 1"):
        rngstate.restore(state, ())
    assert restored == [0]


def test_another_world_size_resumes_from_the_last_epoch_not_bit_exact(tmp_path):
    from helpers_train import KillAfter
    from test_train import cfg_for, run

    with pytest.raises(KeyboardInterrupt):  # the session ends in epoch 2 (4 steps an epoch)
        run(cfg_for(epochs=2), tmp_path, loss=KillAfter(5))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    first = ckpt["history"]["epochs"][0]
    ckpt["distributed"]["world_size"] = 2  # as if Kaggle's 2 GPUs had trained it
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=r"trained on 2 process\(es\), this run has 1"):
        _, hist = run(cfg_for(epochs=2), tmp_path)
    assert hist.resumed_from == 1 and len(hist.epochs) == 2
    assert hist.epochs[0] == first
    assert hist.resume == {"from_epoch": 1, "bit_exact": False, "reason": "world size 2 -> 1"}
    # the record stays with the run: a later exact resume does not make it exact again
    again = torch.load(tmp_path / "last.pt", weights_only=True)["resume"]
    assert again["bit_exact"] is False


def test_a_same_size_resume_is_recorded_bit_exact(tmp_path):
    from helpers_train import KillAfter
    from test_train import cfg_for, run

    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(epochs=2), tmp_path, loss=KillAfter(5))
    _, hist = run(cfg_for(epochs=2), tmp_path)
    assert hist.resume == {"from_epoch": 1, "bit_exact": True, "reason": None}
    _, fresh = run(cfg_for(epochs=1), tmp_path / "fresh")
    assert fresh.resume is None


def _torchrun(*args: str, env: dict | None = None, timeout: int = 300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXR_QUIET": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_saved_one_resumes_and_the_reverse(tmp_path):
    import helpers_gpu_path as h

    two = _torchrun(str(HELPER), "resume", str(tmp_path / "a"), "1", "unused")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["distributed"]["world_size"] == 2
    h.resume_main(str(tmp_path / "a"), 0, str(tmp_path / "a.pt"))  # one process, here
    a = torch.load(tmp_path / "a.pt", weights_only=False)
    assert a["world"]["world_size"] == 1
    assert a["resume"] == {"from_epoch": 1, "bit_exact": False, "reason": "world size 2 -> 1"}
    assert a["history"]["resumed_from"] == 1
    assert a["history"]["epochs"][0] == saved["history"]["epochs"][0]
    assert len(a["history"]["epochs"]) == 2 and any("not bit-exact" in w for w in a["warnings"])

    h.resume_main(str(tmp_path / "b"), 1, "unused")
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    two = _torchrun(str(HELPER), "resume", str(tmp_path / "b"), "0", str(tmp_path / "b.pt"))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    assert b["world"]["world_size"] == 2
    assert b["resume"] == {"from_epoch": 1, "bit_exact": False, "reason": "world size 1 -> 2"}
    assert b["history"]["epochs"][0] == saved["history"]["epochs"][0]
    assert len(b["history"]["epochs"]) == 2


# --- 3. a slow rank-0 preparation under a short process-group timeout --------------------

SLOW_RANK0 = """
    import datetime, os, time
    if "RANK" in os.environ:  # a torchrun worker: the training group gets a short timeout
        import torch.distributed as dist
        _init = dist.init_process_group
        def init_process_group(*args, **kwargs):
            kwargs["timeout"] = datetime.timedelta(seconds=float(os.environ["PG_TIMEOUT"]))
            return _init(*args, **kwargs)
        dist.init_process_group = init_process_group
        import utils.study.experiment as experiment
        _prepare = experiment.prepare_data
        def prepare_data(*args, **kwargs):  # rank 0 builds slowly (a first NIH cache build)
            if os.environ["RANK"] == "0":
                time.sleep(float(os.environ["RANK0_SLEEP"]))
            return _prepare(*args, **kwargs)
        experiment.prepare_data = prepare_data
"""


@pytest.mark.slow
def test_a_slow_rank0_preparation_outlasts_the_training_groups_timeout(tmp_path):
    from utils.data.demo import make_demo

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLOW_RANK0))
    root = make_demo(tmp_path / "demo", seed=0, image_px=48, scale=0.3)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "profile": "smoke", "data_root": str(root), "model": "simple_cnn", "step": "slow",
        "device": "cpu", "nproc_per_node": 2, "checkpoint_dir": str(tmp_path / "ck"),
        "reports_dir": str(tmp_path / "rep")}))
    proc = _torchrun("-m", "utils.study.train_cli", "--config", str(config), env={
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PG_TIMEOUT": "8",
        "RANK0_SLEEP": "20"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["distributed"]["world_size"] == 2 and len(history["epochs"]) == 1


def test_a_preparation_wait_beyond_prepare_timeout_names_the_knob(monkeypatch):
    from utils.training import distributed

    def barrier(group=None):
        raise RuntimeError("Timed out waiting 5000ms")

    monkeypatch.setattr(distributed.dist, "new_group", lambda **kw: object())
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda group=None: None)
    monkeypatch.setattr(distributed.dist, "barrier", barrier)
    with pytest.raises(distributed.LaunchError, match=r"rank 1 .*prepare_timeout=5 s"):
        with distributed.rank0_first(distributed.World(rank=1, size=2), 5):
            pass


# --- 4. every visible GPU, CPUs shared among the ranks ----------------------------------

def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_auto_processes_are_every_visible_gpu(monkeypatch, capsys):
    from utils.training.distributed import resolve_processes

    assert make_config({}).nproc_per_node == 0  # auto is the default
    _gpus(monkeypatch, 2)
    assert resolve_processes(make_config({"batch_size": 32})).nproc_per_node == 2
    assert "training on 2 processes, one per visible CUDA GPU" in capsys.readouterr().out
    assert resolve_processes(make_config({"device": "cpu"})).nproc_per_node == 1
    _gpus(monkeypatch, 4)
    assert resolve_processes(make_config({"batch_size": 30})).nproc_per_node == 3
    assert "does not divide by 4 processes: training on 3" in capsys.readouterr().out
    assert resolve_processes(make_config({"nproc_per_node": 1})).nproc_per_node == 1
    assert "GPU(s) 1, 2, 3 stay idle" in capsys.readouterr().out
    _gpus(monkeypatch, 0)
    assert resolve_processes(make_config({})).nproc_per_node == 1
    assert capsys.readouterr().out == ""  # the CPU: nothing to say


def test_notebook_setup_resolves_auto_once_for_the_run(monkeypatch, tmp_path, capsys):
    import utils.data.discover as discover
    import utils.study.notebook as notebook

    _gpus(monkeypatch, 2)
    monkeypatch.setattr(runtime, "cuda_problem", lambda: None)
    monkeypatch.setattr(discover, "resolve_data_root",
                        lambda value, fallback=None: (tmp_path, True))
    monkeypatch.setattr(notebook, "environment", lambda: dict.fromkeys(
        ("python", "torch", "torchvision", "timm", "albumentations"), "x"))
    cfg, ctx = notebook.setup({"profile": "smoke", "model": "simple_cnn"})
    assert cfg.nproc_per_node == 2 and ctx.device.type == "cuda"
    assert "nproc_per_node=0 (auto): training on 2 processes" in capsys.readouterr().out


def test_run_all_accepts_auto_processes(capsys):
    import run_all

    assert run_all.main(["--list", "--profile", "smoke", "--nproc-per-node", "0",
                         "--only", "03_resnet_ablation_v1"]) == 0
    assert "nproc_per_node=0" in capsys.readouterr().out


def _manifest(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/nowhere/{i}.png" for i in range(n)],
                         "patient_id": [f"p{i}" for i in range(n)],
                         "split": ["train", "val", "test", "train"] * (n // 4),
                         "label": [i % 2 for i in range(n)], "boxes": [[] for _ in range(n)],
                         "width": 0, "height": 0, "source": "kermany", "synthetic": True})


def test_loader_workers_share_the_cpus_among_the_ranks(monkeypatch):
    from utils.data.dataset import make_loaders
    from utils.models import normalisation

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)  # Kaggle: 4 vCPUs, 2 GPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = make_config({"num_workers": 4, "cache": False, "model": "simple_cnn",
                       "device": "cpu"}, profile="smoke")
    loaders = make_loaders(cfg, _manifest(), normalisation(cfg.model, cfg.pretrained))
    assert {loader.num_workers for loader in loaders.values()} == {2}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert runtime.loader_workers(4) == 4 and runtime.loader_workers(2) == 2


def test_the_kernel_frees_its_gpu_cache_before_torchrun_starts(monkeypatch, tmp_path):
    from utils.training import launch

    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(launch, "check_launch", lambda cfg: None)

    def stream(cmd, env):
        calls.append("torchrun")
        raise launch.DistributedTrainingError("stop here")

    monkeypatch.setattr(launch, "_stream", stream)
    cfg = make_config({"nproc_per_node": 2, "device": "cpu", "step": "t"}, profile="smoke")
    exp = types.SimpleNamespace(cfg=cfg, checkpoint=tmp_path, manifest=_manifest())
    with pytest.raises(launch.DistributedTrainingError):
        launch.train_distributed(exp, {}, synthetic=True)
    assert calls == ["empty_cache", "torchrun"]


# --- 5. cuDNN autotuning unless bit-exactness is asked for ------------------------------

def test_cudnn_autotunes_training_on_cuda_unless_deterministic(monkeypatch):
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        assert runtime.configure_cudnn(torch.device("cuda"), deterministic=False) is True
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert runtime.configure_cudnn("cuda", deterministic=True) is False
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert runtime.configure_cudnn("cpu", deterministic=False) is False
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
        torch.use_deterministic_algorithms(False)


def test_fit_sets_the_cudnn_policy_and_records_it(monkeypatch):
    import utils.training.loop as train

    seen = []
    monkeypatch.setattr(train, "configure_cudnn",
                        lambda device, deterministic: seen.append(deterministic) or True)
    for deterministic in (False, True):
        cfg = make_config({"epochs": 1, "device": "cpu", "image_size": 32,
                           "deterministic": deterministic}, profile="smoke")
        hist = train.fit(create_model("simple_cnn", 1), _batches(1), _batches(1, seed=1), cfg,
                         loss_fn=nn.BCEWithLogitsLoss(), device="cpu")
        assert hist.cudnn_benchmark is True  # what the policy answered, kept for the JSON
    assert seen == [False, True]


@pytest.mark.slow
def test_results_record_autotuning_resume_and_determinism(tmp_path):
    from utils.data.demo import make_demo
    from utils.study.experiment import run_experiment
    from utils.study.notebook import REPO_ROOT
    from utils.runtime import RunContext

    root = make_demo(tmp_path / "demo", seed=0, image_px=48, scale=0.3)
    cfg = make_config({"data_root": str(root), "model": "simple_cnn", "step": "r",
                       "device": "cpu", "checkpoint_dir": str(tmp_path / "ck"),
                       "reports_dir": str(tmp_path / "rep")}, profile="smoke")
    ctx = RunContext(device=torch.device("cpu"), data_root=root, synthetic=True,
                     repo_root=REPO_ROOT, environment={})
    results = run_experiment(cfg, ctx).results
    assert results["training"]["cudnn_benchmark"] is False  # the CPU: no cuDNN
    assert results["training"]["resume"] is None
    assert results["config"]["deterministic"] is False


# --- 6. no silent CPU fallback -----------------------------------------------------------

def test_this_machine_picks_the_cpu_without_a_word(capsys):
    assert runtime.nvidia_driver() is None  # no /proc/driver/nvidia, no nvidia-smi here
    assert runtime.pick_device("auto").type == "cpu"
    assert capsys.readouterr().out == ""


def test_a_gpu_torch_cannot_use_stops_naming_versions_and_the_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: "535.104.05")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for requested in ("auto", "cuda"):
        with pytest.raises(runtime.CudaSetupError) as err:
            runtime.pick_device(requested)
        message = str(err.value)
        assert f"CUDA {torch.version.cuda}" in message and "535.104.05" in message
        assert "driver 580 or newer" in message
        assert "--index-url https://download.pytorch.org/whl/cu126" in message
    assert runtime.pick_device("cpu").type == "cpu"  # the CPU on purpose
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose
    assert runtime.pick_device("auto").type == "cpu"


def test_a_gpu_without_kernels_in_the_build_stops_before_any_work(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    with pytest.raises(runtime.CudaSetupError) as err:
        runtime.pick_device("auto")
    message = str(err.value)
    assert "Tesla P100-PCIE-16GB" in message and "capability 6.0" in message
    assert "sm_75, sm_80, sm_90" in message and "whl/cu126" in message
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))  # a T4
    assert runtime.pick_device("auto").type == "cuda"


def test_the_driver_version_is_read_from_the_kernel_module_or_nvidia_smi(monkeypatch, tmp_path):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                       "580.65.06  Release Build  (dvs-builder@U16)  Sun Jul 27 2025\n")
    monkeypatch.setattr(runtime, "DRIVER_FILE", version)
    runtime.nvidia_driver.cache_clear()
    try:
        assert runtime.nvidia_driver() == "580.65.06"
        monkeypatch.setattr(runtime, "DRIVER_FILE", tmp_path / "absent")
        runtime.nvidia_driver.cache_clear()
        monkeypatch.setattr(runtime.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
        monkeypatch.setattr(runtime.subprocess, "run", lambda *a, **k: types.SimpleNamespace(
            returncode=0, stdout="550.54.15\n550.54.15\n"))
        assert runtime.nvidia_driver() == "550.54.15"
    finally:
        runtime.nvidia_driver.cache_clear()


# --- 8. the smaller items ----------------------------------------------------------------

def test_external_scoring_uses_the_runs_amp(monkeypatch):
    import utils.data.dataset as dataset
    import utils.evaluation.metrics as evaluate
    import utils.study.grid as grid

    seen = {}
    monkeypatch.setattr(dataset, "make_loaders", lambda *a, **k: {"test": "loader"})
    monkeypatch.setattr(dataset, "test_fingerprint", lambda m: "fp")
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: seen.update(k) or "preds")
    monkeypatch.setattr(grid, "external_row", lambda *a, **k: {})
    step = grid.StepGrid.__new__(grid.StepGrid)
    step.external_sources, step.ctx = ["rsna"], types.SimpleNamespace(device="cpu")
    step.manifest = lambda name: _manifest()
    exp = types.SimpleNamespace(cfg=make_config({"amp": False, "dataset": "kermany"}),
                                evaluation={"threshold": {"value": 0.5}}, model=None)
    step._score_external(exp)
    assert seen["amp"] is False


def test_occlusion_check_runs_where_the_model_is():
    from utils.evaluation.occlusion import occlusion_check

    class Where(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("w", nn.Parameter(torch.zeros(1, device="meta")))
            self.seen = []

        def forward(self, x):
            self.seen.append(x.device.type)
            return torch.zeros(len(x), 1)

    model = Where()
    occlusion_check(model, torch.rand(2, 1, 32, 32), [[[4, 8, 6, 6]]] * 2)
    assert model.seen and set(model.seen) == {"meta"}


@pytest.mark.slow
def test_two_processes_validate_with_rank0s_batchnorm_statistics(tmp_path):
    """EMA, no SyncBatchNorm, each rank's share of the images differs: every rank ends
    (after its validation) with rank 0's BN statistics, the ones best.pt saves."""
    proc = _torchrun(str(HELPER), "bn", str(tmp_path / "bn"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"bn.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["bn.running_mean"].abs().sum() > 0
    for key, value in ranks[0].items():
        assert torch.equal(ranks[1][key], value), key


def test_batchnorm_statistics_warm_start_then_follow_the_weights():
    """The first ten batches are averaged plainly (no memory of the init's mean 0 / var 1),
    then torch's 0.1: an average over the whole run kept early weights' statistics (the
    demo's ResNet-18 without regularisation: eval-mode validation BCE 3.00, 0.11 once
    recalibrated)."""
    from utils.training.schedules import BatchNormClock

    clock = BatchNormClock(nn.Sequential(nn.BatchNorm2d(2, momentum=None)))
    assert [clock.momentum(n) for n in (0, 4, 9, 10, 50)] == [1.0, 0.2, 0.1, 0.1, 0.1]
