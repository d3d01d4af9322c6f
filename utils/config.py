"""`RunConfig`: every knob a notebook takes, built from papermill parameters and a profile.

A notebook's tagged `parameters` cell holds flat literals named exactly like the fields
below; papermill injects overrides after it, and the next cell calls `make_config`, which
rejects unknown keys and wrong types (nanoGPT's configurator does the same with globals).

Precedence, lowest first: field defaults (the study's settings) < the profile's defaults
< explicit parameters. A parameter whose value is `None` means "not set here": that is how
a notebook leaves scale knobs (epochs, image_size...) to the profile.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["RunConfig", "ConfigError", "PROFILES", "make_config", "parse_value",
           "LR_FROM_SCRATCH", "LR_FINE_TUNE"]

# The study's rates: random init trains at 1e-3; pretrained weights are fine-tuned at 1e-4
# (1e-3 from a good start wrecks the features in the first steps, 1e-4 from scratch barely
# moves in a few epochs). `lr=0` ("auto") picks one from the run's starting point.
LR_FROM_SCRATCH, LR_FINE_TUNE = 1e-3, 1e-4


class ConfigError(ValueError):
    """A parameter that does not exist, has the wrong type or an impossible value."""


@dataclass
class RunConfig:
    """All settings of one run. Defaults are the `full` study settings (GPU, Kaggle data)."""

    # --- identity / profile ------------------------------------------------------------
    step: str = ""                 # run_all step name; names checkpoints/ and results/
    profile: str = "auto"          # auto | demo | smoke | full ("auto": full if real data found)
    variant: str = ""              # ablation variant (03_resnet_ablation): cnn, v1, v2, v3, final...
    # --- data --------------------------------------------------------------------------
    dataset: str = "kermany"       # kermany | rsna | nih: the step's own dataset
    datasets: str = ""             # common ground: "" = just `dataset`; "all" = every binary
                                   # pneumonia source found; or a list such as "kermany,rsna"
    data_root: str = ""            # "" = auto: CXR_DATA_ROOT, Kaggle mounts, else generated demo
    task: str = "binary"           # binary (pneumonia) | multilabel (NIH 14 findings)
    image_size: int = 224
    max_images: int = 0            # cap per split for quick runs; 0 = all
    max_train_images: int = 0      # cap on the training split only (seeded by split_seed:
                                   # every run of a source trains on one subset; val and
                                   # test untouched, so the test set is full's); 0 = all
    val_fraction: float = 0.15     # patient-level validation split carved from train
    test_fraction: float = 0.15    # only for sources without an official test split
    cache: bool = True             # pre-resized uint8 cache (utils.data.cache)
    num_workers: int = 2
    on_bad_image: str = "error"    # error | skip
    # --- model -------------------------------------------------------------------------
    model: str = "resnet18"        # a name from utils.models.list_models(aliases=True)
    pretrained: bool | str = True  # true/"imagenet", false/"none", or "xrv:<weights>"
                                   # (torchxrayvision's, utils.models.xrv); kept canonical
    allow_random_init: bool = False  # offline + pretrained: fall back to random weights
    dropout: float = 0.0
    trainable_from: str = "all"    # all | head | layer3 | layer4 | ... (see utils.models)
    init_checkpoint: str = ""      # start from another run's weights (head replaced if needed)
    # --- the transfer experiment (09_transfer) ------------------------------------------
    transfer_starts: str = "random,imagenet,nih,xrv"  # starting points compared: random init,
                                   # ImageNet, NIH (init_checkpoint, "" = 02_chexnet_nih's),
                                   # torchxrayvision ("xrv" or "xrv:<weights name>")
    transfer_stages: str = ""      # trainable_from stages compared ("" = head,all on demo and
                                   # smoke; head,<last block>,all on full)
    # --- training ----------------------------------------------------------------------
    epochs: int = 20
    nih_epochs: int = 0            # 02_chexnet part A (14 findings on NIH); 0 = `epochs`
    batch_size: int = 32           # the global batch: N processes take batch_size / N each
    lr: float = 0.0                # 0 = auto from the starting point: 1e-3 from random init,
                                   # 1e-4 fine-tuning (pretrained / init_checkpoint); see
                                   # learning_rate(), which the results JSON records
    weight_decay: float = 1e-4
    optimizer: str = "adamw"       # adamw | adam | sgd
    scheduler: str = "cosine"      # cosine | plateau | step | none
    loss: str = "bce"              # bce | weighted_bce | focal
    pos_weight: float = 0.0        # weighted_bce: 0 = neg/pos ratio of the train split
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25      # negative = no alpha weighting
    sampler: str = "none"          # none | balanced | capped
    sampler_cap: int = 0           # capped: at most N images per finding per epoch
    augmentation: str = "basic"    # none | basic | strong | v3 (utils.data.transforms)
    warmup_epochs: float = 0.0     # linear learning-rate warm-up (per batch) before the
                                   # schedule (cosine or none); 0 = off
    ema_decay: float = 0.0         # EMA of the weights (validated, saved, evaluated); 0 = off
    early_stopping: int = 0        # patience in epochs; 0 = off
    monitor: str = "val_auroc"     # metric for best checkpoint and early stopping
    grad_clip: float = 0.0         # max grad norm; 0 = off
    amp: bool = True               # mixed precision on CUDA (ignored on CPU)
    deterministic: bool = False    # bit-exact kernels: cuDNN autotuning off (slower on CUDA);
                                   # false = cudnn.benchmark on CUDA (results JSON records it)
    channels_last: bool = True
    compile: bool = False          # torch.compile
    max_steps_per_epoch: int = 0   # 0 = full epochs (smoke uses a few batches)
    seed: int = 42                 # training seed (init, data order, augmentation)
    seeds: int = 1                 # train this many seeds: seed, seed+1, ... (full profile: 3)
    split_seed: int = 42           # patient splits and max_images caps: one test set for all seeds
    device: str = "auto"           # auto | cpu | cuda | mps
    resume: bool = True            # continue from checkpoints/<step>/last.pt when present
    keep_last: bool = False        # keep last.pt (optimizer state, for a resume) after the run
    keep_best: bool = True         # keep best.pt after the run (08's gallery, 09, predict and
                                   # 04-06's anatomy read it); false deletes it once evaluated
    # --- processes (torchrun + DDP; see utils.training.distributed) -------------------------------
    nproc_per_node: int = 0        # training processes on this machine (one per GPU, or CPU
                                   # gloo); 0 = auto: every visible CUDA GPU, 1 on CPU/MPS
                                   # (utils.training.distributed.resolve_processes)
    nnodes: int = 1                # machines; > 1 needs rdzv_endpoint (and a shared checkpoint_dir)
    node_rank: int = 0             # this machine's number; node 0 hosts the rendezvous
    rdzv_endpoint: str = ""        # HOST:PORT of node 0; "" on one machine = a free local port
    rdzv_id: str = ""              # the job's name, the same on every node; "" = the run name
    rdzv_timeout: int = 300        # seconds to wait for node 0's endpoint and for every node
    dist_backend: str = "auto"     # auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    prepare_timeout: int = 7200    # seconds the other processes wait for rank 0 to build the
                                   # manifest and image caches (a first NIH build takes long)
    sync_bn: bool = False          # SyncBatchNorm across processes (CUDA only in torch 2.14)
    tensorboard: bool = False      # event files per run under <reports_dir>/runs/<run>/
    # --- evaluation --------------------------------------------------------------------
    threshold_policy: str = "max_f1"   # fixed | max_f1 | youden | sensitivity (on validation)
    threshold: float = 0.5             # the value for the `fixed` policy
    target_sensitivity: float = 0.9    # for the `sensitivity` policy
    tta: bool = False
    bootstrap: int = 1000              # resamples for 95% CIs; 0 = off
    # --- outputs -----------------------------------------------------------------------
    reports_dir: str = "reports"
    checkpoint_dir: str = "checkpoints"
    cache_dir: str = "data/cache"      # pre-resized image caches (utils.data.cache)

    def __post_init__(self) -> None:
        # one spelling per weights source ("imagenet" is True): resume and fingerprints agree
        from .models.weights import canonical_pretrained

        try:
            self.pretrained = canonical_pretrained(self.pretrained)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def fine_tuning(self) -> bool:
        """Whether training starts from learned weights: `init_checkpoint`, or `pretrained`
        other than False/"none" (it may name a source, e.g. "imagenet", "xrv:<weights>")."""
        pretrained = self.pretrained
        if isinstance(pretrained, str):
            pretrained = pretrained.strip().lower() not in ("", "none", "false")
        return bool(self.init_checkpoint) or bool(pretrained)

    def learning_rate(self) -> tuple[float, str]:
        """(the rate training uses, why). An explicit `lr` wins; `lr=0` follows the start.

        Resolved when used, not in `make_config`, so a config copied with another starting
        point (`dataclasses.replace(cfg, init_checkpoint=...)`, as 02 part B and the transfer
        notebook do) gets that start's rate.
        Example:
            >>> make_config({"pretrained": False}).learning_rate()
            (0.001, 'auto: 1e-3, training from random init (pretrained=False)')
        """
        if self.lr > 0:
            return self.lr, "set explicitly (lr)"
        if self.init_checkpoint:
            return LR_FINE_TUNE, (f"auto: 1e-4, fine-tuning from init_checkpoint="
                                  f"{self.init_checkpoint}")
        if self.fine_tuning():
            return LR_FINE_TUNE, f"auto: 1e-4, fine-tuning pretrained={self.pretrained!r} weights"
        return LR_FROM_SCRATCH, (f"auto: 1e-3, training from random init "
                                 f"(pretrained={self.pretrained!r})")

    def dataset_list(self) -> list[str]:
        """The `datasets` field as names (`[dataset]` when empty; `["all"]` stays symbolic:
        `utils.study.runs.datasets_for` resolves it against the data root)."""
        names = [d.strip() for d in self.datasets.split(",") if d.strip()]
        return names or [self.dataset]

    def validate(self) -> "RunConfig":
        """Reject impossible values before any work starts, naming the value and range."""
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"{name}={value!r} is not one of {sorted(choices)}")
        for name, lo in _MINIMUMS.items():
            if getattr(self, name) < lo:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= {lo}")
        for name in ("val_fraction", "test_fraction", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay={self.ema_decay!r} must be in [0, 1) (0 = no EMA; "
                              f"e.g. 0.999)")
        if self.warmup_epochs and self.scheduler not in ("cosine", "none"):
            raise ConfigError(f"warmup_epochs={self.warmup_epochs!r} works with "
                              f"scheduler='cosine' or 'none', not {self.scheduler!r}")
        for name in ("threshold", "target_sensitivity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        if self.image_size % 16 and self.model.startswith(("vit", "mixer")):
            lo = self.image_size // 16 * 16
            raise ConfigError(f"image_size={self.image_size} must be a multiple of 16 "
                              f"for {self.model} (16-pixel patches), e.g. "
                              f"{' or '.join(str(v) for v in (lo, lo + 16) if v >= 16)}")
        # their pooling stages shrink a smaller input to 0×0 (a cryptic error mid-forward)
        if self.image_size < 32 and self.model in ("simple_cnn", "densenet121", "chexnet"):
            raise ConfigError(f"image_size={self.image_size} must be >= 32 for {self.model} "
                              f"(its poolings reduce a smaller image to nothing)")
        from .data.sources import list_sources  # lazy: the registry imports pandas

        if self.dataset not in list_sources():
            raise ConfigError(f"dataset={self.dataset!r} is not one of {sorted(list_sources())}")
        unknown = [d for d in self.dataset_list() if d not in list_sources()]
        if unknown and self.datasets != "all":
            raise ConfigError(f"datasets={self.datasets!r}: {unknown} are not sources; use "
                              f"'', 'all' or names from {sorted(list_sources())}")
        processes = self.nproc_per_node * self.nnodes  # 0 = auto: checked when resolved
        if processes and self.batch_size % processes:
            near = processes * max(1, self.batch_size // processes)
            raise ConfigError(f"batch_size={self.batch_size} is the global batch and must divide "
                              f"by the {processes} processes (nproc_per_node x nnodes): use a "
                              f"multiple of {processes}, e.g. {near}")
        if self.node_rank >= self.nnodes:
            raise ConfigError(f"node_rank={self.node_rank} must be < nnodes={self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError(f"nnodes={self.nnodes} needs rdzv_endpoint='HOST:PORT' of node 0 "
                              f"(the same on every node, e.g. 'node0.lab:29500')")
        if self.task == "multilabel" and self.dataset not in list_sources(multilabel=True):
            raise ConfigError(f"task='multilabel' needs dataset= one of "
                              f"{list_sources(multilabel=True)} (finding labels)")
        return self


_CHOICES: dict[str, set] = {
    "profile": {"auto", "demo", "smoke", "kaggle", "colab", "full", "rehearsal"},
    "task": {"binary", "multilabel"},
    "on_bad_image": {"error", "skip"},
    "optimizer": {"adamw", "adam", "sgd"},
    "scheduler": {"cosine", "plateau", "step", "none"},
    "loss": {"bce", "weighted_bce", "focal"},
    "sampler": {"none", "balanced", "capped"},
    "augmentation": {"none", "basic", "strong", "v3"},
    "threshold_policy": {"fixed", "max_f1", "youden", "sensitivity"},
    "device": {"auto", "cpu", "cuda", "mps"},
    "monitor": {"val_auroc", "val_f1", "val_loss"},
    "dist_backend": {"auto", "gloo", "nccl"},
}
_MINIMUMS: dict[str, float] = {
    "image_size": 16, "batch_size": 1, "epochs": 1, "nih_epochs": 0, "max_images": 0,
    "max_train_images": 0,
    "num_workers": 0, "lr": 0.0, "weight_decay": 0.0, "pos_weight": 0.0, "focal_gamma": 0.0,
    "sampler_cap": 0, "warmup_epochs": 0.0, "early_stopping": 0, "seeds": 1, "grad_clip": 0.0,
    "max_steps_per_epoch": 0, "bootstrap": 0, "nproc_per_node": 0, "nnodes": 1, "node_rank": 0,
    "rdzv_timeout": 1, "prepare_timeout": 1,
}

# Profiles set *scale* knobs; the recipe (model, loss, sampler...) belongs to the notebook
# and its run_all step, and the learning rate follows the starting point (`lr=0`, auto).
# demo/smoke also set `pretrained=False`: they run offline on synthetic data. Any key can
# still be overridden by a parameter.
PROFILES: dict[str, dict[str, Any]] = {
    # the seeds' settings on the Kaggle data, for one GPU
    "full": {"image_size": 224, "epochs": 20, "batch_size": 32, "max_images": 0,
             "num_workers": 4, "cache": True, "bootstrap": 1000, "seeds": 3,
             "sampler_cap": 10000},
    # full's recipe sized to one 12-hour hosted session (docs/profiles.md; ≤ 11 h by
    # `run_all.py --plan`): every step, source and network at 224 px, the training split
    # capped at 16,000 films per run (NIH's ~73,000 cost most; validation and test are
    # full's, so the test fingerprints match full's) and 10 epochs; kaggle 3 seeds on 2xT4
    # (nproc_per_node=0: both GPUs), colab 2 seeds on one T4 (the paired tests need >= 2)
    "kaggle": {"image_size": 224, "epochs": 10, "batch_size": 32, "max_images": 0,
               "max_train_images": 16000, "num_workers": 4, "cache": True,
               "bootstrap": 1000, "seeds": 3, "sampler_cap": 10000},
    "colab": {"image_size": 224, "epochs": 10, "batch_size": 32, "max_images": 0,
              "max_train_images": 16000, "num_workers": 2, "cache": True,
              "bootstrap": 1000, "seeds": 2, "sampler_cap": 10000},
    # synthetic data the project generates; tiny sizes; minutes on a laptop CPU
    # (test_fraction 0.35 for RSNA and NIH, which have no official test split: ~260 test
    # images, CIs of about ±0.05; run_all gives the slow starters more epochs, batch 16)
    "demo": {"image_size": 64, "epochs": 3, "batch_size": 32, "max_images": 0,
             "num_workers": 0, "cache": True, "bootstrap": 200, "pretrained": False,
             "sampler_cap": 60, "test_fraction": 0.35},
    # tests: seconds per notebook
    "smoke": {"image_size": 32, "epochs": 1, "batch_size": 8, "max_images": 48,
              "num_workers": 0, "cache": False, "bootstrap": 20, "pretrained": False,
              "max_steps_per_epoch": 2, "sampler_cap": 8},
}

# `run_all.py --rehearse` (utils/study/rehearse.py, docs/rehearsal.md): full's plan and
# settings (3 seeds, every source) with only the compute turned down, on the CPU in minutes
PROFILES["rehearsal"] = {**PROFILES["full"], "image_size": 32, "epochs": 1, "nih_epochs": 1,
                         "max_steps_per_epoch": 2, "batch_size": 8, "max_images": 48,
                         "bootstrap": 20, "pretrained": False, "num_workers": 0,
                         "cache": False}

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _check_type(key: str, value: Any) -> Any:
    """nanoGPT-style type check; ints are accepted where floats are expected."""
    expected = type(getattr(RunConfig(), key))
    if key == "pretrained" and type(value) is str:  # a named source; __post_init__ checks it
        return value
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f"parameter {key}={value!r} has type {type(value).__name__}, "
                          f"expected {expected.__name__}")
    return value


def parse_value(text: str) -> Any:
    """A parameter given as text (`run_all.py -p`, `benchmarks.recipes` specs): true/false ->
    bool, then int, then float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def make_config(params: Mapping[str, Any] | None = None, profile: str | None = None,
                strict: bool = True) -> RunConfig:
    """Build a validated `RunConfig` from a profile and explicit parameters.

    Args:
        params: flat parameters (papermill's); `None` values mean "use the profile default".
        profile: demo | smoke | full; defaults to `params["profile"]`. `auto` must already
            be resolved (see `utils.study.notebook.setup`), else it is treated as `full`.
        strict: reject keys that are not `RunConfig` fields.
    Example:
        >>> make_config({"model": "densenet121", "epochs": 3}, profile="demo").epochs
        3
    """
    params = {k: v for k, v in dict(params or {}).items() if v is not None}
    unknown = sorted(set(params) - set(_FIELDS))
    if unknown and strict:
        raise ConfigError(f"unknown parameter(s) {unknown}; valid names are RunConfig "
                          f"fields: {sorted(_FIELDS)}")
    profile = profile or params.get("profile", "auto")
    if profile not in PROFILES and profile != "auto":
        raise ConfigError(f"profile={profile!r} is not one of {sorted(PROFILES)}")
    merged: dict[str, Any] = dict(PROFILES.get(profile, PROFILES["full"]))
    merged.update({k: v for k, v in params.items() if k in _FIELDS})
    merged["profile"] = profile
    values = {k: _check_type(k, v) for k, v in merged.items()}
    return RunConfig(**values).validate()
