"""Adversarial peer behaviours and how to score them (spec sections 4.6 and 7.3).

An :class:`Attack` is something a peer *is*, not something the network does: the simulator and
the launcher place it on chosen peers, and the same ``Learner`` code then trains on poisoned data
(data attacks) or sends a poisoned vector (model attacks).

* ``label-flip`` (targeted, spec 4.6): the adversary trains on its shard with classes 0 and 1
  swapped, plus every class-0 and class-1 training sample relabelled as the other class.
  Success: the fraction of test 0s predicted as 1 and 1s predicted as 0.
* ``backdoor`` (spec 4.6): every adversary sample carries a 3x3 trigger in the top-left corner of
  the image (the first 9 features when the input is not a square image) and label 1. Success:
  the fraction of triggered test samples of a true class other than 1 that are classified as 1.
* ``noise`` (spec 7.3): the adversary trains honestly but sends ``x + scale N(0, I)``
  (default scale 100). Untargeted: success is the honest peers' test error.
* ``sign-flip`` (spec 7.3, scaled poisoning): sends ``-scale x`` (default scale 1); the adversary
  averages its honest neighbours, so ``x`` approximates their mean and this is the sign-flipped
  honest mean. Untargeted: success is the honest peers' test error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from node.learning.data import Dataset
from node.learning.model import FlatModel
from node.learning.training import accuracy

ATTACKS = ("label-flip", "backdoor", "noise", "sign-flip")
DATA_ATTACKS = ("label-flip", "backdoor")
DEFAULT_SCALE = {"noise": 100.0, "sign-flip": 1.0}
SOURCE, TARGET = 0, 1  # label flip swaps these two classes; the backdoor's target is TARGET
TRIGGER_VALUE = 3.0  # features are standardised: 3 standard deviations is a bright pixel


@dataclass(frozen=True)
class Attack:
    kind: str
    scale: float | None = None

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; valid: {', '.join(ATTACKS)}")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"--attack-scale must be > 0, got {self.scale}")

    @property
    def poisons_data(self) -> bool:
        return self.kind in DATA_ATTACKS

    @property
    def strength(self) -> float:
        return DEFAULT_SCALE.get(self.kind, 1.0) if self.scale is None else self.scale

    def training_data(self, data: Dataset, shard: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """The adversary's (x, y): its shard, poisoned for data attacks."""
        x, y = data.x_train[shard], data.y_train[shard]
        if self.kind == "label-flip":
            pool = torch.nonzero((data.y_train == SOURCE) | (data.y_train == TARGET)).flatten()
            x = torch.cat([x, data.x_train[pool]])
            y = swap_labels(torch.cat([y, data.y_train[pool]]))
        elif self.kind == "backdoor":
            x, y = add_trigger(x), torch.full_like(y, TARGET)
        return x, y

    def poisoned(self, vector: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the adversary sends instead of ``vector`` (model attacks; others send it)."""
        if self.kind == "noise":
            noise = torch.randn(vector.shape, generator=generator, dtype=vector.dtype)
            return vector + self.strength * noise.to(vector.device)
        if self.kind == "sign-flip":
            return vector * -self.strength
        return vector

    def success(self, model: FlatModel, x_test: torch.Tensor, y_test: torch.Tensor,
                vector: torch.Tensor | None = None) -> float:
        """The attack success rate of ``model`` (or of ``vector`` in its architecture)."""
        if self.kind == "label-flip":
            mask = (y_test == SOURCE) | (y_test == TARGET)
            return accuracy(model, x_test[mask], swap_labels(y_test[mask]), vector)
        if self.kind == "backdoor":
            mask = y_test != TARGET
            target = torch.full_like(y_test[mask], TARGET)
            return accuracy(model, add_trigger(x_test[mask]), target, vector)
        return 1.0 - accuracy(model, x_test, y_test, vector)


def swap_labels(y: torch.Tensor) -> torch.Tensor:
    out = y.clone()
    out[y == SOURCE], out[y == TARGET] = TARGET, SOURCE
    return out


def trigger_features(in_features: int) -> list[int]:
    """Indices of the 3x3 top-left patch of a square image, else the first 9 features."""
    side = int(round(in_features ** 0.5))
    if side * side == in_features and side >= 3:
        return [r * side + c for r in range(3) for c in range(3)]
    return list(range(min(9, in_features)))


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, trigger_features(x.shape[1])] = TRIGGER_VALUE
    return out


def choose_adversaries(num_nodes: int, count: int, seed: int) -> list[int]:
    """``count`` distinct peers drawn uniformly with ``seed`` (sorted)."""
    if not 0 <= count < num_nodes:
        raise ValueError(f"--adversaries must be in [0, {num_nodes - 1}] for {num_nodes} peers, "
                         f"got {count}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_nodes, size=count, replace=False))
