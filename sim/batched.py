"""The batched engine: every peer's parameters are one row of an (n, D) matrix.

``BatchedSimulation`` is a ``Simulation`` whose learners' flat parameters and momentum buffers
are bound to rows of (n, D) matrices (``FlatModel.bind``). Events, roles, the metrics' definitions
and the reports are the reference engine's; the hot loops and the reductions over peers are
replaced by matrix code (docs/algorithms.md §10):

* local steps for all training peers at once: ``RowSampler`` draws every peer's minibatch from
  that peer's own generator (the same random streams as the reference engine's ``BatchSampler``,
  without a Python call per peer and step), ``torch.func.functional_call`` under
  ``torch.func.vmap`` runs every peer's model on its own minibatch, one backward pass gives every
  peer's gradient, and ``node.learning.training.sgd_step`` (the reference's optimizer,
  elementwise) updates each parameter tensor's (n, ...) view of the rows in place;
* gossip as one sparse (CSR) matrix product ``X <- W X`` per gossip step, where W holds the
  Metropolis weights of the round's graph restricted to the alive peers (rows sum to 1; a down
  peer's row is the identity), Q times per round;
* accuracies, the consensus distance and the component merge as reductions over rows.

The engine owns the rows ``lo:hi`` of the n peers through a ``Rows`` object: in one process all
of them (``Rows``: its collectives are the identity); under torchrun a contiguous block per rank
(``sim.distributed.DistRows``: the same code, with the gossip's halo rows and the metrics' sums
exchanged over torch.distributed). ``[run] device = "cuda"`` keeps data, rows, W and the minibatch
indices on the GPU; host syncs happen once per round (the losses) and per evaluation.

``sim.engines.build_simulation`` refuses what needs per-peer code paths (mixing rules other than
``average``, attacks, Sybils) instead of silently running something else. Summation orders
differ from the reference engine, so the two agree to float rounding, not bit for bit
(tests/test_batched.py states the tolerance).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

from gossip import encoded_size
from node.config import SimConfig
from node.learning.training import BatchSampler, sgd_step
from sim.engine import Observer, Simulation
from sim.scenario import Event
from topology import alive_components

EVAL_CHUNK = 256  # peers evaluated per vmapped forward pass (bounds the activation memory)
REDUCE_CHUNK = 4096  # rows per float64 reduction (bounds the float64 copy of the rows)


def row_sgd_step(params: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, *,
                 lr: float, momentum: float, weight_decay: float, dampening: float) -> None:
    """``node.learning.training.sgd_step`` with the gradient read once: autograd returns each
    batched weight gradient transposed with respect to the rows (the last two dimensions
    swapped), and every pass that mixes the two layouts costs several contiguous passes. With
    momentum, buf = m buf + (1 - dampening) g + (1 - dampening) wd x is summed in that order
    (the reference adds wd x to g first), which changes results by float rounding only."""
    if not momentum:
        sgd_step(params, grad, momentum_buffer, lr=lr, momentum=momentum,
                 weight_decay=weight_decay, dampening=dampening)
        return
    if dampening:
        momentum_buffer.mul_(momentum).add_(grad, alpha=1.0 - dampening)
    else:  # one pass: buf = g + m buf
        torch.add(grad, momentum_buffer, alpha=momentum, out=momentum_buffer)
    if weight_decay:
        momentum_buffer.add_(params, alpha=weight_decay * (1.0 - dampening))
    params.add_(momentum_buffer, alpha=-lr)


@dataclass
class Rows:
    """The rows ``lo:hi`` of ``n`` that this process owns, and the collectives over the processes
    that own the others. In one process it owns every row and the collectives are the identity;
    ``sim.distributed.DistRows`` is the torch.distributed version."""

    n: int
    lo: int = 0
    hi: int = -1

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = self.n

    def owner_bounds(self) -> list[tuple[int, int]]:
        """Every rank's (lo, hi), by rank."""
        return [(self.lo, self.hi)]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the processes (in place where distributed)."""
        return tensor

    def exchange(self, sends: dict[int, torch.Tensor], receives: dict[int, torch.Tensor]
                 ) -> Callable[[], None] | None:
        """Start sending ``sends[rank]`` to each rank and filling ``receives[rank]`` from it;
        returns what waits for both to finish (None in one process: no other rank)."""
        assert not sends and not receives
        return None


class RowSampler:
    """Every owned data holder's ``BatchSampler`` stream, drawn for all of them at once.

    It takes over the samplers' generators (and any order already drawn) and reproduces
    ``BatchSampler.next`` exactly: a peer draws a new ``randperm`` of its shard with its own
    generator whenever fewer than a batch of unseen samples remain. Orders live in one padded
    (m, max shard) matrix, so a step is one gather plus a ``randperm`` for the peers that start
    a new epoch, instead of m Python calls (docs/algorithms.md §10). Bookkeeping stays on the
    CPU (the generators are CPU generators); only the index matrix goes to the device.
    """

    def __init__(self, samplers: Sequence[BatchSampler], offsets: Sequence[int] | np.ndarray,
                 device: str | torch.device):
        self.generators = [s.generator for s in samplers]
        self.sizes = np.array([s.size for s in samplers], dtype=np.int64)
        self.widths = np.array([s.batch_size for s in samplers], dtype=np.int64)
        self.orders = torch.zeros(len(samplers), int(self.sizes.max()), dtype=torch.int64)
        self.lengths = np.zeros(len(samplers), dtype=np.int64)
        self.positions = np.zeros(len(samplers), dtype=np.int64)
        for k, s in enumerate(samplers):
            self.orders[k, :len(s.order)] = s.order
            self.lengths[k], self.positions[k] = len(s.order), s.position
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.device = device

    def next(self, members: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(index into the concatenated shards, mask) for sampler rows ``members``: shapes
        (m, B) and (m, B), or mask None when every batch has the same width."""
        pos, width = self.positions[members], self.widths[members]
        for k in members[pos + width > self.lengths[members]]:
            size = int(self.sizes[k])
            self.orders[k, :size] = torch.randperm(size, generator=self.generators[k])
            self.lengths[k], self.positions[k] = size, 0
        pos = self.positions[members]
        most = int(width.max())
        cols = np.minimum(pos[:, None] + np.arange(most), self.orders.shape[1] - 1)
        flat = members[:, None] * self.orders.shape[1] + cols
        picks = self.orders.view(-1).index_select(0, torch.from_numpy(flat.ravel())).view(
            flat.shape)
        self.positions[members] = pos + width
        index = (picks + torch.from_numpy(self.offsets[members])[:, None]).to(
            self.device, non_blocking=True)
        if (width == most).all():
            return index, None
        mask = torch.from_numpy((np.arange(most) < width[:, None]).astype(np.float32))
        return index, mask.to(self.device, non_blocking=True)


@dataclass
class GossipPlan:
    """This round's W restricted to the owned rows (docs/algorithms.md §10): ``own`` (m, m) over
    the owned columns and ``halo`` (m, h) over the h remote rows that owned rows' neighbours hold;
    ``send[r]`` / ``recv[r]``: owned row indices rank r needs, and how many rows it sends."""

    own: torch.Tensor
    halo: torch.Tensor | None
    send: dict[int, torch.Tensor]
    recv: dict[int, int]
    links: int


class BatchedSimulation(Simulation):
    """Build with :meth:`from_config`; ``run()`` and every metric are the reference engine's."""

    engine_name = "batched"
    rows: Rows

    @classmethod
    def from_config(cls, config: SimConfig, observers: Iterable[Observer] = (),
                    events: Sequence[Event] = (), **sources) -> BatchedSimulation:
        sim = super().from_config(config, observers, events, **sources)
        sim.rows = cls._rows_for(len(sim.learners))
        model = sim.template.model
        if model.buffers.numel() or any(True for _ in model.module.buffers()):
            raise ValueError("--engine batched: the model has buffers (BatchNorm statistics), "
                             "which its forward pass updates in place; torch.func cannot run "
                             "that for all peers at once. Use --engine reference")
        sim._bind_rows()
        return sim

    @classmethod
    def _rows_for(cls, n: int) -> Rows:
        """Which rows this process owns (all of them; sim.distributed overrides)."""
        return Rows(n)

    @property
    def template(self):
        """An owned learner: the model architecture and the algorithm every peer shares."""
        return self.learners[self.rows.lo]

    @property
    def algorithm(self):
        return self.template.algorithm

    @property
    def model_size(self) -> int:
        return self.template.vector_size

    def _bind_rows(self) -> None:
        lo, hi = self.rows.lo, self.rows.hi
        own = self.learners[lo:hi]
        template = own[0]
        d, dtype = self.model_size, template.params.dtype
        self.device = template.params.device
        self.X = torch.empty(hi - lo, d, dtype=dtype, device=self.device)
        self.M = torch.zeros(hi - lo, d, dtype=dtype, device=self.device)
        unused = torch.zeros(d, dtype=dtype, device=self.device)
        for k, learner in enumerate(own):
            # gradients go straight into the update, so the learners share one unused gradient
            # vector instead of an (n, D) matrix (6.7 GB at 65,536 peers of a 26k-parameter CNN)
            learner.model.bind(self.X[k], unused)
            self.M[k].copy_(learner.trainer.momentum_buffer)
            learner.trainer.momentum_buffer = self.M[k]
        self._module = template.model.module
        self._layout = template.model.layout
        holders = [k for k, lr in enumerate(own) if lr.trainer.sampler is not None]
        self._holder_slot = dict.fromkeys(range(lo, hi), -1)
        self._holder_slot.update({lo + k: slot for slot, k in enumerate(holders)})
        shards = [own[k].trainer for k in holders]
        offsets = np.cumsum([0] + [len(t.y) for t in shards])[:-1]
        samplers = [t.sampler for t in shards if t.sampler is not None]  # all of them
        self._sampler = RowSampler(samplers, offsets, self.device) if holders else None
        self._x_all = torch.cat([t.x for t in shards]) if shards else template.trainer.x[:0]
        self._y_all = torch.cat([t.y for t in shards]) if shards else template.trainer.y[:0]
        for t, start in zip(shards, offsets.tolist(), strict=True):  # views: the data once
            t.x, t.y = self._x_all[start:start + len(t.y)], self._y_all[start:start + len(t.y)]
        self._plan_cache: tuple | None = None
        self._next = torch.empty_like(self.X)

    def _local(self, peers: Iterable[int]) -> list[int]:
        """The owned ones among ``peers`` (graph node ids), sorted."""
        lo, hi = self.rows.lo, self.rows.hi
        return sorted(i for i in peers if lo <= i < hi)

    def _index(self, peers: Sequence[int]) -> torch.Tensor:
        """Row indices of owned ``peers`` in X, on the device."""
        # built on the host and copied without waiting for the device's queue
        return torch.tensor(peers, dtype=torch.int64).to(self.device, non_blocking=True) - \
            self.rows.lo

    # -- local steps ---------------------------------------------------------------------------

    def _views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter tensor's (m, ...) view of ``rows``."""
        return [rows[:, s.start:s.stop].view(len(rows), *s.shape) for s in self._layout]

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, in_dims=(0, 0)
                 ) -> torch.Tensor:
        """Every peer's model on its own input (``in_dims=(0, None)``: all on the same input)."""
        def one(p, xb):
            return torch.func.functional_call(self._module, p, (xb,))

        return torch.func.vmap(one, in_dims=in_dims)(params, x)

    def _gradients(self, tensors: Sequence[torch.Tensor], xb, yb, mask
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-peer gradient of each peer's mean minibatch loss with respect to each parameter
        tensor (m, ...) in ``tensors``, and the losses. The gradients stay per tensor: the update
        is elementwise, so it runs on each tensor's view of the rows, and no (m, D) gradient
        matrix is assembled (that copy was a third of the step at n = 4096, docs/results.md)."""
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        params = {s.name: p for s, p in zip(self._layout, leaves, strict=True)}
        logits = self._forward(params, xb)
        per_sample = F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                     reduction="none").view_as(yb)
        if mask is None:
            losses = per_sample.mean(dim=1)
        else:
            losses = (per_sample * mask).sum(dim=1) / mask.sum(dim=1)
        grads = torch.autograd.grad(losses.sum(), leaves)
        return list(grads), losses.detach()

    def _sam_point(self, views: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                   rho: float) -> list[torch.Tensor]:
        """x + rho g / (||g|| + 1e-12) per peer, the norm over all its parameters (§2.1)."""
        squares = cast(torch.Tensor, sum(g.flatten(1).pow(2).sum(dim=1) for g in grads))
        scale = rho / (squares.sqrt() + 1e-12)
        return [v + g * scale.view(-1, *([1] * (g.dim() - 1))) for v, g in zip(views, grads,
                                                                               strict=True)]

    def local_updates(self, round_index: int) -> dict[int, float]:
        """K SGD/SAM steps for every alive data holder at once (docs/algorithms.md §2.1,
        node.learning); the losses of every alive peer (NaN for relays), summed over ranks."""
        peers = [i for i in self._local(self.alive) if self._holder_slot[i] >= 0]
        loss_sum = torch.zeros(2, self.rows.n, dtype=torch.float64, device=self.device)
        if peers:
            mean = self._train(peers, round_index)
            index = self._index(peers) + self.rows.lo
            loss_sum[0, index] = mean
            loss_sum[1, index] = 1.0
        values, trained = self.rows.all_sum(loss_sum).cpu().tolist()
        nan = float("nan")
        return {i: values[i] if trained[i] else nan for i in self.alive}

    def _gather(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples of an (m, B) index matrix: index_select on the flattened index (advanced
        indexing with a 2-D index took 7x longer, docs/results.md)."""
        flat = batch.flatten()
        xb = self._x_all.index_select(0, flat).view(*batch.shape, *self._x_all.shape[1:])
        return xb, self._y_all.index_select(0, flat).view(batch.shape)

    def _train(self, peers: list[int], round_index: int) -> torch.Tensor:
        cfg = self.learners[peers[0]].trainer.config
        lr = cfg.lr_at(round_index)
        slots = np.array([self._holder_slot[i] for i in peers], dtype=np.int64)
        everyone = len(peers) == len(self.X)
        index = None if everyone else self._index(peers)
        X = self.X if everyone else self.X[index]
        M = self.M if everyone else self.M[index]
        xs, ms = self._views(X), self._views(M)
        total = torch.zeros(len(peers), dtype=torch.float64, device=self.device)
        sampler = self._sampler
        assert sampler is not None  # the peers hold data, so their rows have samplers
        for _ in range(cfg.local_steps):
            batch, mask = sampler.next(slots)
            xb, yb = self._gather(batch)
            grads, loss = self._gradients(xs, xb, yb, mask)
            if cfg.rho:
                grads, _ = self._gradients(self._sam_point(xs, grads, cfg.rho), xb, yb, mask)
            total += loss
            with torch.no_grad():
                for x, g, m in zip(xs, grads, ms, strict=True):
                    row_sgd_step(x, g, m, lr=lr, momentum=cfg.momentum,
                                 weight_decay=cfg.weight_decay, dampening=cfg.dampening)
        if index is not None:  # not everyone
            self.X.index_copy_(0, index, X)
            self.M.index_copy_(0, index, M)
        return total / cfg.local_steps

    # -- gossip --------------------------------------------------------------------------------

    def _weights(self, graph: nx.Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Every row's Metropolis weights as (row, col, value) arrays, diagonal included:
        1/(1+max(d_i, d_j)) (degrees of this round's graph, as the peers know them) on edges
        between alive peers, the rest of each row on its diagonal; rows of down peers are the
        identity. Also the number of links between alive peers."""
        n = self.rows.n
        edges = np.array(list(graph.edges), dtype=np.int64).reshape(-1, 2)
        alive = np.zeros(n, dtype=bool)
        alive[list(self.alive)] = True
        edges = edges[alive[edges[:, 0]] & alive[edges[:, 1]]]
        degree = np.zeros(n, dtype=np.float64)
        for v, d in graph.degree:
            degree[v] = d
        w = 1.0 / (1.0 + np.maximum(degree[edges[:, 0]], degree[edges[:, 1]]))
        diagonal = 1.0 - np.bincount(edges.ravel(), weights=np.repeat(w, 2), minlength=n)
        everyone = np.arange(n)
        rows = np.concatenate([edges[:, 0], edges[:, 1], everyone])
        cols = np.concatenate([edges[:, 1], edges[:, 0], everyone])
        return rows, cols, np.concatenate([w, w, diagonal]), len(edges)

    def mixing_matrix(self, graph: nx.Graph) -> torch.Tensor:
        """This round's full W over all n rows (sparse COO, for inspection; gossip uses
        :meth:`gossip_plan`'s blocks of it)."""
        rows, cols, vals, _ = self._weights(graph)
        n = self.rows.n
        return torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])),
                                       torch.from_numpy(vals), (n, n), dtype=self.X.dtype,
                                       check_invariants=True).coalesce()

    def _csr(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
             ) -> torch.Tensor:
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        crow = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
        with warnings.catch_warnings():  # "CSR support is in beta": addmm on CSR is what we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols),
                                           torch.from_numpy(vals[order]), shape,
                                           dtype=self.X.dtype, check_invariants=True
                                           ).to(self.device)

    def gossip_plan(self, graph: nx.Graph) -> GossipPlan:
        """This round's W over the owned rows, split into owned and halo columns, and which rows
        go to and come from each other rank (computed identically on every rank from the graph,
        so no rank asks another what it needs). Cached per graph and alive set."""
        # the cache holds the graph itself (an id() alone could be reused by a later graph)
        if self._plan_cache is not None and self._plan_cache[0] is graph and \
                self._plan_cache[1] == self.alive:
            return self._plan_cache[2]
        rows, cols, vals, links = self._weights(graph)
        send, recv = self._halo_lists(rows, cols)
        lo, hi = self.rows.lo, self.rows.hi
        mine = (rows >= lo) & (rows < hi)
        rows, cols, vals = rows[mine] - lo, cols[mine], vals[mine]
        local = (cols >= lo) & (cols < hi)
        own = self._csr(rows[local], cols[local] - lo, vals[local], (hi - lo, hi - lo))
        remote = np.unique(cols[~local])
        halo = None
        if len(remote):
            position = np.searchsorted(remote, cols[~local])
            halo = self._csr(rows[~local], position, vals[~local], (hi - lo, len(remote)))
        plan = GossipPlan(own=own, halo=halo, send=send, recv=recv, links=links)
        self._plan_cache = (graph, frozenset(self.alive), plan)
        return plan

    def _halo_lists(self, rows: np.ndarray, cols: np.ndarray
                    ) -> tuple[dict[int, torch.Tensor], dict[int, int]]:
        """(owned rows each other rank needs, how many rows each sends me), from W's entries:
        rank r needs my row j when some row of r has a weight on column j. Every rank computes
        both sides from the same graph, so no rank asks another what it needs."""
        lo, hi = self.rows.lo, self.rows.hi
        mine_col = (cols >= lo) & (cols < hi)
        mine_row = (rows >= lo) & (rows < hi)
        recv, send = {}, {}
        for rank, (a, b) in enumerate(self.rows.owner_bounds()):
            if (a, b) == (lo, hi):
                continue
            theirs_col = (cols >= a) & (cols < b)
            count = len(np.unique(cols[mine_row & theirs_col]))
            if count:
                recv[rank] = count
            needed = np.unique(cols[mine_col & (rows >= a) & (rows < b)])
            if len(needed):
                send[rank] = self._index(needed.tolist())
        return send, recv

    def gossip_step(self, graph: nx.Graph, round_index: int = 0) -> None:
        """X <- W X over the owned rows: the owned part of the product runs while the halo rows
        travel (docs/algorithms.md §10)."""
        plan = self.gossip_plan(graph)
        self.traffic.messages += 2 * plan.links
        self.traffic.bytes_sent += 2 * plan.links * encoded_size(self.model_size)
        halo = {r: torch.empty(c, self.X.shape[1], dtype=self.X.dtype, device=self.device)
                for r, c in plan.recv.items()}
        pending = self.rows.exchange({r: self.X[i] for r, i in plan.send.items()}, halo)
        torch.addmm(self._next, plan.own, self.X, beta=0.0, out=self._next)
        if pending is not None:
            pending()
        if plan.halo is not None:
            received = torch.cat([halo[r] for r in sorted(halo)])
            torch.addmm(self._next, plan.halo, received, out=self._next)
        self.X.copy_(self._next)

    def share_histories(self, graph: nx.Graph) -> None:
        """No rule in the batched engine keeps histories."""

    # -- evaluation ----------------------------------------------------------------------------

    def _chunks(self, peers: Sequence[int], size: int) -> Iterator[tuple[list[int],
                                                                         torch.Tensor]]:
        for start in range(0, len(peers), size):
            chunk = list(peers[start:start + size])
            yield chunk, self.X[self._index(chunk)]

    @torch.no_grad()
    def _accuracies_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Test accuracy of each row's model, on the device."""
        logits = self._forward({s.name: v for s, v in zip(self._layout, self._views(rows),
                                                          strict=True)},
                               self.x_test, in_dims=(0, None))
        return (logits.argmax(dim=2) == self.y_test).double().mean(dim=1)

    @torch.no_grad()
    def peer_accuracies(self, peers: Sequence[int]) -> dict[int, float]:
        out = torch.zeros(self.rows.n, dtype=torch.float64, device=self.device)
        for chunk, rows in self._chunks(self._local(peers), EVAL_CHUNK):
            out[self._index(chunk) + self.rows.lo] = self._accuracies_of(rows)
        values = self.rows.all_sum(out).cpu().tolist()
        return {i: values[i] for i in peers}

    @torch.no_grad()
    def consensus(self, peers: Sequence[int]) -> float:
        """Xi^2 = (1/n) sum_i ||x_i - xbar||^2 (docs/algorithms.md §0.1) in float64: the mean
        first, then the squared distances (two passes, as mixing.consensus_distance)."""
        local = self._local(peers)
        total = torch.zeros(self.X.shape[1], dtype=torch.float64, device=self.device)
        for _, rows in self._chunks(local, REDUCE_CHUNK):
            total += rows.double().sum(dim=0)
        mean = self.rows.all_sum(total) / len(peers)
        spread = torch.zeros(1, dtype=torch.float64, device=self.device)
        for _, rows in self._chunks(local, REDUCE_CHUNK):
            spread += ((rows.double() - mean) ** 2).sum()
        return float(self.rows.all_sum(spread)) / len(peers)

    @torch.no_grad()
    def merged_models(self, graph: nx.Graph) -> tuple[list[list[int]], dict[int, torch.Tensor]]:
        """Exact float64 average over each component of alive honest peers, summed over the
        rows of every rank (docs/algorithms.md §5.1); the dict maps every member to its
        component's mean."""
        components = alive_components(graph.subgraph(self.honest), self.honest)
        means = self._component_means(components)
        return components, {i: means[k] for k, c in enumerate(components) for i in c}

    def _component_means(self, components: Sequence[Sequence[int]]) -> torch.Tensor:
        label = {i: k for k, c in enumerate(components) for i in c}
        sums = torch.zeros(len(components), self.X.shape[1], dtype=torch.float64,
                           device=self.device)
        for chunk, rows in self._chunks(self._local(label), REDUCE_CHUNK):
            which = torch.tensor([label[i] for i in chunk], device=self.device)
            sums.index_add_(0, which, rows.double())
        sizes = torch.tensor([len(c) for c in components], dtype=torch.float64,
                             device=self.device)
        return (self.rows.all_sum(sums) / sizes[:, None]).to(self.X.dtype)

    @torch.no_grad()
    def component_accuracies(self, graph: nx.Graph) -> tuple[list[list[int]], list[float]]:
        components = alive_components(graph.subgraph(self.honest), self.honest)
        means = self._component_means(components)
        accs = torch.cat([self._accuracies_of(means[k:k + EVAL_CHUNK])
                          for k in range(0, len(means), EVAL_CHUNK)])
        return components, accs.cpu().tolist()

    @torch.no_grad()
    def final_merge(self, graph: nx.Graph) -> list[list[int]]:
        components = alive_components(graph.subgraph(self.honest), self.honest)
        means = self._component_means(components)
        for k, component in enumerate(components):
            mine = self._local(component)
            if mine:
                self.X[self._index(mine)] = means[k]
            self.traffic.messages += 2 * (len(component) - 1)
            self.traffic.bytes_sent += 2 * (len(component) - 1) * encoded_size(self.model_size)
        return components

    # -- scenario events -----------------------------------------------------------------------

    @torch.no_grad()
    def bring_back(self, peers: Iterable[int], base: nx.Graph, fresh: bool = False) -> None:
        """The reference engine's rejoin on rows: a fresh peer copies the lowest-id live
        neighbour's row (as it is at that moment: an earlier fresh rejoin of this call may have
        overwritten it) and resets its momentum row; the copied rows are summed over ranks."""
        source: dict[int, int] = {}  # rejoiner -> the row whose current value it copies
        joined = sorted(set(peers) - self.alive)
        for v in joined:
            if fresh:
                donors = sorted(j for j in base.neighbors(v) if j in self.alive)
                if donors:
                    source[v] = source.get(donors[0], donors[0])
            self.alive.add(v)
        if not fresh:
            return
        originals = sorted(set(source.values()))
        rows = torch.zeros(len(originals), self.X.shape[1], dtype=self.X.dtype,
                           device=self.device)
        mine = [k for k, j in enumerate(originals) if self.rows.lo <= j < self.rows.hi]
        if mine:
            rows[mine] = self.X[self._index([originals[k] for k in mine])]
        rows = self.rows.all_sum(rows) if originals else rows
        at = {j: k for k, j in enumerate(originals)}
        for v in self._local(joined):
            if v in source:
                self.X[v - self.rows.lo] = rows[at[source[v]]]
            self.M[v - self.rows.lo].zero_()
