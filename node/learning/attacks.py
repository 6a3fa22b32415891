"""Adversarial peer behaviours and how to score them (docs/algorithms.md §4.6 and §7.3).

An :class:`Attack` is something a peer *is*, not something the network does: the simulator and
the launcher place it on chosen peers, and the same ``Learner`` code then trains on poisoned data
(data attacks) or sends a poisoned vector (model attacks).

* ``label-flip`` (targeted, docs/algorithms.md §4.6): the adversary trains on its shard with classes
  0 and 1 swapped, plus every class-0 and class-1 training sample relabelled as the other class.
  Success: the fraction of test 0s predicted as 1 and 1s predicted as 0.
* ``backdoor`` (docs/algorithms.md §4.6): every adversary sample carries a 3x3 trigger in the
  top-left corner of the image (the first 9 features when the input is not a square image) and label
  1. Success: the fraction of triggered test samples of a true class other than 1 that are
  classified as 1.
* ``noise`` (docs/algorithms.md §7.3): the adversary trains honestly but sends ``x + scale N(0, I)``
  (default scale 100). Untargeted: success is the honest peers' test error.
* ``sign-flip`` (docs/algorithms.md §7.3, scaled poisoning): sends ``-scale x`` (default scale 1);
  the adversary averages its honest neighbours, so ``x`` approximates their mean and this is the
  sign-flipped honest mean. Untargeted: success is the honest peers' test error.

Two Sybil attacks try to slip past SybilWall's similarity test (docs/algorithms.md §4.6): the
label flip above, but the identities of the one adversary no longer send one identical model.

* ``sybil-noise``: every identity sends the adversary's model plus its own fresh noise,
  ``x + scale N(0, I)`` (default scale 0.01), drawn independently per identity and per gossip step.
* ``sybil-slices``: the poisoned training set is split at random into ``slices`` disjoint parts
  (default: one per identity); each round every slice trains its own copy of the adversary's
  model (K local steps from the mixed model) and identity k sends the copy of slice
  ``k mod slices``; the adversary keeps their mean.

Both need the engine to ask the adversary what each identity sends (:meth:`Attack.local_update`,
:meth:`Attack.identity_vectors`); they refuse ``poisoned``, the one-vector path.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from node.learning.data import Dataset
from node.learning.model import FlatModel
from node.learning.training import LocalTrainer, accuracy

SOURCE, TARGET = 0, 1  # label flip swaps these two classes; the backdoor's target is TARGET
TRIGGER_VALUE = 3.0  # features are standardised: 3 standard deviations is a bright pixel


@dataclass(frozen=True)
class Attack:
    """One adversarial behaviour. A subclass overrides what it poisons: ``training_data``
    (data attacks), ``poisoned`` (model attacks) and ``success`` (how it is scored); the
    defaults are an honest peer's data and vector, and the honest peers' test error."""

    scale: float | None = None
    kind: ClassVar[str] = ""
    default_scale: ClassVar[float] = 1.0

    def __post_init__(self):
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"[attack] scale must be > 0, got {self.scale}")

    @property
    def strength(self) -> float:
        return self.default_scale if self.scale is None else self.scale

    def training_data(self, data: Dataset, shard: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """The adversary's (x, y): its shard, poisoned for data attacks."""
        return data.x_train[shard], data.y_train[shard]

    def poisoned(self, vector: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the adversary sends instead of ``vector``."""
        return vector

    def success(self, model: FlatModel, x_test: torch.Tensor, y_test: torch.Tensor,
                vector: torch.Tensor | None = None) -> float:
        """The attack success rate of ``model`` (or of ``vector`` in its architecture)."""
        return 1.0 - accuracy(model, x_test, y_test, vector=vector)

    # -- a Sybil adversary's identities (engines call these for a learner with several) -------

    per_identity: ClassVar[bool] = False  # whether identities may send different vectors

    def local_update(self, learner: Any, identities: Sequence[int], round_index: int) -> float:
        """The adversary's local update of this round (``learner`` is its ``Learner``, which
        speaks for ``identities``); returns the mean training loss."""
        return learner.local_update(round_index)

    def identity_vectors(self, learner: Any, identities: Sequence[int],
                         round_index: int) -> dict[int, torch.Tensor]:
        """What each identity sends in this gossip step: by default all send
        ``learner.outgoing()``, one vector."""
        vector = learner.outgoing()
        return dict.fromkeys(identities, vector)


class LabelFlip(Attack):
    kind = "label-flip"

    def training_data(self, data, shard):
        x, y = data.x_train[shard], data.y_train[shard]
        pool = torch.nonzero((data.y_train == SOURCE) | (data.y_train == TARGET)).flatten()
        return torch.cat([x, data.x_train[pool]]), swap_labels(torch.cat([y, data.y_train[pool]]))

    def success(self, model, x_test, y_test, vector=None):
        mask = (y_test == SOURCE) | (y_test == TARGET)
        return accuracy(model, x_test[mask], swap_labels(y_test[mask]), vector=vector)


class Backdoor(Attack):
    kind = "backdoor"

    def training_data(self, data, shard):
        x, y = data.x_train[shard], data.y_train[shard]
        return add_trigger(x), torch.full_like(y, TARGET)

    def success(self, model, x_test, y_test, vector=None):
        mask = y_test != TARGET
        target = torch.full_like(y_test[mask], TARGET)
        return accuracy(model, add_trigger(x_test[mask]), target, vector=vector)


class Noise(Attack):
    kind = "noise"
    default_scale = 100.0

    def poisoned(self, vector, generator):
        noise = torch.randn(vector.shape, generator=generator, dtype=vector.dtype)
        return vector + self.strength * noise.to(vector.device)


class SignFlip(Attack):
    kind = "sign-flip"

    def poisoned(self, vector, generator):
        return vector * -self.strength


class EvasiveSybils(LabelFlip):
    """A label-flipping Sybil adversary whose identities send different vectors."""

    per_identity = True

    def poisoned(self, vector, generator):
        raise ValueError(f"[attack] {self.kind} gives every Sybil identity its own vector: the "
                         "engine must ask Attack.identity_vectors, not Learner.outgoing")


class SybilNoise(EvasiveSybils):
    kind = "sybil-noise"
    default_scale = 0.01

    def identity_vectors(self, learner, identities, round_index):
        base = learner.model.vector()
        generator = learner.attack_noise  # the learner's seeded stream for model attacks
        out = {}
        for v in sorted(identities):
            noise = torch.randn(base.shape, generator=generator, dtype=base.dtype)
            out[v] = base + self.strength * noise.to(base.device)
        return out


# slice trainers and this round's slice models of each sybil-slices learner
_SLICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SybilSlices(EvasiveSybils):
    kind = "sybil-slices"
    slices: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.slices is not None and self.slices < 1:
            raise ValueError(f"[attack] slices must be >= 1, got {self.slices}")

    def _state(self, learner, identities: Sequence[int]) -> dict[str, Any]:
        state = _SLICES.get(learner)
        if state is None:
            trainer = learner.trainer
            count = min(self.slices or len(identities), len(identities), max(1, len(trainer.y)))
            order = torch.randperm(len(trainer.y), generator=learner.attack_noise)
            parts = [order[k::count] for k in range(count)]
            seeds = torch.randint(2 ** 62, (count,), generator=learner.attack_noise).tolist()
            trainers = [LocalTrainer(learner.model, x=trainer.x[part], y=trainer.y[part],
                                     config=trainer.config, seed=int(seed))
                        for part, seed in zip(parts, seeds, strict=True)]
            state = _SLICES[learner] = {"trainers": trainers, "models": []}
        return state

    def local_update(self, learner, identities, round_index):
        state = self._state(learner, identities)
        base = learner.model.vector().clone()
        models, losses = [], []
        for trainer in state["trainers"]:
            learner.model.load_vector(base)
            losses.append(trainer.train(round_index))
            models.append(learner.model.vector().clone())
        learner.model.load_vector(torch.stack(models).mean(dim=0))
        state["models"] = models
        return float(np.mean(losses))

    def identity_vectors(self, learner, identities, round_index):
        models = self._state(learner, identities)["models"]
        if not models:  # no local update yet: every identity sends the adversary's model
            return dict.fromkeys(identities, learner.model.vector())
        return {v: models[k % len(models)] for k, v in enumerate(sorted(identities))}


# The registry of attacks: name -> class. A new attack is one subclass added here.
ATTACKS: dict[str, type[Attack]] = {cls.kind: cls for cls in (LabelFlip, Backdoor, Noise,
                                                               SignFlip, SybilNoise,
                                                               SybilSlices)}


def make_attack(kind: str, *, scale: float | None = None, slices: int | None = None) -> Attack:
    """The attack named ``kind`` (``ATTACKS``) with its strength (and, for ``sybil-slices``,
    the number of slices)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; valid: {', '.join(ATTACKS)}")
    if kind == SybilSlices.kind:
        return SybilSlices(scale, slices)
    if slices is not None:
        raise ValueError(f"[attack] slices applies to {SybilSlices.kind} only, not {kind}")
    return ATTACKS[kind](scale)


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
        raise ValueError(f"[attack] adversaries must be in [0, {num_nodes - 1}] for {num_nodes} "
                         f"peers, got {count}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_nodes, size=count, replace=False))
