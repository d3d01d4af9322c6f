"""Which training images an epoch sees: all once (`none`), class-balanced draws, or the
study's NIH recipe of at most `cap` images per finding, redrawn every epoch."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

__all__ = ["make_sampler", "CappedSampler", "sample_groups", "SAMPLERS"]

SAMPLERS = ("none", "balanced", "capped")


def _as_matrix(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels.reshape(len(labels), -1) > 0)


def sample_groups(labels: np.ndarray) -> np.ndarray:
    """Each image's group: its rarest positive finding, or K ("no finding") when it has none.

    For binary labels this is 0 for positives and 1 for negatives. Balancing on the rarest
    finding lets a rare finding be sampled as often as a common one even when most of its
    images also carry a common finding.
    """
    positive = _as_matrix(labels)
    counts = positive.sum(0).astype(float)
    rarity = np.where(positive, counts, np.inf)
    return np.where(positive.any(1), rarity.argmin(1), positive.shape[1])


def make_sampler(kind: str, labels: np.ndarray, cap: int = 0, seed: int = 0) -> Sampler | None:
    """The training sampler for `RunConfig.sampler` (None: shuffle the whole split).

    Args:
        kind: `none`, `balanced` (each group equally likely, N draws with replacement per
            epoch) or `capped` (at most `cap` images per finding and per "no finding").
        labels: training targets aligned with the dataset, `N` or `N×K` of 0/1.
        cap: images per group per epoch for `capped`.
        seed: seeds the sampler's own generator (independent of global seeds).
    Example:
        >>> sampler = make_sampler("balanced", np.array([0] * 90 + [1] * 10), seed=0)
        >>> loader = DataLoader(dataset, batch_size=32, sampler=sampler)  # doctest: +SKIP
    """
    if kind == "none":
        return None
    if len(labels) == 0:
        raise ValueError(f"sampler={kind!r} got no training labels")
    if kind == "balanced":
        groups = sample_groups(labels)
        weights = 1.0 / np.bincount(groups)[groups]
        generator = torch.Generator().manual_seed(seed)
        return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                     num_samples=len(groups), replacement=True,
                                     generator=generator)
    if kind == "capped":
        return CappedSampler(labels, cap, seed)
    raise ValueError(f"sampler={kind!r} is not one of {list(SAMPLERS)}")


class CappedSampler(Sampler[int]):
    """At most `cap` images drawn for each finding and for "no finding", fresh every epoch.

    Images are drawn without replacement within a group; an image with several findings
    can be drawn by each of them but appears once per epoch (so a common finding may reach
    more than `cap` images through the others). Each `__iter__` uses the epoch set by
    `set_epoch` (as with DistributedSampler) and then advances it, so a training loop that
    never calls `set_epoch` still gets a new draw every epoch.
    """

    def __init__(self, labels: np.ndarray, cap: int, seed: int = 0):
        if cap <= 0:
            raise ValueError(f"sampler='capped' needs a cap > 0 (sampler_cap), got {cap}")
        positive = _as_matrix(labels)
        self.groups = [np.flatnonzero(col) for col in positive.T]
        self.groups.append(np.flatnonzero(~positive.any(1)))   # "No Finding"
        self.cap, self.seed, self.epoch = cap, seed, 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """The epoch's image indices, in training order (deterministic per seed and epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            chosen = [rng.choice(g, size=min(self.cap, len(g)), replace=False)
                      for g in self.groups if len(g)]
            self._cache = (epoch, rng.permutation(np.unique(np.concatenate(chosen))))
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.indices(self.epoch))

    def __iter__(self) -> Iterator[int]:
        order = self.indices(self.epoch)
        self.epoch += 1
        return iter(order.tolist())
