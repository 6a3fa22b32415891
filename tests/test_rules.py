import math

import pytest
import torch

from mixing import (
    MIXING_NAMES,
    ClippedGossip,
    Krum,
    Median,
    NearestNeighbourAverage,
    SybilWall,
    TrimmedMean,
    VarianceCorrected,
    foolsgold_scores,
    make_rule,
    neighbour_weights,
    weighted_average,
)


def vectors(n, dim=30, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(n)]


def uniform_mean(own, received):
    return torch.stack([own] + [received[j] for j in sorted(received)]).mean(0)


def star_weights(received, own_degree=None):
    own_degree = len(received) if own_degree is None else own_degree
    return neighbour_weights(own_degree, {j: own_degree for j in received}, list(received))


# -- variance correction ---------------------------------------------------------------------

BOUNDS = [(0, 20), (20, 24), (24, 25), (25, 40)]


def test_variance_correction_restores_the_mean_input_variance_and_keeps_the_mean():
    models = vectors(5, dim=40, seed=3)
    own, received = models[0], dict(enumerate(models[1:], start=1))
    rule = VarianceCorrected(BOUNDS, own_weight=0.0)
    out = rule.mix(own, received, {})
    plain = uniform_mean(torch.zeros_like(own), received) * 5 / 4  # mean of the received
    for a, b in BOUNDS:
        if b - a == 1:
            assert out[a] == plain[a]  # one-element tensors are left as averaged
            continue
        target = torch.stack([m[a:b].var() for m in models[1:]]).mean()
        assert out[a:b].var() == pytest.approx(float(target), rel=1e-3)
        assert out[a:b].mean() == pytest.approx(float(plain[a:b].mean()), abs=1e-12)
        assert plain[a:b].var() < 0.5 * target  # averaging 4 independent vectors shrank it


def test_variance_correction_with_metropolis_weights_and_other_targets():
    models = vectors(4, dim=40, seed=4)
    own, received = models[0], dict(enumerate(models[1:], start=1))
    weights = star_weights(received)
    plain = weighted_average(own, received, weights)
    for target, expected in [("self", own[0:20].var()),
                             ("others", torch.stack([m[0:20].var() for m in models[1:]]).mean())]:
        out = VarianceCorrected(BOUNDS, target=target).mix(own, received, weights)
        assert out[0:20].var() == pytest.approx(float(expected), rel=1e-3)
        assert out[0:20].mean() == pytest.approx(float(plain[0:20].mean()), abs=1e-12)
    c = 0.5
    out = VarianceCorrected(BOUNDS, own_weight=c, target="conservative").mix(own, received, {})
    others = torch.stack([m[0:20].var() for m in models[1:]]).mean()
    assert out[0:20].var() == pytest.approx(float(c * own[0:20].var() + (1 - c) * others),
                                            rel=1e-3)


def test_variance_correction_of_identical_inputs_changes_nothing():
    x = vectors(1, dim=40)[0]
    out = VarianceCorrected(BOUNDS).mix(x, {1: x.clone(), 2: x.clone()},
                                        star_weights({1: x, 2: x}))
    assert torch.allclose(out, x, atol=1e-12)


# -- SybilWall --------------------------------------------------------------------------------

def linear_2x2(values):
    """The reference tests' nn.Linear(2, 2) whose weight rows and bias all equal ``values``."""
    return torch.tensor(values * 3, dtype=torch.float64)


@pytest.mark.parametrize("histories, averaged, expected", [
    # the three cases of the authors' ml/test/aggregators/test_sybilwall.py (no own model)
    ([[0, 1], [1, 0], [1, -1]], 3, [0, 1]),        # b, c similar: only a keeps weight
    ([[0, 1], [1, 0], [0, -1]], 3, [1 / 3, 0]),    # no similarity: uniform
    ([[0, 1], [1, 0], [1, -1]], 2, [0, 1]),        # c only a distant history, not averaged
])
def test_sybilwall_scores_reproduce_the_reference_cases(histories, averaged, expected):
    vecs = [linear_2x2(h) for h in histories]
    scores = foolsgold_scores(torch.stack(vecs))[:averaged]
    out = sum(w * v for w, v in zip(scores / scores.sum(), vecs[:averaged], strict=True))
    assert torch.allclose(out, linear_2x2(expected), atol=1e-12)


def test_identical_histories_get_weight_zero_and_distinct_ones_near_one():
    honest = vectors(4, dim=50, seed=5)
    sybil = vectors(1, dim=50, seed=6)[0]
    scores = foolsgold_scores(torch.stack(honest + [sybil, sybil.clone()]))
    assert scores[4] == 0 and scores[5] == 0
    assert (scores[:4] > 0.9).all()


def test_sybilwall_weights_sum_to_one_with_the_own_model_and_ignore_distant_models():
    # the authors' scoring and normalised aggregation (docs/algorithms.md §4.4)
    rule = SybilWall(own_id=0, gossip=True, seed=1, history_mode="latest")
    honest = vectors(3, dim=50, seed=7)
    sybil = vectors(1, dim=50, seed=8)[0]
    rule.accept_history(sender=2, origin=9, round_index=0, distance=1, vector=sybil)
    own = torch.zeros(50, dtype=torch.float64)
    received = {1: honest[0], 2: honest[1], 3: sybil.clone()}  # neighbour 3 copies distant 9
    out = rule.mix(own, received, {})
    w = rule.last_weights
    assert w[3] == 0 and w[1] > 0.9 and w[2] > 0.9
    expected = (own + w[1] * honest[0] + w[2] * honest[1]) / (1 + w[1] + w[2])
    assert torch.allclose(out, expected, atol=1e-12)
    assert 9 not in w  # a distant history is scored against, never averaged in


def test_sybilwall_rounds_scores_scale_the_metropolis_weights():
    rule = SybilWall(own_id=0, gossip=True, seed=1)
    honest = vectors(3, dim=50, seed=7)
    sybil = vectors(1, dim=50, seed=8)[0]
    rule.accept_history(sender=2, origin=9, round_index=0, distance=1, vector=sybil)
    own = torch.zeros(50, dtype=torch.float64)
    received = {1: honest[0], 2: honest[1], 3: sybil.clone()}  # neighbour 3 copies distant 9
    weights = {1: 0.25, 2: 0.2, 3: 0.25}
    out = rule.mix(own, received, weights)
    w = rule.last_weights
    assert w == {1: 1.0, 2: 1.0, 3: 0.0} and 9 not in w
    expected = own + 0.25 * (honest[0] - own) + 0.2 * (honest[1] - own)
    assert torch.allclose(out, expected, atol=1e-12)
    # every score 1: plain gossip averaging
    clean = SybilWall(own_id=0, seed=1)
    assert torch.allclose(clean.mix(own, received, weights),
                          weighted_average(own, received, weights), atol=1e-12)


def test_sybilwall_gossip_picks_by_distance_and_never_returns_to_the_source():
    rule = SybilWall(own_id=0, seed=3)
    x = vectors(4, dim=10, seed=9)
    rule.mix(torch.zeros(10, dtype=torch.float64), {1: x[0], 2: x[1]}, {}, round_index=0)
    rule.accept_history(sender=1, origin=5, round_index=0, distance=1, vector=x[2])
    assert rule.records[5].distance == 2 and rule.records[5].received_from == 1
    picks = [rule.history_for(1)[0] for _ in range(200)]
    assert set(picks) == {2}  # 1's own record and what came from 1 are excluded
    picks = [rule.history_for(2)[0] for _ in range(2000)]
    share_near = picks.count(1) / len(picks)  # d=1 weight 0.8 vs d=2 weight 0.8 e^-0.8
    assert share_near == pytest.approx(1 / (1 + math.exp(-0.8)), abs=0.04)
    # direct records are never replaced by gossip; distant ones only by newer rounds
    assert not rule.accept_history(sender=2, origin=1, round_index=5, distance=1, vector=x[3])
    assert not rule.accept_history(sender=2, origin=5, round_index=0, distance=3, vector=x[3])
    assert rule.accept_history(sender=2, origin=5, round_index=1, distance=3, vector=x[3])
    assert rule.records[5].distance == 4
    assert SybilWall(own_id=0, gossip=False).history_for(1) is None


def test_sum_history_mode_accumulates_updates_from_the_init():
    init = torch.zeros(4, dtype=torch.float64)
    rule = SybilWall(own_id=0, history_mode="sum", init=init)
    a, b = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), torch.tensor(
        [1.0, 2, 0, 0], dtype=torch.float64)
    rule.mix(init, {1: a}, {}, 0)
    rule.mix(init, {1: b}, {}, 1)
    assert torch.equal(rule.records[1].vector, b - init)
    latest = SybilWall(own_id=0, history_mode="latest")
    latest.mix(init, {1: a}, {}, 0)
    latest.mix(init, {1: b}, {}, 1)
    assert torch.equal(latest.records[1].vector, b)


# -- robust rules -----------------------------------------------------------------------------

def test_robust_rules_reduce_to_the_plain_average_where_they_must():
    models = vectors(5, seed=11)
    own, received = models[0], dict(enumerate(models[1:], start=1))
    mean = uniform_mean(own, received)
    assert torch.allclose(TrimmedMean(f=0).mix(own, received, {}), mean, atol=1e-12)
    assert torch.allclose(Krum(f=0, select=None).mix(own, received, {}), mean, atol=1e-12)
    assert torch.allclose(NearestNeighbourAverage(f=0).mix(own, received, {}), mean, atol=1e-12)
    two = {1: models[1]}
    assert torch.allclose(Median().mix(own, two, {}), (own + models[1]) / 2, atol=1e-12)
    weights = star_weights(received)
    assert torch.allclose(ClippedGossip(radius=math.inf).mix(own, received, weights),
                          weighted_average(own, received, weights), atol=1e-12)
    # a huge fixed radius clips nothing either; the adaptive one clips the farthest only
    assert torch.allclose(ClippedGossip(radius=1e9).mix(own, received, weights),
                          weighted_average(own, received, weights), atol=1e-12)


def test_krum_picks_the_input_closest_to_the_others():
    honest = [torch.full((3,), v, dtype=torch.float64) for v in (0.0, 0.1, 0.2, 0.3)]
    outlier = torch.full((3,), 50.0, dtype=torch.float64)
    out = Krum(f=1).mix(honest[0], {1: honest[1], 2: honest[2], 3: honest[3], 4: outlier}, {})
    assert float(out[0]) in (0.1, 0.2)


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multi-krum", "nna",
                                  "clipped-gossip"])
def test_one_input_scaled_by_a_million_keeps_the_output_bounded(name):
    """(SybilWall is not in this list: cosine similarity ignores scale, it targets Sybils.)"""
    models = vectors(6, seed=12)
    own = models[0]
    received = dict(enumerate(models[1:], start=1))
    received[5] = received[5] * 1e6
    out = make_rule(name, own_id=0, f=1).mix(own, received, star_weights(received))
    honest_scale = max(float(m.abs().max()) for m in models[:5])
    assert out.abs().max() <= 5 * honest_scale
    plain = weighted_average(own, received, star_weights(received))
    assert plain.abs().max() > 1e4  # the attack does hurt plain averaging


@pytest.mark.parametrize("name", MIXING_NAMES)
def test_every_rule_returns_a_finite_vector_of_the_right_length_and_leaves_inputs(name):
    models = vectors(4, dim=25, seed=13)
    own, received = models[0], dict(enumerate(models[1:], start=1))
    before = [m.clone() for m in models]
    rule = make_rule(name, own_id=0, boundaries=[(0, 10), (10, 25)])
    out = rule.mix(own, received, star_weights(received))
    assert out.shape == own.shape and torch.isfinite(out).all()
    assert all(torch.equal(a, b) for a, b in zip(before, models, strict=True))
    alone = rule.mix(own, {}, {})
    assert torch.allclose(alone, own)


def test_unknown_rule_and_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="valid: average"):
        make_rule("mean")
    with pytest.raises(ValueError, match="radius must be > 0"):
        ClippedGossip(radius=0)
    with pytest.raises(ValueError, match="history_mode"):
        SybilWall(0, history_mode="foo")


def test_variance_correction_never_touches_batchnorm_statistics():
    from node.learning.model import FlatModel

    torch.manual_seed(0)
    model = FlatModel(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)))
    model.module.train()(torch.randn(32, 6))  # give the running statistics values
    buffers = {k: v.clone() for k, v in model.module.named_buffers()}
    bounds = [(s.start, s.stop) for s in model.layout]
    assert [s.name for s in model.layout] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    others = {j: torch.randn(model.size) for j in (1, 2, 3)}
    rule = VarianceCorrected(bounds)
    model.load(rule.mix(model.params, others, star_weights(others)))
    assert all(torch.equal(v, buffers[k]) for k, v in model.module.named_buffers())
    weight = model.params[bounds[0][0]:bounds[0][1]]
    target = torch.stack([o[bounds[0][0]:bounds[0][1]].var() for o in others.values()]).mean()
    assert float(weight.var()) == pytest.approx(float(target), rel=1e-3)


@pytest.mark.parametrize("n", [2, 5, 9, 15])
def test_median_and_trimmed_mean_equal_a_full_sort(n):
    models = vectors(n, dim=200, seed=n)
    own, received = models[0], dict(enumerate(models[1:], start=1))
    ordered = torch.stack(models).sort(dim=0).values
    expected_median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    assert torch.allclose(Median().mix(own, received, {}), expected_median, atol=1e-12)
    f = min(2, (n - 1) // 2)
    assert torch.allclose(TrimmedMean(f=2).mix(own, received, {}),
                          ordered[f:n - f].mean(0), atol=1e-12)
