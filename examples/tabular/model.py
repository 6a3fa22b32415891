"""The model for the sensor readings: [model] factory = "model:build" in config.toml.

The readings come in their own units (volts near 230, rpm near 1500, bar near 5), so the first
layer is a BatchNorm1d without learnable scale that standardizes each column with running
statistics; those statistics are buffers, which the peers average along with the weights
([model] buffers = "average"). Then a two-layer MLP.
"""

from torch import nn


def build(in_features: int = 8, hidden: int = 64, num_classes: int = 2) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm1d(in_features, affine=False),  # per-column standardization
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
