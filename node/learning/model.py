"""Models whose learnable parameters live in one contiguous flat tensor.

``FlatModel`` allocates one vector for the parameters and one for their gradients and makes every
``nn.Parameter`` (and its ``.grad``) a view into them. Mixing, codecs, SAM's global gradient norm
and similarity scores then work on one vector with no copies, and autograd accumulates straight
into the flat gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TensorSlice:
    """Where one parameter tensor lives in the flat vector (later rules work per tensor)."""

    name: str
    start: int
    shape: tuple[int, ...]

    @property
    def stop(self) -> int:
        return self.start + int(torch.Size(self.shape).numel())


class FlatModel:
    """An ``nn.Module`` whose parameters are views into ``self.params`` (and grads into
    ``self.grad``). Buffers (none in the bundled models) are not part of the flat vector."""

    def __init__(self, module: nn.Module):
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        total = sum(p.numel() for _, p in named)
        dtype = named[0][1].dtype if named else torch.float32
        device = named[0][1].device if named else torch.device("cpu")
        self.params = torch.empty(total, dtype=dtype, device=device)
        self.grad = torch.zeros(total, dtype=dtype, device=device)
        layout = []
        offset = 0
        for name, p in named:
            n = p.numel()
            self.params[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = self.params[offset:offset + n].view_as(p)
            p.grad = self.grad[offset:offset + n].view_as(p)
            layout.append(TensorSlice(name, offset, tuple(p.shape)))
            offset += n
        self.module = module
        self.layout: tuple[TensorSlice, ...] = tuple(layout)

    @property
    def size(self) -> int:
        return self.params.numel()

    def load(self, vector: torch.Tensor) -> None:
        """Copy ``vector`` into the parameters in place (the views stay valid)."""
        self.params.copy_(vector)

    def bind(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        """Move the parameters and gradients into caller-owned storage (rows of the batched
        engine's (n, D) matrices): the values are copied, then every ``nn.Parameter`` and its
        ``.grad`` become views of the new storage, so nothing else about the model changes."""
        params.copy_(self.params)
        grad.copy_(self.grad)
        self.params, self.grad = params, grad
        for s, p in zip(self.layout, (p for p in self.module.parameters() if p.requires_grad),
                        strict=True):
            p.data = params[s.start:s.stop].view(s.shape)
            p.grad = grad[s.start:s.stop].view(s.shape)


class MLP(nn.Module):
    """64 -> hidden -> classes with ReLU: about 4.8k parameters on digits (docs/algorithms.md
    §0.5)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear head for square single-channel images (8x8 digits)."""

    def __init__(self, in_features: int, num_classes: int, channels: int = 8):
        super().__init__()
        side = int(round(in_features ** 0.5))
        if side * side != in_features:
            raise ValueError(f"cnn: in_features={in_features} is not a square image")
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * (side // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.view(-1, 1, self.side, self.side))
        return self.head(x.flatten(1))


def _logistic(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes)


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "logreg": _logistic,
}


def build_model(name: str, *, in_features: int, num_classes: int, seed: int,
                device: str = "cpu", hidden: int = 64) -> FlatModel:
    """A freshly initialised model whose init depends only on ``seed`` (global RNG untouched);
    the init is drawn on the CPU and then moved, so it is the same on every device. ``hidden``
    is the MLP's hidden width."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            module = MLP(in_features, num_classes, hidden)
        else:
            module = MODELS[name](in_features, num_classes)
    return FlatModel(module.to(device))
