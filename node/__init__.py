"""One peer: data, model with flat parameters, local training, and the algorithms composed of them.

The real networked peer (aiohttp server and client) builds on these parts; the simulator drives the
same ``Learner`` objects in one process.
"""

from node.algorithms import ALGORITHM_NAMES, Algorithm, resolve_algorithm
from node.attacks import ATTACKS, Attack, choose_adversaries
from node.data import (
    DATASETS,
    PARTITIONS,
    Dataset,
    dirichlet_partition,
    iid_partition,
    load_dataset,
    load_digits,
    partition,
    shard_partition,
    synthetic,
)
from node.learner import INITS, Learner, make_learner
from node.model import MODELS, FlatModel, TensorSlice, build_model
from node.seeding import derive_seed
from node.training import (
    BatchSampler,
    LocalTrainer,
    TrainConfig,
    accuracy,
    sam_gradient,
    sgd_step,
)

__all__ = [
    "ALGORITHM_NAMES", "ATTACKS", "Algorithm", "Attack", "BatchSampler", "DATASETS", "Dataset",
    "FlatModel", "INITS", "Learner", "LocalTrainer", "MODELS", "PARTITIONS", "TensorSlice",
    "TrainConfig", "accuracy", "build_model", "choose_adversaries", "derive_seed",
    "dirichlet_partition", "iid_partition", "load_dataset", "load_digits", "make_learner",
    "partition", "resolve_algorithm", "sam_gradient", "sgd_step", "shard_partition",
    "synthetic",
]
