"""One peer's learning state and its two moves: a local update and a gossip step.

The simulator and the real peer drive the same ``Learner``; they differ only in how the received
vectors arrive (an in-memory exchange or HTTP) and in the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch

from mixing import Average, HistoryRecord, MixingRule, make_rule, neighbour_weights
from node.learning.algorithms import Algorithm
from node.learning.attacks import Attack
from node.learning.data import Dataset
from node.learning.model import FlatModel, build_model
from node.learning.seeding import derive_seed
from node.learning.training import LocalTrainer, TrainConfig, accuracy

INITS = ("shared", "independent")


class Learner:
    """Model, local optimizer state, minibatch stream and mixing rule of peer ``node_id``;
    ``attack`` makes it an adversary (see ``node.learning.attacks``)."""

    def __init__(self, node_id: int, *, model: FlatModel, x: torch.Tensor, y: torch.Tensor,
                 train: TrainConfig, algorithm: Algorithm, seed: int,
                 rule: MixingRule | None = None, attack: Attack | None = None):
        self.node_id = node_id
        self.model = model
        self.algorithm = algorithm
        self.rule = rule or Average()
        self.attack = attack
        config = replace(train, local_steps=algorithm.local_steps, rho=algorithm.rho)
        self.trainer = LocalTrainer(model, x=x, y=y, config=config,
                                    seed=derive_seed(seed, "batches", node_id))
        # the seeded stream a model attack draws from (Attack.poisoned, the evasive Sybils)
        self.attack_noise = torch.Generator().manual_seed(derive_seed(seed, "attack", node_id))

    @property
    def params(self) -> torch.Tensor:
        return self.model.params

    def vector(self) -> torch.Tensor:
        """What this peer shares: its parameters (and its buffers, when they are averaged)."""
        return self.model.vector()

    @property
    def vector_size(self) -> int:
        return self.model.vector_size

    @property
    def num_samples(self) -> int:
        return len(self.trainer.y)

    def local_update(self, round_index: int) -> float:
        """K local SGD/SAM steps; returns the mean training loss."""
        return self.trainer.train(round_index)

    def outgoing(self) -> torch.Tensor:
        """The vector this peer sends its neighbours: its parameters, or a model attack's
        poisoned version of them."""
        if self.attack is None:
            return self.model.vector()
        return self.attack.poisoned(self.model.vector(), self.attack_noise)

    def mixed(self, received: Mapping[int, torch.Tensor], own_degree: int,
              neighbour_degrees: Mapping[int, int], round_index: int = 0) -> torch.Tensor:
        """The mixing rule applied to the neighbours whose vectors arrived, with Metropolis
        weights from the degrees (a new tensor)."""
        weights = neighbour_weights(own_degree, neighbour_degrees, present=list(received))
        return self.rule.mix(self.model.vector(), received, weights, round_index)

    def history_for(self, neighbour: int) -> tuple[int, HistoryRecord] | None:
        """SybilWall's probabilistic history gossip (docs/algorithms.md §4.5): what to send
        ``neighbour``."""
        return self.rule.history_for(neighbour)

    def accept_history(self, sender: int, origin: int, round_index: int, distance: int,
                       vector: torch.Tensor) -> bool:
        return self.rule.accept_history(sender, origin, round_index, distance, vector)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(self.model, x, y)

    def state_dict(self) -> dict:
        """Everything a restarted peer needs to continue bit for bit: parameters, the local
        momentum buffer and the minibatch stream's position and RNG."""
        return {"params": self.model.params.detach().cpu().clone(),
                "buffers": self.model.buffers.detach().cpu().clone(),
                "momentum": self.trainer.momentum_buffer.detach().cpu().clone(),
                "sampler": self.trainer.sampler.state_dict() if self.trainer.sampler else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load(state["params"].to(self.model.params.device))
        if "buffers" in state and state["buffers"].numel() == self.model.buffers.numel():
            self.model.buffers.copy_(state["buffers"])
        self.trainer.momentum_buffer.copy_(state["momentum"])
        if self.trainer.sampler is not None:
            self.trainer.sampler.load_state_dict(state["sampler"])


def check_model_fits(model: FlatModel, data: Dataset) -> None:
    """Run the model on one training sample: it must accept the data's shape and output a
    score for every class the labels name. Errors say what does not fit."""
    module = model.module
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(data.x_train[:1].to(model.params.device))
    except Exception as exc:  # any failure of the user's forward on this input shape
        raise ValueError(f"[model] cannot run on the data's samples of shape "
                         f"{tuple(data.x_train.shape[1:])}: {type(exc).__name__}: "
                         f"{str(exc)[:200]}") from None
    finally:
        module.train(training)
    if not torch.is_tensor(out) or out.dim() != 2:
        raise ValueError("[model] must return one row of class scores per sample, got "
                         f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}")
    if out.shape[1] < data.num_classes:
        raise ValueError(f"[model] outputs {out.shape[1]} class scores but the labels of "
                         f"[data] go up to {data.num_classes - 1}")


def make_learner(node_id: int, *, data: Dataset, shard: torch.Tensor, model: str,
                 train: TrainConfig, algorithm: Algorithm, seed: int, hidden: int,
                 mixing: str, mixing_options: dict[str, Any], init: str,
                 attack: Attack | None = None, device: str = "cpu", buffers: str = "average",
                 factory: Callable[..., Any] | None = None,
                 model_options: dict[str, Any] | None = None) -> Learner:
    """Peer ``node_id`` of a run with seed ``seed``: its init, data shard and mixing rule.

    ``init="shared"`` gives every peer the same initial model (the usual setting);
    ``"independent"`` draws one per peer (the variance-correction setting, docs/algorithms.md §3.5).
    An
    ``attack`` poisons the peer's data or what it sends, and an adversary mixes by plain
    averaging (docs/algorithms.md §4.6). The simulator and the networked peer both build their
    learners here, which is what makes their runs comparable number for number.
    """
    if init not in INITS:
        raise ValueError(f"[mixing] init: unknown {init!r}; valid: {', '.join(INITS)}")
    init_seed = derive_seed(seed, "init") if init == "shared" else \
        derive_seed(seed, "init", node_id + 1)
    flat = build_model(model, in_features=data.in_features, num_classes=data.num_classes,
                       seed=init_seed, device=device, hidden=hidden, buffers=buffers,
                       factory=factory, options=model_options)
    check_model_fits(flat, data)
    index = torch.as_tensor(shard, dtype=torch.int64)
    if attack is None:
        x, y = data.x_train[index], data.y_train[index]
        rule = make_rule(mixing, own_id=node_id,
                         boundaries=[(s.start, s.stop) for s in flat.layout] + (
                             [(flat.size + s.start, flat.size + s.stop)
                              for s in flat.buffer_layout] if flat.mixes_buffers else []),
                         seed=derive_seed(seed, "history", node_id),
                         init=flat.vector() if init == "shared" else None,
                         **mixing_options)
    else:
        x, y = attack.training_data(data, index)
        rule = Average()
    return Learner(node_id, model=flat, x=x.to(device), y=y.to(device), train=train,
                   algorithm=algorithm, seed=seed, rule=rule, attack=attack)
