"""Models whose learnable parameters live in one contiguous flat tensor.

``FlatModel`` allocates one vector for the parameters and one for their gradients and makes every
``nn.Parameter`` (and its ``.grad``) a view into them. Mixing, codecs, SAM's global gradient norm
and similarity scores then work on one vector with no copies, and autograd accumulates straight
into the flat gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


BUFFER_MODES = ("average", "local", "recalibrate")


class FlatModel:
    """An ``nn.Module`` whose parameters are views into ``self.params`` (and grads into
    ``self.grad``). Its floating-point buffers (BatchNorm running statistics) are views into a
    second flat vector, ``self.buffers``, which the optimizer never touches; ``buffer_mode``
    says what gossip does with them (docs/algorithms.md §0.2): ``average`` mixes them with the
    parameters, ``local`` keeps each peer's own, ``recalibrate`` keeps them local and
    re-estimates them on local data after the final merge. Integer buffers (BatchNorm's batch
    counter) stay in the module as they are."""

    def __init__(self, module: nn.Module, buffer_mode: str = "average"):
        if buffer_mode not in BUFFER_MODES:
            raise ValueError(f"[model] buffers: unknown {buffer_mode!r}; valid: "
                             f"{', '.join(BUFFER_MODES)}")
        bad = [name for name, p in module.named_parameters() if not p.is_floating_point()]
        if bad:
            raise ValueError(f"model parameter {bad[0]} is not floating-point: every parameter "
                             "must be, to live in the flat vector")
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
        self.buffer_mode = buffer_mode
        floats = [(name, b) for name, b in module.named_buffers() if b.is_floating_point()]
        self.buffers = torch.empty(sum(b.numel() for _, b in floats), dtype=dtype, device=device)
        offset, buffer_layout = 0, []
        for name, b in floats:
            n = b.numel()
            self.buffers[offset:offset + n].copy_(b.detach().reshape(-1))
            b.data = self.buffers[offset:offset + n].view_as(b)
            buffer_layout.append(TensorSlice(name, offset, tuple(b.shape)))
            offset += n
        self.buffer_layout: tuple[TensorSlice, ...] = tuple(buffer_layout)

    @property
    def size(self) -> int:
        return self.params.numel()

    @property
    def mixes_buffers(self) -> bool:
        """Whether the buffers travel and mix with the parameters."""
        return self.buffer_mode == "average" and self.buffers.numel() > 0

    @property
    def vector_size(self) -> int:
        """Length of what a peer sends and mixes: the parameters, plus the buffers when they
        are averaged."""
        return self.size + (self.buffers.numel() if self.mixes_buffers else 0)

    def vector(self) -> torch.Tensor:
        """What a peer sends and mixes: the parameters (a view, no copy), or parameters and
        buffers in one new vector when buffers are averaged."""
        if not self.mixes_buffers:
            return self.params
        return torch.cat([self.params.detach(), self.buffers])

    def load_vector(self, vector: torch.Tensor) -> None:
        """The inverse of :meth:`vector`: copy into the parameters (and averaged buffers)."""
        self.params.copy_(vector[:self.size])
        if self.mixes_buffers:
            self.buffers.copy_(vector[self.size:])

    @torch.no_grad()
    def recalibrate(self, x: torch.Tensor, batch_size: int = 256) -> None:
        """Re-estimate the normalisation statistics on ``x`` with the current weights (after
        the final merge, as the single-merging paper does): running statistics are reset and
        accumulated as a plain average over the batches; parameters are untouched."""
        # torch's norm layers with running statistics (its _NormBase), found by that interface
        norms: list[Any] = [m for m in self.module.modules() if hasattr(m, "reset_running_stats")
                            and getattr(m, "track_running_stats", False)]
        if not norms or len(x) == 0:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        training = self.module.training
        self.module.train()
        for start in range(0, len(x), batch_size):
            self.module(x[start:start + batch_size])
        self.module.train(training)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

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
        return self.net(x.flatten(1))


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
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


# The registry of models by name: (in_features, num_classes, **options) -> nn.Module. Installed
# packages add theirs through the entry-point group "decent.models" (node.learning.plugins);
# a config can also name any function with [model] factory = "module:function".
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "logreg": _logistic,
}


def build_model(name: str, *, in_features: int, num_classes: int, seed: int,
                device: str = "cpu", hidden: int = 64, buffers: str = "average",
                factory: Callable[..., nn.Module] | None = None,
                options: dict | None = None) -> FlatModel:
    """A freshly initialised model whose init depends only on ``seed`` (global RNG untouched);
    the init is drawn on the CPU and then moved, so it is the same on every device.

    ``factory(**options)`` (a user's function) builds the module when given; otherwise the
    registry's ``name`` with ``(in_features, num_classes, **options)`` (``hidden`` is the MLP's
    width). Anything that is not an ``nn.Module`` is refused with the factory's name."""
    options = dict(options or {})
    if factory is None and name not in MODELS:
        raise ValueError(f"[model] name: unknown {name!r}; valid: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if factory is not None:
            module = factory(**options)
            label = getattr(factory, "__qualname__", repr(factory))
        elif name == "mlp":
            module = MLP(in_features, num_classes, options.pop("hidden", hidden), **options)
            label = name
        else:
            module = MODELS[name](in_features, num_classes, **options)
            label = name
    if not isinstance(module, nn.Module):
        raise ValueError(f"[model] {label} returned {type(module).__name__}, not a "
                         "torch.nn.Module")
    return FlatModel(module.to(device), buffer_mode=buffers)
