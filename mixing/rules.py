"""Mixing rules: how a peer combines its own vector with the vectors its neighbours sent.

Every rule is one small class behind one interface, :class:`MixingRule`::

    rule.mix(own, received, weights, round_index) -> new flat vector

``own`` is the peer's flat parameter vector after its local update, ``received`` maps neighbour id
to the vector that neighbour sent, ``weights`` are the Metropolis weights of those neighbours
(:func:`mixing.neighbour_weights`; rules that weigh inputs uniformly ignore them). Inputs are
always visited in id order, so the result does not depend on arrival order. A rule never changes
its inputs and returns a new tensor of the same length.

The peer (``node.peer``) and the simulator (``sim.engine``) both get their rule from
:func:`make_rule` and call the same ``mix``; rules with state (SybilWall's histories) keep it in
the instance, one per peer.

Uniform rules (median, trimmed mean, Krum, NNA) treat the peer's own vector as one input among
``n = 1 + len(received)``, as in the Byzantine-robust literature (docs/algorithms.md §7): with
nothing filtered they give the uniform mean of the n inputs, which equals gossip averaging only when
the Metropolis weights are uniform (a regular or complete graph).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mixing.averaging import weighted_average

Boundaries = Sequence[tuple[int, int]]


@dataclass
class HistoryRecord:
    """What SybilWall knows of one origin (docs/algorithms.md §4.2): the record's round, its hop
    distance, the neighbour it came from (the origin itself for direct neighbours) and the history
    vector."""

    round: int
    distance: int
    received_from: int
    vector: torch.Tensor


class MixingRule:
    """Base class: ``mix`` is the one method every rule implements."""

    name = "rule"

    def mix(self, own: torch.Tensor, received: Mapping[int, torch.Tensor],
            weights: Mapping[int, float], round_index: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def history_for(self, neighbour: int) -> tuple[int, HistoryRecord] | None:
        """A record to gossip to ``neighbour`` besides the model (only SybilWall has any)."""
        return None

    def accept_history(self, sender: int, origin: int, round_index: int, distance: int,
                       vector: torch.Tensor) -> bool:
        """Take a gossiped record; rules without histories ignore it."""
        return False


def _inputs(own: torch.Tensor, received: Mapping[int, torch.Tensor]) -> list[torch.Tensor]:
    """Own vector first, then the received ones in id order (no copies when on one device)."""
    return [own] + [received[j].to(own.device, own.dtype) for j in sorted(received)]


def _sorted_coordinates(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per coordinate, the n values in ascending order (row k holds every coordinate's k-th
    smallest). For the usual handful of neighbours an odd-even transposition network of
    elementwise min/max is about 3x faster than ``torch.sort`` over a stacked (n, D) matrix
    (scripts/bench_mixing.py); its cost grows as n^2, so larger n use the sort."""
    n = len(vectors)
    if n > 12:
        return list(torch.stack(vectors).sort(dim=0).values)
    rows = list(vectors)
    for phase in range(n):
        for i in range(phase % 2, n - 1, 2):
            low = torch.minimum(rows[i], rows[i + 1])
            rows[i + 1] = torch.maximum(rows[i], rows[i + 1])
            rows[i] = low
    return rows


def _mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    out = vectors[0].clone()
    for v in vectors[1:]:
        out.add_(v)
    return out.div_(len(vectors))


class Average(MixingRule):
    """Plain gossip averaging with Metropolis weights (docs/algorithms.md §1.1)."""

    name = "average"

    def mix(self, own, received, weights, round_index=0):
        return weighted_average(own, received, weights)


class VarianceCorrected(MixingRule):
    """Averaging followed by a per-tensor rescale that restores the inputs' variance
    (Tian et al. 2024, "Vanishing Variance Problem in Fully Decentralized Neural-Network
    Systems"; docs/algorithms.md §3.2).

    Averaging k uncorrelated tensors of variance s^2 leaves variance about s^2/k, a badly scaled
    network that sits on a plateau. For every parameter tensor l (``boundaries`` gives the slices
    of the flat vector; tensors of one element are skipped)::

        mu = mean(avg_l);  s = sqrt((target_l + eps) / (Var(avg_l) + eps));  eps = 1e-4
        out_l = mu + s (avg_l - mu)          # mean kept, variance = target

    ``Var`` is the unbiased variance over the tensor's entries. The average is the Metropolis
    gossip average (``own_weight=None``) or the conservative ``c own + (1 - c) mean(received)``.
    Targets: ``"others"`` = mean variance of the received models (FollowOthers, the authors'
    default), ``"self"`` = the own model's variance, ``"conservative"`` = ``c Var(own) + (1 - c)
    others`` with ``c`` the own model's weight in the average. BatchNorm running statistics are
    buffers, not part of the flat vector, so they are never rescaled.
    """

    name = "variance-corrected"
    TARGETS = ("others", "self", "conservative")
    EPS = 1e-4

    def __init__(self, boundaries: Boundaries, own_weight: float | None = None,
                 target: str = "others"):
        if target not in self.TARGETS:
            raise ValueError(f"target: unknown {target!r}; valid: {', '.join(self.TARGETS)}")
        if own_weight is not None and not 0.0 <= own_weight <= 1.0:
            raise ValueError(f"own_weight must be in [0, 1], got {own_weight}")
        self.boundaries = [(a, b) for a, b in boundaries if b - a > 1]
        self.own_weight = own_weight
        self.target = target

    def _average(self, own, received, weights) -> tuple[torch.Tensor, float]:
        """The averaged vector and the own model's weight in it."""
        if self.own_weight is None:
            used = [j for j in received if j in weights]
            return weighted_average(own, received, weights), 1.0 - sum(weights[j] for j in used)
        c = self.own_weight
        return own * c + _mean(_inputs(own, received)[1:]) * (1.0 - c), c

    def mix(self, own, received, weights, round_index=0):
        if not received:
            return own.clone()
        out, c = self._average(own, received, weights)
        others = _inputs(own, received)[1:]
        for a, b in self.boundaries:
            own_var = own[a:b].var()
            others_var = sum(v[a:b].var() for v in others) / len(others)
            target = {"others": others_var, "self": own_var,
                      "conservative": c * own_var + (1.0 - c) * others_var}[self.target]
            mean = out[a:b].mean()
            scale = torch.sqrt((target + self.EPS) / (out[a:b].var() + self.EPS))
            out[a:b] = mean + scale * (out[a:b] - mean)
        return out


class Median(MixingRule):
    """Coordinate-wise median of the own and received vectors (Yin et al. 2018); with an even
    count, the mean of the two middle values, so two inputs give their plain mean."""

    name = "median"

    def mix(self, own, received, weights, round_index=0):
        ordered = _sorted_coordinates(_inputs(own, received))
        n = len(ordered)
        return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


class TrimmedMean(MixingRule):
    """Coordinate-wise trimmed mean: per coordinate drop the ``f`` largest and ``f`` smallest of
    the n inputs and average the rest (Yin et al. 2018; CWTM in the MoNNA paper). ``f`` is capped
    so that at least one value remains; ``f = 0`` is the uniform mean."""

    name = "trimmed-mean"

    def __init__(self, f: int = 1):
        if f < 0:
            raise ValueError(f"f must be >= 0, got {f}")
        self.f = f

    def mix(self, own, received, weights, round_index=0):
        ordered = _sorted_coordinates(_inputs(own, received))
        n = len(ordered)
        f = min(self.f, (n - 1) // 2)
        return _mean(ordered[f:n - f])


def _pairwise_sq_distances(vectors: list[torch.Tensor]) -> torch.Tensor:
    """||x_k - x_l||^2 for all pairs, as float64. The Gram trick runs on vectors centred on
    their mean, so float32 keeps the digits of the differences (not of the norms), and costs one
    (n, D) x (D, n) product: 7x faster than in float64 (scripts/bench_mixing.py)."""
    centred = torch.stack(vectors)
    centred -= centred.mean(dim=0)
    gram = (centred @ centred.T).to(torch.float64)
    sq = gram.diagonal()
    return (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)


class Krum(MixingRule):
    """Krum and Multi-Krum (Blanchard et al. 2017).

    Each input k scores the sum of squared distances to its n - f - 2 nearest other inputs
    (at least one); the ``select`` inputs with the lowest scores are averaged uniformly
    (``select=1``: Krum; ``select=None``: Multi-Krum with n - f). With ``f = 0`` and Multi-Krum
    every input is kept, which is the uniform mean.
    """

    name = "krum"

    def __init__(self, f: int = 1, select: int | None = 1):
        if f < 0:
            raise ValueError(f"f must be >= 0, got {f}")
        if select is not None and select < 1:
            raise ValueError(f"select must be >= 1, got {select}")
        self.f, self.select = f, select

    def mix(self, own, received, weights, round_index=0):
        models = _inputs(own, received)
        n = len(models)
        if n == 1:
            return own.clone()
        distances = _pairwise_sq_distances(models)
        distances.fill_diagonal_(math.inf)
        closest = max(1, n - self.f - 2)
        scores = distances.sort(dim=1).values[:, :min(closest, n - 1)].sum(dim=1)
        keep = max(1, n - self.f) if self.select is None else min(self.select, n)
        chosen = torch.argsort(scores, stable=True)[:keep]
        return _mean([models[k] for k in chosen.sort().values.tolist()])


class NearestNeighbourAverage(MixingRule):
    """NNA (Farhadkhani et al. 2023, docs/algorithms.md §7.1): average the n - f inputs closest in
    L2 to the peer's own vector (its own included, at distance 0). With MoNNA's local momentum
    (``TrainConfig.dampening = momentum``) this is MoNNA. ``f = 0`` is the uniform mean."""

    name = "nna"

    def __init__(self, f: int = 1):
        if f < 0:
            raise ValueError(f"f must be >= 0, got {f}")
        self.f = f

    def mix(self, own, received, weights, round_index=0):
        models = _inputs(own, received)
        keep = max(1, len(models) - self.f)
        distances = torch.tensor([0.0] + [float(torch.dist(v, own)) for v in models[1:]])
        chosen = torch.argsort(distances, stable=True)[:keep]
        return _mean([models[k] for k in chosen.sort().values.tolist()])


class ClippedGossip(MixingRule):
    """Self-centred clipping (He, Karimireddy, Jaggi 2022, docs/algorithms.md §7.2)::

        x_i' = x_i + sum_j w_ij CLIP(x_j - x_i, tau),  CLIP(v, tau) = v min(1, tau / ||v||)

    with Metropolis weights. ``radius=None`` is the authors' adaptive radius: the second-largest
    neighbour distance (so only the farthest neighbour is clipped), or the only distance when
    there is one neighbour. ``radius=inf`` is plain gossip averaging.
    """

    name = "clipped-gossip"

    def __init__(self, radius: float | None = None):
        if radius is not None and radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.radius = radius

    def _tau(self, distances: torch.Tensor) -> float:
        if self.radius is not None:
            return self.radius
        ordered = distances.sort(descending=True).values
        return float(ordered[1] if len(ordered) > 1 else ordered[0])

    def mix(self, own, received, weights, round_index=0):
        used = sorted(j for j in received if j in weights)
        out = own.clone()
        if not used:
            return out
        distances = torch.tensor([float(torch.dist(received[j].to(own.device, own.dtype), own))
                                  for j in used], dtype=torch.float64)
        tau = self._tau(distances)
        for k, j in enumerate(used):
            d = float(distances[k])
            factor = 1.0 if math.isinf(tau) or d <= tau else tau / d
            if factor == 1.0:  # x_i + w (x_j - x_i) without a temporary for the difference
                out.add_(received[j].to(own.device, own.dtype), alpha=weights[j])
                out.add_(own, alpha=-weights[j])
            else:
                out.add_(received[j].to(own.device, own.dtype) - own, alpha=weights[j] * factor)
        return out


def _similarity_scores(similarity: torch.Tensor) -> torch.Tensor:
    """FoolsGold's map from a cosine-similarity matrix (diagonal 0) to scores in [0, 1]:
    pardoning, a = 1 - row max, normalisation by the largest a, logit + 0.5, clip (float64)."""
    m = similarity.shape[0]
    s = similarity.clone()
    v = s.max(dim=1).values + 1e-5
    pardon = v[:, None] < v[None, :]
    s = torch.where(pardon, s * v[:, None] / v[None, :], s)
    a = (1.0 - s.max(dim=1).values).clamp(0.0, 1.0)
    top = a.max()
    if top <= 0:
        return torch.zeros(m, dtype=torch.float64)
    a = a / top
    with torch.no_grad():
        logit = torch.log(a / (1.0 - a)) + 0.5  # a = 1 -> +inf, a = 0 -> -inf: both clipped
    return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def foolsgold_scores(histories: torch.Tensor) -> torch.Tensor:
    """FoolsGold's similarity score per history (Fung et al. 2020; docs/algorithms.md §4.3), in
    float64.

    Cosine similarities S (diagonal 0); pardoning S_kl *= v_k / v_l when v_k < v_l with
    v = row max + 1e-5; a = 1 - row max, clipped to [0, 1] and divided by its max; logit
    ln(a / (1 - a)) + 0.5 clipped to [0, 1] (a = 1 maps to 1, like the reference's clip of +inf).
    Identical histories get 0; mutually orthogonal ones get 1.
    """
    m = histories.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.float64)
    if m == 1:
        return torch.ones(1, dtype=torch.float64)
    gram = (histories @ histories.T).to(torch.float64)  # one product; cosines need no float64
    norms = gram.diagonal().clamp_min(1e-24).sqrt()
    s = gram / norms[:, None] / norms[None, :]
    s.fill_diagonal_(0.0)
    return _similarity_scores(s)


def same_round_similarities(vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (float64, diagonal 0) of ``vectors`` (one row per origin, all of one
    round) after subtracting ``reference`` from each: where each model sits relative to the
    receiver's picture of that round, not where all models sit (docs/algorithms.md §4.3).
    Identical vectors stay identical after centring, so their cosine is exactly 1."""
    centred = vectors - reference
    gram = (centred @ centred.T).to(torch.float64)
    norms = gram.diagonal().clamp_min(1e-24).sqrt()
    s = (gram / norms[:, None] / norms[None, :]).clamp(-1.0, 1.0)
    return s.fill_diagonal_(0.0)


class SybilWall(MixingRule):
    """SybilWall (Werthenbach and Pouwelse 2023; docs/algorithms.md §4.2-4.5).

    The peer keeps one history per origin: direct neighbours' come from the models they send,
    distant origins' arrive by probabilistic gossip (:meth:`history_for` / :meth:`accept_history`)
    and only sharpen the scores a_j in [0, 1] of the neighbours: their models are never averaged
    in. ``history_mode`` says what is compared, how the scores are computed and how they
    aggregate (docs/algorithms.md §4.3-4.4):

    * ``"rounds"`` (default, docs/algorithms.md §4.3): records are compared only with records
      *of the same round*. The peer keeps every origin's model of the last ``window`` rounds (its
      neighbours' from what they sent, distant origins' from gossip, which carries the round) and
      its own. For each round it centres that round's models on their coordinate-wise median
      (its own included; the median, unlike the mean, is not dragged towards a block of Sybil
      copies) and takes cosines (:func:`same_round_similarities`); a pair's similarity is the
      one of the newest round both were seen in, and is kept after the records expire. Records
      are gossiped only while a receiver can still match them. Neighbour j's
      similarity m_j is its largest with any other origin, and
      ``a_j = clip((threshold - m_j) / ramp, 0, 1)``: 0 from ``threshold`` up, 1 from
      ``threshold - ramp`` down. The identities of one adversary send one model per round,
      so their same-round records are identical (cosine 1, weight 0); honest models of one round
      differ by what each peer's own data pulled them towards. Aggregation: the Metropolis
      weights scaled by the scores, what they remove kept by the own model,
      ``x_i' = x_i + sum_j w_ij a_j (x_j - x_i)``; with every score 1 this is plain gossip
      averaging, and a Sybil hub with many edges gets the small Metropolis weight of a hub
      (without ``weights``, w_ij = 1 / (1 + n) for n received).
      ``logit=True`` maps the same similarities to scores by FoolsGold's pardoning and logit
      (:func:`foolsgold_scores`) instead of the threshold (a variant, for comparison).
    * ``"latest"`` and ``"sum"``: the authors' scoring, :func:`foolsgold_scores` over the latest
      history of every known origin (neighbours first, in id order, then distant origins),
      whatever their rounds. ``"latest"`` keeps the latest model (what the authors' code
      computes, since its first "difference" is the full model), ``"sum"`` accumulates the
      updates as FoolsGold does, ``h <- h + (x_r - x_prev)`` with ``h_0 = x_0 - init`` (``init``
      is the shared initial model; without one, ``h_0 = x_0`` as in the authors' code).
      Aggregation: the normalised formula ``x_i' = (x_i + sum_j a_j x_j) / (1 + sum_j a_j)``.

    The authors' ``sybilwall.py`` appends the own weight after the scores of *all* histories, so
    with distant histories present its own model receives the first distant score and the weights
    do not sum to 1; we implement the intended normalisation.

    ``gossip=False`` never shares histories: local FoolsGold, the paper's baseline.
    """

    name = "sybilwall"
    HISTORY_MODES = ("rounds", "latest", "sum")

    def __init__(self, own_id: int, *, history_mode: str = "rounds", gossip: bool = True,
                 decay: float = 0.8, seed: int = 0, init: torch.Tensor | None = None,
                 window: int = 8, threshold: float = 0.99, ramp: float = 0.04,
                 logit: bool = False):
        if history_mode not in self.HISTORY_MODES:
            raise ValueError(f"history_mode: unknown {history_mode!r}; valid: "
                             f"{', '.join(self.HISTORY_MODES)}")
        if decay <= 0:
            raise ValueError(f"decay must be > 0, got {decay}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not -1.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1], got {threshold}")
        if ramp <= 0:
            raise ValueError(f"ramp must be > 0, got {ramp}")
        self.own_id = own_id
        self.history_mode = history_mode
        self.gossip = gossip
        self.decay = decay
        # "authors", "rounds" or "rounds-foolsgold"
        self.scoring = "authors" if history_mode != "rounds" else \
            "rounds-foolsgold" if logit else "rounds"
        self.window = window
        self.threshold = threshold
        self.ramp = ramp
        self.init = None if init is None else init.detach().clone()
        self.records: dict[int, HistoryRecord] = {}
        self._last_model: dict[int, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.last_weights: dict[int, float] = {}
        self.last_similarity: dict[int, float] = {}
        # round scorings: origin -> round -> model, the own models, and the similarity memory
        self._seen: dict[int, dict[int, torch.Tensor]] = {}
        self._own: dict[int, torch.Tensor] = {}
        self._dirty: set[int] = set()
        self._round: int | None = None
        self._slot: dict[int, int] = {}
        self._sim = torch.zeros((0, 0), dtype=torch.float64)
        self._sim_round = torch.zeros((0, 0), dtype=torch.int64)

    # -- the authors' histories and scores ----------------------------------------------------

    def _observe(self, origin: int, model: torch.Tensor, round_index: int) -> None:
        """Update a direct neighbour's history with the model it just sent."""
        if self.history_mode != "sum":
            vector = model.detach().clone()
        else:
            previous = self._last_model.get(origin, self.init)
            old = self.records.get(origin)
            delta = model - previous if previous is not None else model.clone()
            vector = delta if old is None or old.distance > 1 else old.vector + delta
            self._last_model[origin] = model.detach().clone()
        self.records[origin] = HistoryRecord(round_index, 1, origin, vector)
        if self.scoring != "authors":
            self._seen.setdefault(origin, {})[round_index] = vector

    def _authors_scores(self, neighbours: Sequence[int]) -> dict[int, float]:
        direct = sorted(o for o, r in self.records.items() if r.distance == 1)
        distant = sorted(o for o, r in self.records.items() if r.distance > 1)
        order = direct + distant
        if not order:
            return {}
        a = foolsgold_scores(torch.stack([self.records[o].vector for o in order]))
        position = {o: k for k, o in enumerate(order)}
        return {j: float(a[position[j]]) for j in neighbours if j in position}

    # -- same-round similarities ----------------------------------------------------------------

    def _slots(self, origins: Sequence[int]) -> torch.Tensor:
        """The rows of ``origins`` in the similarity memory (new origins get new rows)."""
        for o in origins:
            if o not in self._slot:
                self._slot[o] = len(self._slot)
        size = len(self._slot)
        if size > self._sim.shape[0]:
            grown = max(size, 2 * self._sim.shape[0], 8)
            sim = torch.zeros((grown, grown), dtype=torch.float64)
            rounds = torch.full((grown, grown), -1, dtype=torch.int64)
            old = self._sim.shape[0]
            sim[:old, :old], rounds[:old, :old] = self._sim, self._sim_round
            self._sim, self._sim_round = sim, rounds
        return torch.tensor([self._slot[o] for o in origins], dtype=torch.int64)

    def _forget_before(self, oldest: int) -> None:
        for rounds in self._seen.values():
            for r in [r for r in rounds if r < oldest]:
                del rounds[r]
        for r in [r for r in self._own if r < oldest]:
            del self._own[r]
        self._dirty = {r for r in self._dirty if r >= oldest}

    def _update_similarities(self) -> None:
        """Recompute the similarities of every round whose set of records changed, oldest first;
        a pair keeps the value of the newest round it was seen in."""
        for r in sorted(self._dirty):
            origins = sorted(o for o, rounds in self._seen.items() if r in rounds)
            if len(origins) < 2:
                continue
            vectors = torch.stack([self._seen[o][r] for o in origins])
            pool = vectors if r not in self._own else torch.cat(
                [vectors, self._own[r].to(vectors.device, vectors.dtype)[None]])
            s = same_round_similarities(vectors, pool.median(dim=0).values)
            slots = self._slots(origins)
            block = (slots[:, None], slots[None, :])
            newer = self._sim_round[block] <= r
            self._sim[block] = torch.where(newer, s, self._sim[block])
            self._sim_round[block] = torch.where(newer, torch.full_like(newer, r,
                                                                        dtype=torch.int64),
                                                 self._sim_round[block])
        self._dirty.clear()

    def _round_scores(self, neighbours: Sequence[int]) -> dict[int, float]:
        present = [j for j in neighbours if j in self._slot]
        if not present:
            return dict.fromkeys(neighbours, 1.0)
        size = len(self._slot)
        sim, known = self._sim[:size, :size], self._sim_round[:size, :size] >= 0
        known = known & ~torch.eye(size, dtype=torch.bool)
        rows = torch.tensor([self._slot[j] for j in present], dtype=torch.int64)
        if self.scoring == "rounds-foolsgold":
            a = _similarity_scores(torch.where(known, sim, 0.0).clamp_min(0.0))[rows]
            largest = torch.where(known[rows], sim[rows], -1.0).max(dim=1).values
        else:
            largest = torch.where(known[rows], sim[rows], -1.0).max(dim=1).values
            a = ((self.threshold - largest) / self.ramp).clamp(0.0, 1.0)
        self.last_similarity = {j: float(m) for j, m in zip(present, largest, strict=True)}
        out = dict.fromkeys(neighbours, 1.0)
        out.update({j: float(w) for j, w in zip(present, a, strict=True)})
        return out

    def scores(self, neighbours: Sequence[int]) -> dict[int, float]:
        """Similarity score of each of ``neighbours`` computed against every known history."""
        if self.scoring == "authors":
            return self._authors_scores(neighbours)
        self._update_similarities()
        return self._round_scores(neighbours)

    def mix(self, own, received, weights, round_index=0):
        if self.scoring != "authors":
            self._round = round_index if self._round is None else max(self._round, round_index)
            self._own[round_index] = own.detach().clone()
            self._dirty.add(round_index)
            self._forget_before(self._round - self.window + 1)
        for j in sorted(received):
            self._observe(j, received[j], round_index)
        score = self.scores(sorted(received))
        self.last_weights = score
        if self.scoring != "authors":
            # Metropolis weights scaled by the scores, the rest kept by the own model
            n = len(received)
            out = own.clone()
            for j in sorted(received):
                w = weights.get(j, 1.0 / (1 + n)) * score[j]
                if w > 0:
                    out.add_(received[j].to(own.device, own.dtype) - own, alpha=w)
            return out
        total = 1.0 + sum(score.values())
        out = own / total
        for j in sorted(received):
            if score[j] > 0:
                out.add_(received[j].to(own.device, own.dtype), alpha=score[j] / total)
        return out

    def history_for(self, neighbour: int) -> tuple[int, HistoryRecord] | None:
        """One stored history to gossip to ``neighbour`` (docs/algorithms.md §4.5), or None.

        Candidates exclude ``neighbour``'s own record and every record received from it; a
        record at distance d is picked with probability proportional to decay exp(-decay (d-1)).
        The record is the origin's latest, with its round.
        """
        if not self.gossip:
            return None
        candidates = sorted(o for o, r in self.records.items()
                            if o not in (self.own_id, neighbour) and r.received_from != neighbour
                            and self._useful(r))
        if not candidates:
            return None
        weights = torch.tensor([self.decay * math.exp(-self.decay * (self.records[o].distance - 1))
                                for o in candidates], dtype=torch.float64)
        pick = int(torch.multinomial(weights, 1, generator=self.generator))
        return candidates[pick], self.records[candidates[pick]]

    def _useful(self, record: HistoryRecord) -> bool:
        """Under the round scorings a record is worth gossiping only while a receiver can still
        find models of its round: it mixes next in the round after this peer's latest, with a
        window of ``window`` rounds. The authors' scoring gossips any record."""
        if self.scoring == "authors" or self._round is None:
            return True
        return record.round >= self._round - self.window + 2

    def accept_history(self, sender: int, origin: int, round_index: int, distance: int,
                       vector: torch.Tensor) -> bool:
        """Store a gossiped history at distance ``distance + 1``; a direct neighbour's own record
        is never replaced, a distant one only by a newer round. The round scorings also keep a
        distant origin's record of any round of the window they do not have yet (a late record
        of an older round can still be compared with the models of that round). Returns whether
        it was stored."""
        if origin == self.own_id:
            return False
        old = self.records.get(origin)
        if old is not None and old.distance == 1:
            return False
        stored = False
        if self.scoring != "authors":
            rounds = self._seen.setdefault(origin, {})
            fresh = self._round is None or round_index > self._round - self.window
            if fresh and round_index not in rounds:
                rounds[round_index] = vector.detach().clone()
                self._dirty.add(round_index)
                stored = True
        if old is None or round_index > old.round:
            self.records[origin] = HistoryRecord(round_index, distance + 1, sender,
                                                 vector.detach().clone())
            stored = True
        return stored


MIXING_NAMES = ("average", "variance-corrected", "sybilwall", "foolsgold", "median",
                "trimmed-mean", "krum", "multi-krum", "nna", "clipped-gossip")


def make_rule(name: str, *, own_id: int = 0, boundaries: Boundaries = (), f: int = 1,
              radius: float | None = None, own_weight: float | None = None,
              target: str = "others", history_mode: str = "rounds", decay: float = 0.8,
              seed: int = 0, init: torch.Tensor | None = None, window: int = 8,
              threshold: float = 0.99, ramp: float = 0.04, logit: bool = False) -> MixingRule:
    """The rule called ``name`` for peer ``own_id``: one fresh instance per peer.

    ``f`` is the number of Byzantine inputs tolerated (trimmed-mean, krum, multi-krum, nna);
    ``radius`` the clipping radius (None: adaptive); ``own_weight`` and ``target`` configure the
    variance correction; ``history_mode``, ``decay``, ``seed``, ``init``, ``window``,
    ``threshold``, ``ramp`` and ``logit`` configure SybilWall (``foolsgold`` is SybilWall
    without history gossip).
    """
    wall: dict[str, Any] = {"history_mode": history_mode, "decay": decay, "seed": seed,
                            "init": init, "window": window, "threshold": threshold, "ramp": ramp,
                            "logit": logit}
    builders = {
        "average": lambda: Average(),
        "variance-corrected": lambda: VarianceCorrected(boundaries, own_weight, target),
        "sybilwall": lambda: SybilWall(own_id, gossip=True, **wall),
        "foolsgold": lambda: SybilWall(own_id, gossip=False, **wall),
        "median": lambda: Median(),
        "trimmed-mean": lambda: TrimmedMean(f),
        "krum": lambda: Krum(f, select=1),
        "multi-krum": lambda: Krum(f, select=None),
        "nna": lambda: NearestNeighbourAverage(f),
        "clipped-gossip": lambda: ClippedGossip(radius),
    }
    if name not in builders:
        raise ValueError(f"unknown mixing rule {name!r}; valid: {', '.join(MIXING_NAMES)}")
    return builders[name]()
