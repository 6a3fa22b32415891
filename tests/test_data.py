from types import SimpleNamespace

import numpy as np
import pytest
import torch

from node.config import DataSection
from node.learning import load_digits, partition, synthetic


def split(dataset, num_nodes, scheme, *, seed, alpha=0.5, classes_per_node=2):
    """``partition`` with the [data] settings given as keywords (a plain namespace, so that
    values the schema would refuse still reach the partition's own checks)."""
    settings = SimpleNamespace(partition=scheme, alpha=alpha, classes_per_node=classes_per_node)
    return partition(dataset, settings, num_nodes=num_nodes, seed=seed)


def test_digits_split_is_fixed_stratified_and_standardised(digits):
    assert digits.x_train.shape == (1347, 64) and digits.x_test.shape == (450, 64)
    assert torch.allclose(digits.x_train.mean(0), torch.zeros(64), atol=1e-5)
    train_share = torch.bincount(digits.y_train, minlength=10) / len(digits.y_train)
    test_share = torch.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    assert torch.allclose(train_share, test_share, atol=0.01)
    assert torch.equal(load_digits().x_test, digits.x_test)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_cover_the_data_and_follow_the_seed(digits, scheme):
    parts = split(digits, 16, scheme, seed=1, alpha=0.3, classes_per_node=2)
    assert len(parts) == 16 and all(len(p) >= 2 for p in parts)
    everything = np.concatenate(parts)
    assert len(everything) == len(np.unique(everything)) == len(digits.y_train)
    again = split(digits, 16, scheme, seed=1, alpha=0.3, classes_per_node=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    section = DataSection(partition=scheme, alpha=0.3, classes_per_node=2)  # the [data] table
    from_section = partition(digits, section, num_nodes=16, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, from_section))
    other = split(digits, 16, scheme, seed=2, alpha=0.3, classes_per_node=2)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def label_skew(digits, parts):
    """Mean total-variation distance between each node's label mix and the global one."""
    labels = digits.y_train.numpy()
    overall = np.bincount(labels, minlength=10) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum()
                    for p in parts])


def test_smaller_dirichlet_alpha_gives_more_heterogeneous_nodes(digits):
    iid = label_skew(digits, split(digits, 16, "iid", seed=0))
    mild = label_skew(digits, split(digits, 16, "dirichlet", seed=0, alpha=10.0))
    harsh = label_skew(digits, split(digits, 16, "dirichlet", seed=0, alpha=0.1))
    assert iid < mild < harsh
    assert harsh > 0.5


def test_shards_give_each_node_exactly_k_classes(digits):
    labels = digits.y_train.numpy()
    for k in (1, 2, 3):
        parts = split(digits, 10, "shards", seed=0, classes_per_node=k)
        assert all(len(np.unique(labels[p])) == k for p in parts)


def test_partition_errors_name_the_problem(digits):
    with pytest.raises(ValueError, match="unknown partition 'zipf'; valid: iid"):
        split(digits, 4, "zipf", seed=0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        split(digits, 4, "dirichlet", seed=0, alpha=0.0)
    with pytest.raises(ValueError, match="natural"):
        split(digits, 4, "natural", seed=0)
    with pytest.raises(ValueError, match="classes per node must be in 1..10"):
        split(digits, 4, "shards", seed=0, classes_per_node=11)


def test_synthetic_is_seeded_per_node_and_heterogeneity_grows_with_alpha_beta():
    a = synthetic(1.0, 1.0, num_nodes=10, seed=0)
    b = synthetic(1.0, 1.0, num_nodes=10, seed=0)
    assert torch.equal(a.x_train, b.x_train) and a.in_features == 60
    assert not torch.equal(a.x_train, synthetic(1.0, 1.0, num_nodes=10, seed=1).x_train)
    parts = split(a, 10, "natural", seed=0)
    assert sum(len(p) for p in parts) == len(a.y_train)
    assert all(50 * 0.8 - 1 <= len(p) <= 1000 for p in parts)

    def spread(ds):  # how far the nodes' mean inputs are from each other
        means = torch.stack([ds.x_train[torch.as_tensor(p)].mean(0)
                             for p in split(ds, 10, "natural", seed=0)])
        return float(means.std(0).mean())

    assert spread(synthetic(0.0, 0.0, num_nodes=10, seed=0)) < \
        spread(synthetic(1.0, 1.0, num_nodes=10, seed=0))
    pooled = split(a, 5, "iid", seed=0)
    assert sum(len(p) for p in pooled) == len(a.y_train)
