"""Data sets that need no download, and seeded partitions of them across peers (docs/algorithms.md
§0.3, 0.5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from node.learning.seeding import derive_seed

# The digits split is fixed (not tied to the run seed) so that every run of the project is scored
# on the same 450 test images.
DIGITS_SPLIT_SEED = 0


@dataclass
class Dataset:
    """Train and test tensors; ``natural_parts`` holds per-peer train indices when the data set
    comes already split by owner (LEAF synthetic)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    natural_parts: list[np.ndarray] | None = None
    x_val: torch.Tensor | None = None  # a validation set that came with the data, if any
    y_val: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        """Features per sample once flattened (the built-in models' input size)."""
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def has_test(self) -> bool:
        return len(self.y_test) > 0


def load_digits(test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits: a fixed stratified split (75/25 by default),
    standardised on the train part."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        bunch.data, bunch.target, test_size=test_fraction, stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0
    return Dataset(
        "digits",
        torch.tensor((x_tr - mean) / std, dtype=torch.float32),
        torch.tensor(y_tr, dtype=torch.int64),
        torch.tensor((x_te - mean) / std, dtype=torch.float32),
        torch.tensor(y_te, dtype=torch.int64),
        num_classes=10,
    )


def synthetic(alpha: float, beta: float, *, num_nodes: int, seed: int,
              dimension: int = 60, num_classes: int = 10, max_samples: int = 1000,
              test_fraction: float = 0.2
              ) -> Dataset:
    """LEAF / FedProx synthetic(alpha, beta) (docs/algorithms.md §0.5), one part per node.

    Follows FedProx's ``generate_synthetic``: u_k ~ N(0, alpha) is the mean of W_k and b_k,
    B_k ~ N(0, beta), v_k ~ N(B_k, 1), x ~ N(v_k, diag(j^-1.2)), y = argmax(W_k^T x + b_k), and
    lognormal(4, 2) + 50 samples per node. Departure: the sample count is capped at
    ``max_samples`` (the uncapped lognormal gives some nodes tens of thousands of samples, which
    only slows small studies down). Each node's last ``test_fraction`` goes to the shared test set.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"synthetic: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    rng = np.random.default_rng(derive_seed(seed, "synthetic"))
    counts = np.minimum(rng.lognormal(4, 2, num_nodes).astype(int) + 50, max_samples)
    mean_w = rng.normal(0, alpha, num_nodes)
    shift = rng.normal(0, beta, num_nodes)
    std_x = np.sqrt(np.arange(1, dimension + 1, dtype=float) ** -1.2)
    xs_tr, ys_tr, xs_te, ys_te, parts = [], [], [], [], []
    offset = 0
    for k in range(num_nodes):
        w = rng.normal(mean_w[k], 1, (dimension, num_classes))
        b = rng.normal(mean_w[k], 1, num_classes)
        v = rng.normal(shift[k], 1, dimension)
        x = v + rng.standard_normal((counts[k], dimension)) * std_x
        y = (x @ w + b).argmax(axis=1)  # argmax of the softmax
        n_test = max(1, int(round(test_fraction * counts[k])))
        xs_tr.append(x[n_test:])
        ys_tr.append(y[n_test:])
        xs_te.append(x[:n_test])
        ys_te.append(y[:n_test])
        parts.append(np.arange(offset, offset + counts[k] - n_test))
        offset += counts[k] - n_test
    return Dataset(
        f"synthetic({alpha},{beta})",
        torch.tensor(np.concatenate(xs_tr), dtype=torch.float32),
        torch.tensor(np.concatenate(ys_tr), dtype=torch.int64),
        torch.tensor(np.concatenate(xs_te), dtype=torch.float32),
        torch.tensor(np.concatenate(ys_te), dtype=torch.int64),
        num_classes=num_classes,
        natural_parts=parts,
    )


def iid_partition(labels: np.ndarray, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and cut into ``num_nodes`` parts of equal size (+-1)."""
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_nodes)]


def dirichlet_partition(labels: np.ndarray, num_nodes: int, *, alpha: float,
                        rng: np.random.Generator, min_size: int = 2, max_tries: int = 1000
                        ) -> list[np.ndarray]:
    """Per-class Dirichlet split (Hsu et al. 2019, docs/algorithms.md §0.3): for each class c draw
    p_c ~ Dir(alpha 1_n) and cut class c's samples in those proportions. Redrawn (from the same
    stream) until every node has at least ``min_size`` samples."""
    if alpha <= 0:
        raise ValueError(f"dirichlet: alpha must be > 0, got {alpha}")
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_nodes)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(alpha * np.ones(num_nodes)))[:-1] * len(idx))
            for node, chunk in enumerate(np.split(idx, cuts.astype(int))):
                parts[node].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"dirichlet: alpha={alpha} left a node with < {min_size} samples in {max_tries} draws; "
        f"raise alpha or use fewer nodes than {num_nodes}"
    )


def shard_partition(labels: np.ndarray, num_nodes: int, *, classes_per_node: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological-k split: each node holds exactly ``classes_per_node`` classes.

    Node i takes classes perm[(i k + j) mod C], j < k, from one random class permutation, so
    every class is held by about n k / C nodes; each class's samples are split evenly among its
    holders. With n k < C some classes are held by no one.
    """
    classes = np.unique(labels)
    if not 1 <= classes_per_node <= len(classes):
        raise ValueError(
            f"shards: classes per node must be in 1..{len(classes)}, got {classes_per_node}")
    perm = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for i in range(num_nodes):
        for j in range(classes_per_node):
            holders[int(perm[(i * classes_per_node + j) % len(classes)])].append(i)
    parts: list[list[int]] = [[] for _ in range(num_nodes)]
    for c, nodes in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        for node, chunk in zip(nodes, np.array_split(idx, max(1, len(nodes)))):
            parts[node].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def natural_partition(dataset: Dataset, num_nodes: int) -> list[np.ndarray]:
    """The per-node parts a data set came with (LEAF synthetic)."""
    if dataset.natural_parts is None or len(dataset.natural_parts) != num_nodes:
        raise ValueError(
            f"partition 'natural' needs a data set generated per node (synthetic) with "
            f"{num_nodes} parts; {dataset.name} has none")
    return dataset.natural_parts


# The registries: name -> builder. ``settings`` is the [data] section (any object with its
# attributes: alpha, classes_per_node, test_fraction, synthetic_alpha, synthetic_beta). A new
# partition or data set is one function added here.
PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": lambda data, labels, n, rng, settings: iid_partition(labels, n, rng),
    "dirichlet": lambda data, labels, n, rng, settings: dirichlet_partition(
        labels, n, alpha=settings.alpha, rng=rng),
    "shards": lambda data, labels, n, rng, settings: shard_partition(
        labels, n, classes_per_node=settings.classes_per_node, rng=rng),
    "natural": lambda data, labels, n, rng, settings: natural_partition(data, n),
}

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": lambda settings, num_nodes, seed: load_digits(settings.test_fraction),
    "synthetic": lambda settings, num_nodes, seed: synthetic(
        settings.synthetic_alpha, settings.synthetic_beta, num_nodes=num_nodes, seed=seed),
}


def partition(dataset: Dataset, settings: Any, *, num_nodes: int, seed: int
              ) -> list[np.ndarray]:
    """Per-node train indices for ``settings.partition``; the same seed always gives the same
    split."""
    labels = dataset.y_train.numpy()
    if num_nodes < 1 or num_nodes > len(labels):
        raise ValueError(f"partition: need 1 <= nodes <= {len(labels)} samples, got {num_nodes}")
    if settings.partition not in PARTITIONS:
        raise ValueError(f"unknown partition {settings.partition!r}; valid: "
                         f"{', '.join(PARTITIONS)}")
    rng = np.random.default_rng(derive_seed(seed, "partition"))
    return PARTITIONS[settings.partition](dataset, labels, num_nodes, rng, settings)


def as_tensors(data: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, y int64) from an (x, y) pair of tensors or arrays, or from a torch Dataset
    whose items are (x, y) (stacked: the data is assumed to fit in memory). Labels must be
    integers >= 0; errors name ``where``."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(
            data[0], (tuple, list)):
        x, y = torch.as_tensor(np.asarray(data[0])), torch.as_tensor(np.asarray(data[1]))
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if len(data) == 0:
            raise ValueError(f"{where}: the data set is empty")
        items = [data[i] for i in range(len(data))]
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items[:1]):
            raise ValueError(f"{where}: a Dataset's items must be (x, y) pairs")
        x = torch.stack([torch.as_tensor(np.asarray(a)) for a, _ in items])
        y = torch.as_tensor(np.asarray([int(b) for _, b in items]))
    else:
        raise ValueError(f"{where}: expected (x, y) tensors or a torch Dataset, got "
                         f"{type(data).__name__}")
    if len(x) != len(y) or y.dim() != 1:
        raise ValueError(f"{where}: x has {len(x)} rows but y has shape {tuple(y.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"{where}: x must be numeric, got {x.dtype}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"{where}: labels must be integers")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return x.to(torch.float32), y.to(torch.int64)


def hold_out(count: int, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) positions in 0..count-1: ``fraction`` of them (at least one when fraction
    > 0) drawn with ``seed``, each part sorted."""
    size = max(1, round(fraction * count)) if fraction > 0 else 0
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


def split_off(x: torch.Tensor, y: torch.Tensor, *, fraction: float, seed: int
              ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((x, y) kept, (x, y) held out) by :func:`hold_out`."""
    kept, held = hold_out(len(y), fraction=fraction, seed=seed)
    return (x[kept], y[kept]), (x[held], y[held])


def user_dataset(name: str, result: Any, where: str, *, test: Any = None) -> Dataset:
    """A Dataset from what a user's loader returned: the training set, or (train, validation)
    or (train, validation, test), or a dict with keys train/validation/test; each as (x, y) or a
    torch Dataset. ``test`` (from a file) replaces a missing test set."""
    if isinstance(result, dict):
        unknown = set(result) - {"train", "validation", "test"}
        if unknown or "train" not in result:
            raise ValueError(f"{where}: a dict needs 'train' (and optionally 'validation', "
                             f"'test'), got keys {sorted(map(str, result))[:5]}")
        parts = [result["train"], result.get("validation"), result.get("test")]
    elif isinstance(result, tuple) and len(result) == 3 and not torch.is_tensor(result[0]) \
            and not isinstance(result[0], np.ndarray):
        parts = list(result)
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], tuple):
        parts = [result[0], result[1], None]
    else:
        parts = [result, None, None]
    x, y = as_tensors(parts[0], f"{where} (training set)")
    if len(y) == 0:
        raise ValueError(f"{where}: the training set is empty")
    val = as_tensors(parts[1], f"{where} (validation set)") if parts[1] is not None else None
    tst = parts[2] if parts[2] is not None else test
    tst = as_tensors(tst, f"{where} (test set)") if tst is not None else \
        (x[:0], y[:0])
    labels = [y, tst[1]] + ([val[1]] if val else [])
    classes = int(max(int(t.max()) for t in labels if len(t))) + 1
    return Dataset(name, x, y, tst[0], tst[1], num_classes=classes,
                   x_val=val[0] if val else None, y_val=val[1] if val else None)


def load_dataset(settings: Any, *, num_nodes: int, seed: int) -> Dataset:
    """The data set named by ``settings.dataset`` (the [data] section)."""
    if settings.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {settings.dataset!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[settings.dataset](settings, num_nodes, seed)
