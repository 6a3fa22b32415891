"""One peer's learning state and its two moves: a local update and a gossip step.

The simulator and the real peer drive the same ``Learner``; they differ only in how the received
vectors arrive (an in-memory exchange or HTTP) and in the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from mixing import neighbour_weights, weighted_average
from node.algorithms import Algorithm
from node.data import Dataset
from node.model import FlatModel, build_model
from node.seeding import derive_seed
from node.training import LocalTrainer, TrainConfig, accuracy


class Learner:
    """Model, local optimizer state and minibatch stream of peer ``node_id``."""

    def __init__(self, node_id: int, model: FlatModel, x: torch.Tensor, y: torch.Tensor,
                 train: TrainConfig, algorithm: Algorithm, seed: int):
        self.node_id = node_id
        self.model = model
        self.algorithm = algorithm
        config = replace(train, local_steps=algorithm.local_steps, rho=algorithm.rho)
        self.trainer = LocalTrainer(model, x, y, config, derive_seed(seed, "batches", node_id))

    @property
    def params(self) -> torch.Tensor:
        return self.model.params

    @property
    def num_samples(self) -> int:
        return len(self.trainer.y)

    def local_update(self, round_index: int) -> float:
        """K local SGD/SAM steps; returns the mean training loss."""
        return self.trainer.train(round_index)

    def mixed(self, received: Mapping[int, torch.Tensor], own_degree: int,
              neighbour_degrees: Mapping[int, int]) -> torch.Tensor:
        """w_ii x_i + sum_j w_ij x_j over the neighbours whose vectors arrived (a new tensor)."""
        weights = neighbour_weights(own_degree, neighbour_degrees, present=list(received))
        return weighted_average(self.model.params, received, weights)

    def gossip_step(self, received: Mapping[int, torch.Tensor], own_degree: int,
                    neighbour_degrees: Mapping[int, int]) -> None:
        """One gossip step: replace the model by :meth:`mixed`."""
        self.model.load(self.mixed(received, own_degree, neighbour_degrees))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(self.model, x, y)

    def state_dict(self) -> dict:
        """Everything a restarted peer needs to continue bit for bit: parameters, the local
        momentum buffer and the minibatch stream's position and RNG."""
        return {"params": self.model.params.detach().cpu().clone(),
                "momentum": self.trainer.momentum_buffer.detach().cpu().clone(),
                "sampler": self.trainer.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load(state["params"].to(self.model.params.device))
        self.trainer.momentum_buffer.copy_(state["momentum"])
        self.trainer.sampler.load_state_dict(state["sampler"])


def make_learner(node_id: int, data: Dataset, shard: torch.Tensor, model: str, train: TrainConfig,
                 algorithm: Algorithm, seed: int, device: str = "cpu", hidden: int = 64
                 ) -> Learner:
    """Peer ``node_id`` of a run with seed ``seed``: the shared init and its own data shard.

    The simulator and the networked peer both build their learners here, which is what makes
    their runs comparable number for number.
    """
    flat = build_model(model, data.in_features, data.num_classes, derive_seed(seed, "init"),
                       device, hidden)
    index = torch.as_tensor(shard, dtype=torch.int64)
    return Learner(node_id, flat, data.x_train[index].to(device), data.y_train[index].to(device),
                   train, algorithm, seed)
