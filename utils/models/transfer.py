"""Transfer learning, as the study did it: freeze a backbone up to a stage, and start from
another run's weights (e.g. a DenseNet121 trained on NIH's 14 findings, then fine-tuned for
binary pneumonia), replacing the head when the class count differs.

The registry (`utils.models.create_model`) calls these with the names it knows (where a
stage starts, what the head is called); they work on any `nn.Module` by parameter name.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..torchio import read_torch_file

__all__ = ["freeze_before", "load_init_weights"]


def freeze_before(model: nn.Module, stage: str, prefix: str, head: str) -> None:
    """requires_grad=False for every parameter before the one named `prefix...`; the head
    (parameters named `head...`) always trains. `stage="all"` trains everything.

    Frozen BatchNorm layers still update running statistics in train mode (as in the study).
    """
    if stage == "all":
        return
    reached = False
    for pname, param in model.named_parameters():
        reached = reached or pname.startswith(prefix)
        param.requires_grad = reached or pname.startswith(head + ".")
    if not reached:
        raise ValueError(f"stage {stage!r} not found in {type(model).__name__} (no parameter "
                         f"starts with {prefix!r})")


def load_init_weights(model: nn.Module, head: str, name: str, path: str) -> None:
    """Load another run's weights (a checkpoint's `model_state`, or a plain state_dict).

    Tensors whose shape differs must belong to the head (`head...`), which keeps its fresh
    initialisation; any other mismatch is an error naming the keys. The file is read with
    `weights_only=True` (`CheckpointError` if it holds anything else).
    """
    path_ = Path(path)
    if not path_.is_file():
        raise FileNotFoundError(f"init_checkpoint {path} does not exist: run the step that "
                                f"writes it first, or pass init_checkpoint=''")
    # weights_only=True: our checkpoints are plain dicts of tensors and builtins, and a
    # file from a stranger must not run code while it loads (CheckpointError otherwise)
    ckpt = read_torch_file(path_)
    state = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not k.startswith(head + ".")]
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state.items() if k not in skipped}, strict=False)
    bad += [k for k in missing if not k.startswith(head + ".")] + list(unexpected)
    if bad:
        src = ckpt.get("model_name", "?") if isinstance(ckpt, dict) else "?"
        raise ValueError(f"init_checkpoint {path} (model {src!r}) does not fit {name}: "
                         f"mismatched keys {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    if skipped or missing:
        print(f"init_checkpoint {path}: loaded the backbone; new head, skipped "
              f"{sorted(set(skipped) | set(missing))} "
              f"({[tuple(state[k].shape) for k in skipped]} -> "
              f"{[tuple(own[k].shape) for k in skipped]})")
