"""The batched engine: every peer's parameters are one row of an (n, D) matrix.

``BatchedSimulation`` is a ``Simulation`` whose learners' flat parameters, gradients and momentum
buffers are bound to rows of three (n, D) matrices (``FlatModel.bind``). Events, roles, metrics,
the final merge and the reports are the reference engine's, unchanged; only the two hot loops
are replaced:

* local steps for all training peers at once: each peer's own ``BatchSampler`` draws its
  minibatch (the same random streams as the reference engine), the minibatches are padded into
  one (n, B, features) tensor, ``torch.func.functional_call`` under ``torch.func.vmap`` runs every
  peer's model on its own minibatch, one backward pass fills every peer's gradient row, and
  ``node.learning.training.sgd_step`` (the reference's optimizer, elementwise) updates all rows;
* gossip as one sparse matrix product ``X <- W X`` per gossip step, where W holds the Metropolis
  weights of the round's graph restricted to the alive peers (rows sum to 1; a down peer's row is
  the identity), Q times per round.

It refuses what needs per-peer code paths (mixing rules other than ``average``, attacks, Sybils)
instead of silently running something else. Summation orders differ from the reference engine,
so the two agree to float rounding, not bit for bit (tests/test_batched.py states the tolerance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
import torch
import torch.nn.functional as F

from gossip import encoded_size
from node.config import SimConfig
from node.learning.training import sgd_step
from sim.engine import Observer, Simulation
from sim.scenario import Event

EVAL_CHUNK = 256  # peers evaluated per vmapped forward pass (bounds the activation memory)


def batched_refusal(config: SimConfig) -> str | None:
    """Why the batched engine cannot run ``config``, or None when it can."""
    if config.mixing.name != "average":
        return (f"[mixing] name = {config.mixing.name} keeps per-peer state or per-peer control "
                "flow; the batched engine mixes by a sparse matrix product (average only)")
    if config.attack.kind is not None:
        return "[attack] kind needs per-peer behaviour; use --engine reference"
    return None


class BatchedSimulation(Simulation):
    """Build with :meth:`from_config`; ``run()`` and every metric are the reference engine's."""

    engine_name = "batched"

    @classmethod
    def from_config(cls, config: SimConfig, observers: Iterable[Observer] = (),
                    events: Sequence[Event] = (), **sources) -> BatchedSimulation:
        reason = batched_refusal(config)
        if reason:
            raise ValueError(f"--engine batched: {reason}")
        sim = super().from_config(config, observers, events, **sources)
        model = sim.learners[0].model
        if model.buffers.numel() or any(True for _ in model.module.buffers()):
            raise ValueError("--engine batched: the model has buffers (BatchNorm statistics), "
                             "which its forward pass updates in place; torch.func cannot run "
                             "that for all peers at once. Use --engine reference")
        sim._bind_rows()
        return sim

    def _bind_rows(self) -> None:
        n, d = len(self.learners), self.model_size
        dtype = self.learners[0].params.dtype
        self.X = torch.empty(n, d, dtype=dtype)
        self.G = torch.zeros(n, d, dtype=dtype)
        self.M = torch.zeros(n, d, dtype=dtype)
        for i, learner in enumerate(self.learners):
            learner.model.bind(self.X[i], self.G[i])
            self.M[i].copy_(learner.trainer.momentum_buffer)
            learner.trainer.momentum_buffer = self.M[i]
        model = self.learners[0].model
        self._module = model.module
        self._layout = model.layout
        self._data = [(lr.trainer.x, lr.trainer.y) for lr in self.learners]
        offsets = [0]
        for x, _ in self._data:
            offsets.append(offsets[-1] + len(x))
        self._offsets_tensor = torch.tensor(offsets[:-1], dtype=torch.int64)
        self._x_all = torch.cat([x for x, _ in self._data])
        self._y_all = torch.cat([y for _, y in self._data])
        self._w_cache: tuple | None = None

    # -- local steps ---------------------------------------------------------------------------

    def _params_of(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {s.name: rows[:, s.start:s.stop].view(len(rows), *s.shape)
                for s in self._layout}

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, in_dims=(0, 0)
                 ) -> torch.Tensor:
        """Every peer's model on its own input (``in_dims=(0, None)``: all on the same input)."""
        def one(p, xb):
            return torch.func.functional_call(self._module, p, (xb,))

        return torch.func.vmap(one, in_dims=in_dims)(params, x)

    def _minibatches(self, peers: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each peer's next minibatch from its own sampler: (x, y, mask) of shapes (m, B, F),
        (m, B), (m, B). When shards are smaller than the batch size, batches are padded to the
        largest and ``mask`` marks the real samples; otherwise ``mask`` is None."""
        picks = [self.learners[i].trainer.sampler.next() for i in peers]
        widths = {len(p) for p in picks}
        offsets = self._offsets_tensor[peers]
        if len(widths) == 1:
            index = torch.stack(picks) + offsets[:, None]
            return self._x_all[index], self._y_all[index], None
        width = max(widths)
        index = torch.zeros(len(peers), width, dtype=torch.int64)
        mask = torch.zeros(len(peers), width)
        for k, p in enumerate(picks):
            index[k, :len(p)] = p
            mask[k, :len(p)] = 1.0
        index += offsets[:, None]
        return self._x_all[index], self._y_all[index], mask

    def _gradients(self, rows: torch.Tensor, xb, yb, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row gradient of each peer's mean minibatch loss, and the losses. Gradients are
        taken with respect to each parameter's (m, ...) view and written into one (m, D) matrix:
        asking autograd for the gradient of ``rows`` itself would zero-fill and scatter the
        whole matrix once per parameter tensor (a third of the backward time here)."""
        rows = rows.detach().requires_grad_(True)
        params = self._params_of(rows)
        logits = self._forward(params, xb)
        per_sample = F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                     reduction="none").view_as(yb)
        if mask is None:
            losses = per_sample.mean(dim=1)
        else:
            losses = (per_sample * mask).sum(dim=1) / mask.sum(dim=1)
        grads = torch.autograd.grad(losses.sum(), list(params.values()))
        grad = torch.empty_like(rows)
        for s, g in zip(self._layout, grads, strict=True):
            grad[:, s.start:s.stop] = g.reshape(len(rows), -1)
        return grad, losses.detach()

    def local_updates(self, round_index: int) -> dict[int, float]:
        """K SGD/SAM steps for every alive data holder at once (docs/algorithms.md §2.1,
        node.learning)."""
        peers = sorted(i for i in self.alive if self.learners[i].trainer.sampler is not None)
        losses = {i: float("nan") for i in self.alive if i not in peers}
        if not peers:
            return losses
        cfg = self.learners[peers[0]].trainer.config
        lr = cfg.lr_at(round_index)
        index = torch.tensor(peers)
        everyone = len(peers) == len(self.learners)
        X = self.X if everyone else self.X[index]
        M = self.M if everyone else self.M[index]
        total = torch.zeros(len(peers), dtype=torch.float64)
        for _ in range(cfg.local_steps):
            xb, yb, mask = self._minibatches(peers)
            grad, loss = self._gradients(X, xb, yb, mask)
            if cfg.rho:
                norms = grad.norm(dim=1, keepdim=True)
                grad, _ = self._gradients(X + grad * (cfg.rho / (norms + 1e-12)), xb, yb, mask)
            total += loss.to(torch.float64)
            with torch.no_grad():
                sgd_step(X, grad, M, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         dampening=cfg.dampening)
        if not everyone:
            self.X.index_copy_(0, index, X)
            self.M.index_copy_(0, index, M)
        mean = (total / cfg.local_steps).tolist()
        losses.update(zip(peers, mean, strict=True))
        return losses

    # -- gossip --------------------------------------------------------------------------------

    def mixing_matrix(self, graph: nx.Graph) -> torch.Tensor:
        """Sparse W over all n rows: Metropolis weights 1/(1+max(d_i, d_j)) (degrees of this
        round's graph, as the peers know them) on edges between alive peers, the rest of each
        row on its diagonal; rows of down peers are the identity."""
        # the cache holds the graph itself (an id() alone could be reused by a later graph)
        if self._w_cache is not None and self._w_cache[0] is graph and \
                self._w_cache[1] == self.alive:
            return self._w_cache[2]
        n = len(self.learners)
        rows, cols, vals = [], [], []
        self_weight = [1.0] * n
        for a, b in graph.edges:
            if a in self.alive and b in self.alive:
                w = 1.0 / (1.0 + max(graph.degree[a], graph.degree[b]))
                rows += [a, b]
                cols += [b, a]
                vals += [w, w]
                self_weight[a] -= w
                self_weight[b] -= w
        rows += list(range(n))
        cols += list(range(n))
        vals += self_weight
        W = torch.sparse_coo_tensor([rows, cols], vals, (n, n), dtype=self.X.dtype,
                                    check_invariants=True).coalesce()
        self._w_cache = (graph, frozenset(self.alive), W)
        return W

    def gossip_step(self, graph: nx.Graph, round_index: int = 0) -> None:
        W = self.mixing_matrix(graph)
        links = sum(1 for a, b in graph.edges if a in self.alive and b in self.alive)
        self.traffic.messages += 2 * links
        self.traffic.bytes_sent += 2 * links * encoded_size(self.model_size)
        self.X.copy_(torch.sparse.mm(W, self.X))

    def share_histories(self, graph: nx.Graph) -> None:
        """No rule in the batched engine keeps histories."""

    # -- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def peer_accuracies(self, peers: Sequence[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for start in range(0, len(peers), EVAL_CHUNK):
            chunk = list(peers[start:start + EVAL_CHUNK])
            logits = self._forward(self._params_of(self.X[torch.tensor(chunk)]), self.x_test,
                                   in_dims=(0, None))
            correct = (logits.argmax(dim=2) == self.y_test).float().mean(dim=1)
            out.update(zip(chunk, correct.tolist(), strict=True))
        return out


def build_simulation(config: SimConfig, observers: Iterable[Observer] = (),
                     events: Sequence[Event] = (), **sources) -> Simulation:
    """The engine ``config.engine`` names, built from ``config`` (``sources``: the Python
    API's data and model_factory, see Simulation.from_config)."""
    from sim.peers import PeerSimulation

    engines = {"reference": Simulation, "batched": BatchedSimulation, "peers": PeerSimulation}
    return engines[config.sim.engine].from_config(config, observers, events, **sources)
