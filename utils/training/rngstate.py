"""Every random state that the next epoch depends on, captured into `last.pt` and restored.

Global generators (Python `random`, NumPy's legacy global, torch CPU and CUDA) drive
dropout and anything a dataset draws itself. Data order lives in `torch.Generator`s that
loaders and samplers hold. Augmentation lives in albumentations: a `Compose` and *each* of
its transforms keep their own NumPy `Generator` and `random.Random` (`set_random_seed`
gives every transform its own pair), which no global seed reaches. Missing those made the
demo's `02_chexnet_nih` resume to other weights than an uninterrupted run (issue 13.11).

The state is plain data (lists, dicts, ints, tensors), so checkpoints still load with
`weights_only=True`. CUDA states are restored for the GPUs present: a run saved on 2 GPUs
resumes on 1 (`torch.cuda.set_rng_state_all` raised an IndexError there). A resume with
another number of processes cannot restore the per-rank states at all: `reseed` moves every
generator on by the epoch instead.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Iterable

import numpy as np
import torch

__all__ = ["data_generators", "transform_rngs", "capture", "restore", "reseed"]


def _sampler_chain(loader) -> list[Any]:
    """The loader, its sampler(s) and what they wrap (a shard wrapper's base sampler)."""
    chain, owner = [loader], getattr(loader, "batch_sampler", None)
    for obj in (getattr(loader, "sampler", None), getattr(owner, "sampler", None)):
        while obj is not None and obj not in chain:
            chain.append(obj)
            obj = getattr(obj, "sampler", None)
    return chain


def data_generators(*loaders) -> list[torch.Generator]:
    """Every distinct torch.Generator that decides the data order, in a stable order."""
    found: dict[int, torch.Generator] = {}
    for loader in loaders:
        for owner in _sampler_chain(loader):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator):
                found.setdefault(id(gen), gen)
    return list(found.values())


def _transform_nodes(transform: Any) -> Iterable[Any]:
    """A transform and, depth first, the transforms it composes."""
    stack = [transform]
    while stack:
        node = stack.pop(0)
        if node is None:
            continue
        yield node
        children = getattr(node, "transforms", None)
        if isinstance(children, (list, tuple)):
            stack[:0] = list(children)


def transform_rngs(*loaders) -> list[np.random.Generator | random.Random]:
    """The private generators of each loader's dataset transform tree (albumentations'
    `random_generator` and `py_random`), deduplicated, in a stable depth-first order."""
    found: dict[int, Any] = {}
    for loader in loaders:
        for node in _transform_nodes(getattr(getattr(loader, "dataset", None), "transform", None)):
            for name in ("random_generator", "py_random"):
                rng = getattr(node, name, None)
                if isinstance(rng, (np.random.Generator, random.Random)):
                    found.setdefault(id(rng), rng)
    return list(found.values())


def _rng_of(rng: np.random.Generator | random.Random) -> Any:
    if isinstance(rng, random.Random):
        return ["random", rng.getstate()]
    return ["numpy", rng.bit_generator.state]


def capture(loaders: tuple) -> dict[str, Any]:
    """Global, data-order and augmentation generator states, as plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in data_generators(*loaders)],
            "transforms": [_rng_of(r) for r in transform_rngs(*loaders)]}


def _restore_transforms(saved: list | None, rngs: list) -> None:
    if saved is None:  # a checkpoint from before augmentation state was kept
        warnings.warn("the checkpoint does not hold the augmentation generators (written by "
                      "an older version): the resumed augmentations will differ", stacklevel=3)
        return
    kinds = [_rng_of(r)[0] for r in rngs]
    if [k for k, _ in saved] != kinds:
        warnings.warn(f"the checkpoint holds {len(saved)} augmentation generators, the "
                      f"loaders' transforms have {len(rngs)}: the resumed augmentations will "
                      f"differ", stacklevel=3)
        return
    for rng, (kind, state) in zip(rngs, saved):
        if kind == "random":
            version, internal, gauss = state
            rng.setstate((version, tuple(internal), gauss))
        else:
            rng.bit_generator.state = state


def _restore_cuda(saved: list) -> None:
    """The saved CUDA generators of the GPUs present (the first min(saved, visible))."""
    if not saved or not torch.cuda.is_available():
        return
    present = torch.cuda.device_count()
    if present != len(saved):
        warnings.warn(f"the checkpoint holds the CUDA generators of {len(saved)} GPU(s), this "
                      f"machine has {present}: restoring the first {min(present, len(saved))}",
                      stacklevel=3)
    for index, state in enumerate(saved[:present]):
        torch.cuda.set_rng_state(state, index)


def reseed(loaders: tuple, seed: int, epoch: int) -> None:
    """For a resume that cannot restore the saved states (another number of processes):
    seed the global generators with `seed + epoch`, move every data-order generator on from
    the seed it was created with by `epoch`, and the augmentation transforms from theirs,
    so the epochs after the resume do not replay the first epochs' draws, and generators the
    ranks share (the global sample order) stay shared."""
    random.seed(seed + epoch)
    np.random.seed((seed + epoch) % 2**32)
    torch.manual_seed(seed + epoch)
    for gen in data_generators(*loaders):
        gen.manual_seed(gen.initial_seed() + epoch)
    for loader in loaders:
        transform = getattr(getattr(loader, "dataset", None), "transform", None)
        seeded = getattr(transform, "seed", None)  # albumentations' Compose keeps its seed
        if hasattr(transform, "set_random_seed") and isinstance(seeded, int):
            transform.set_random_seed(seeded + epoch)


def restore(state: dict[str, Any], loaders: tuple) -> None:
    """Set every generator `capture` saved; a mismatch in count warns (data will differ)."""
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    _restore_cuda(state["cuda"])
    generators = data_generators(*loaders)
    if len(state["generators"]) != len(generators):
        warnings.warn(f"checkpoint holds {len(state['generators'])} data-order generators, "
                      f"the loaders have {len(generators)}: the resumed data order will differ",
                      stacklevel=2)
    else:
        for gen, saved in zip(generators, state["generators"]):
            gen.set_state(saved)
    _restore_transforms(state.get("transforms"), transform_rngs(*loaders))
