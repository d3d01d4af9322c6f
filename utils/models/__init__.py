"""Models: the registry (`create_model` by name), the hand-written networks, pretrained
weights and their provenance, torchxrayvision's weights, transfer-learning starts.

The public names are imported lazily (PEP 562): `utils.config` reads `weights` to spell
`pretrained` canonically without importing torch.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "create_model": "registry", "list_models": "registry", "model_info": "registry", "normalisation": "registry",
    "count_parameters": "registry",
    "ModelInfo": "base", "register_model": "base", "register_alias": "base",
    "tokens_to_grid": "zoo",
    "SimpleCNN": "nets", "BasicBlock": "nets", "ResNet18Scratch": "nets",
    "PretrainedWeightsError": "provenance", "describe_weights": "provenance",
}
__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
