"""Local training on flat parameter vectors: SGD and SAM steps (docs/algorithms.md §1.2 and §2.1).

The optimizer is written directly on the flat vectors instead of ``torch.optim``: one fused update
over the whole model, a momentum buffer that is itself one vector (simple to checkpoint and never
mixed: it stays local, docs/algorithms.md §0.2), and the same code for every algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from node.learning.model import FlatModel


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local optimizer settings. ``lr_decay`` is per round: lr_t = lr * lr_decay**t
    (docs/algorithms.md §2.3). No defaults here: they are declared once, in
    ``node.config.AlgorithmSection``."""

    lr: float
    lr_decay: float
    momentum: float
    dampening: float
    weight_decay: float
    batch_size: int
    local_steps: int = 1
    rho: float = 0.0

    def lr_at(self, round_index: int) -> float:
        return self.lr * self.lr_decay ** round_index


def sgd_step(params: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, *,
             lr: float, momentum: float, weight_decay: float, dampening: float = 0.0) -> None:
    """In place: d = g + wd x; buf = m buf + (1 - dampening) d; x -= lr buf. ``grad`` is used
    as scratch space (it holds d afterwards): every caller recomputes it before the next step.

    With dampening 0 this is torch.optim.SGD (a zero buffer makes the first step identical to
    torch's lazily created one). ``dampening = momentum = beta`` is MoNNA's Polyak momentum
    m_t = beta m_{t-1} + (1 - beta) g_t from m_0 = 0 (Farhadkhani et al. 2023, docs/algorithms.md
    §7.1); torch instead starts its buffer at g_1 undamped, so the two differ on the first step
    only.
    """
    step = grad.add_(params, alpha=weight_decay) if weight_decay else grad  # grad is scratch
    if momentum:
        momentum_buffer.mul_(momentum).add_(step, alpha=1.0 - dampening)
        step = momentum_buffer
    params.add_(step, alpha=-lr)


def sam_gradient(params: torch.Tensor, grad: torch.Tensor, compute_gradient: Callable[[], float],
                 *, rho: float) -> float:
    """Leave in ``grad`` the SAM gradient at x + rho g/||g|| and return the loss at x.

    Two passes on the same minibatch (docs/algorithms.md §2.1): g = grad F(x); e = rho g / (||g||_2
    + 1e-12) with the global norm over all parameters; g~ = grad F(x + e); then x is restored
    exactly from a saved copy. With rho = 0 this is one plain gradient evaluation, so DFedSAM with
    rho = 0 is DFedAvg operation for operation.
    """
    loss = compute_gradient()
    if rho == 0.0:
        return loss
    scale = rho / (float(grad.norm()) + 1e-12)
    saved = params.clone()
    params.add_(grad, alpha=scale)
    compute_gradient()
    params.copy_(saved)
    return loss


class BatchSampler:
    """Epoch-wise shuffled minibatches from one peer's shard, driven by its own generator.

    A new permutation starts whenever fewer than ``batch_size`` unseen samples remain; a shard
    smaller than one batch yields the whole shard each step.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < 1:
            raise ValueError("a peer needs at least one training sample")
        self.size, self.batch_size = size, min(batch_size, size)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._position = 0

    def next(self) -> torch.Tensor:
        if self._position + self.batch_size > len(self._order):
            self._order = torch.randperm(self.size, generator=self.generator)
            self._position = 0
        batch = self._order[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    @property
    def order(self) -> torch.Tensor:
        """This epoch's permutation of the shard (empty before the first batch)."""
        return self._order

    @property
    def position(self) -> int:
        """How many indices of ``order`` were drawn."""
        return self._position

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order.clone(),
                "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order, self._position = state["order"].clone(), int(state["position"])


class LocalTrainer:
    """K local steps of SGD or SAM on one peer's shard, with its local momentum buffer."""

    def __init__(self, model: FlatModel, *, x: torch.Tensor, y: torch.Tensor,
                 config: TrainConfig, seed: int):
        self.model, self.x, self.y, self.config = model, x, y, config
        # a relay (no data) only mixes: it has no minibatches and its local update is a no-op
        self.sampler = BatchSampler(len(y), config.batch_size, seed) if len(y) else None
        self.momentum_buffer = torch.zeros_like(model.params)

    def _gradient_on(self, batch: torch.Tensor) -> Callable[[], float]:
        xb, yb = self.x[batch], self.y[batch]

        def compute() -> float:
            self.model.grad.zero_()
            loss = F.cross_entropy(self.model.module(xb), yb)
            loss.backward()
            return float(loss.detach())

        return compute

    def train(self, round_index: int, steps: int | None = None) -> float:
        """Run ``steps`` (default: config.local_steps) steps; return the mean minibatch loss."""
        cfg, model = self.config, self.model
        if self.sampler is None:
            return float("nan")
        steps = cfg.local_steps if steps is None else steps
        lr = cfg.lr_at(round_index)
        total = 0.0
        for _ in range(steps):
            compute = self._gradient_on(self.sampler.next())
            total += sam_gradient(model.params, model.grad, compute, rho=cfg.rho)
            with torch.no_grad():
                sgd_step(model.params, model.grad, self.momentum_buffer, lr=lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         dampening=cfg.dampening)
        return total / max(steps, 1)


@torch.no_grad()
def accuracy(model: FlatModel, x: torch.Tensor, y: torch.Tensor, *,
             vector: torch.Tensor | None = None) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``, in evaluation mode (BatchNorm uses
    its running statistics); with ``vector`` (what :meth:`FlatModel.vector` returns), the
    model's architecture evaluated at those parameters (and averaged buffers) instead of its
    own: its state is left alone."""
    module = model.module
    training = module.training
    module.eval()
    try:
        if vector is None:
            logits = module(x)
        else:
            params = {s.name: vector[s.start:s.stop].view(s.shape) for s in model.layout}
            if vector.numel() > model.size:
                rest = vector[model.size:]
                params.update({s.name: rest[s.start:s.stop].view(s.shape)
                               for s in model.buffer_layout})
            logits = torch.func.functional_call(module, params, (x,))
    finally:
        module.train(training)
    return float((logits.argmax(dim=1) == y).float().mean())
