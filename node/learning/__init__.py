"""The learning kit: data, models whose parameters live in one flat tensor, local training,
the algorithms by name, attacks, and the ``Learner`` that the simulator and the real peer both
drive. It knows nothing of networks or configuration files."""

from node.learning.algorithms import ALGORITHM_NAMES, Algorithm, resolve_algorithm
from node.learning.attacks import (
    ATTACKS,
    Attack,
    SybilNoise,
    SybilSlices,
    choose_adversaries,
    make_attack,
)
from node.learning.data import (
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
from node.learning.learner import INITS, Learner, make_learner
from node.learning.model import BUFFER_MODES, MODELS, FlatModel, TensorSlice, build_model
from node.learning.seeding import derive_seed
from node.learning.training import (
    BatchSampler,
    LocalTrainer,
    TrainConfig,
    accuracy,
    sam_gradient,
    sgd_step,
)

__all__ = [
    "ALGORITHM_NAMES", "ATTACKS", "Algorithm", "Attack", "BUFFER_MODES", "BatchSampler",
    "DATASETS", "Dataset",
    "FlatModel", "INITS", "Learner", "LocalTrainer", "MODELS", "PARTITIONS", "SybilNoise",
    "SybilSlices", "TensorSlice",
    "TrainConfig", "accuracy", "build_model", "choose_adversaries", "derive_seed", "make_attack",
    "dirichlet_partition", "iid_partition", "load_dataset", "load_digits", "make_learner",
    "partition", "resolve_algorithm", "sam_gradient", "sgd_step", "shard_partition",
    "synthetic",
]
