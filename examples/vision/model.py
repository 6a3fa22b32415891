"""The model for 3x32x32 images: [model] factory = "model:build" in config.toml.

Two blocks of conv 3x3 + BatchNorm2d + ReLU + 2x2 max-pool (32x32 -> 16x16 -> 8x8), a global
average pool and a linear head: about 12k parameters at width 16. The BatchNorm layers' running
statistics are buffers; config.toml keeps them local and re-estimates them on each peer's data
after the final merge ([model] buffers = "recalibrate").
"""

from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.MaxPool2d(2))


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    return nn.Sequential(
        block(3, width),
        block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
