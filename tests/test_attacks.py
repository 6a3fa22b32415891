import json

import networkx as nx
import pytest
import torch

import topology as T
from mixing import ClippedGossip, SybilWall
from node.config import (
    AlgorithmSection,
    LaunchConfig,
    MixingSection,
    ModelSection,
    PeerConfig,
)
from node.learning import (
    choose_adversaries,
    derive_seed,
    make_attack,
    make_learner,
    sgd_step,
)
from node.learning.algorithms import resolve_algorithm
from node.learning.attacks import TARGET, add_trigger, trigger_features
from node.schema import ConfigError
from sim import SimConfig, Simulation
from sim.cli import main, parse_args
from tests.helpers import peer_config, run_memory_network

# -- adversaries' data, vectors and scores ----------------------------------------------------

def test_label_flip_adds_every_class_0_and_1_sample_with_swapped_labels(digits):
    shard = torch.arange(40)
    x, y = make_attack("label-flip").training_data(digits, shard)
    pool = ((digits.y_train == 0) | (digits.y_train == 1)).sum()
    assert len(y) == 40 + pool
    own = digits.y_train[shard]
    assert torch.equal(y[:40][own == 0], torch.ones_like(own[own == 0]))
    assert torch.equal(y[:40][own == 1], torch.zeros_like(own[own == 1]))
    assert set(y[40:].tolist()) == {0, 1}
    assert torch.equal(x[40:][y[40:] == 1], digits.x_train[digits.y_train == 0])


def test_backdoor_marks_every_sample_with_the_trigger_and_the_target_label(digits):
    x, y = make_attack("backdoor").training_data(digits, torch.arange(30))
    corner = trigger_features(64)
    assert corner == [0, 1, 2, 8, 9, 10, 16, 17, 18]
    assert (x[:, corner] == 3.0).all() and (y == TARGET).all()
    assert torch.equal(x[:, 3:8], digits.x_train[:30, 3:8])
    assert trigger_features(60) == list(range(9))


def learner(node_id, data, shard, model, *, attack=None, mixing="average", init="shared"):
    """``make_learner`` for dsgd, seed 0 and the schema's defaults for everything else."""
    rule = MixingSection(name=mixing, init=init)
    return make_learner(node_id, data=data, shard=shard, model=model,
                        train=AlgorithmSection().train_config(),
                        algorithm=resolve_algorithm("dsgd"), seed=0, hidden=ModelSection().hidden,
                        mixing=rule.name, mixing_options=rule.options(), init=rule.init,
                        attack=attack)


def test_model_attacks_poison_what_is_sent_and_not_the_model(digits):
    signs = learner(0, digits, torch.arange(50), "logreg",
                    attack=make_attack("sign-flip", scale=2.0))
    assert torch.equal(signs.outgoing(), -2.0 * signs.params)
    noisy = learner(0, digits, torch.arange(50), "logreg", attack=make_attack("noise"))
    sent = noisy.outgoing()
    assert 80 < float((sent - noisy.params).std()) < 120
    honest = learner(0, digits, torch.arange(50), "logreg", mixing="clipped-gossip")
    assert honest.outgoing() is honest.params and isinstance(honest.rule, ClippedGossip)


def test_sybil_noise_gives_every_identity_its_own_noise_around_the_shared_model(digits):
    attack = make_attack("sybil-noise", scale=0.5)
    assert attack.per_identity and make_attack("sybil-noise").strength == 0.01
    adversary = learner(30, digits, torch.arange(50), "logreg", attack=attack)
    sent = attack.identity_vectors(adversary, [30, 31, 32], round_index=0)
    assert sorted(sent) == [30, 31, 32]
    base = adversary.params
    for v in sent.values():
        assert 0.45 < float((v - base).std()) < 0.55
    assert not torch.equal(sent[30], sent[31]) and not torch.equal(sent[31], sent[32])
    again = attack.identity_vectors(adversary, [30, 31, 32], round_index=0)
    assert not torch.equal(again[30], sent[30])  # fresh noise every gossip step
    with pytest.raises(ValueError, match="identity_vectors"):
        adversary.outgoing()  # the one-vector path would give every identity the same noise


def test_sybil_slices_train_disjoint_slices_from_one_model(digits):
    attack = make_attack("sybil-slices", slices=2)
    adversary = learner(30, digits, torch.arange(50), "logreg", attack=attack)
    poisoned = len(adversary.trainer.y)
    start = adversary.params.clone()
    identities = [30, 31, 32]
    before = attack.identity_vectors(adversary, identities, round_index=0)
    assert all(torch.equal(v, start) for v in before.values())  # nothing trained yet
    loss = attack.local_update(adversary, identities, round_index=0)
    assert loss > 0
    from node.learning.attacks import _SLICES
    trainers = _SLICES[adversary]["trainers"]
    assert len(trainers) == 2 and sum(len(t.y) for t in trainers) == poisoned
    rows = torch.cat([t.x for t in trainers])
    assert torch.equal(rows.sort(dim=0).values, adversary.trainer.x.sort(dim=0).values)
    sent = attack.identity_vectors(adversary, identities, round_index=0)
    assert torch.equal(sent[30], sent[32]) and not torch.equal(sent[30], sent[31])
    assert not torch.equal(sent[30], start)
    assert torch.allclose(adversary.params, (sent[30] + sent[31]) / 2)  # it keeps their mean
    one_each = make_attack("sybil-slices")
    other = learner(31, digits, torch.arange(50), "logreg", attack=one_each)
    one_each.local_update(other, identities, round_index=0)
    assert len(_SLICES[other]["trainers"]) == 3


@pytest.mark.parametrize("settings, message", [
    ({"attack": "sybil-noise", "adversaries": 2}, "sybil-noise is an attack of Sybil identities"),
    ({"attack": "sybil-slices"}, "sybil-slices is an attack of Sybil identities"),
    ({"attack": "label-flip", "phi": 1.0, "slices": 2}, "slices applies to sybil-slices only"),
    ({"attack": "sybil-slices", "phi": 1.0, "attack_scale": 0.1}, "sybil-slices has no scale"),
])
def test_evasive_sybil_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig.of(nodes=10, **settings)
    config = SimConfig.of(nodes=10, attack="sybil-slices", phi=1.0, slices=3)
    assert config.attack.attack() == make_attack("sybil-slices", slices=3)
    with pytest.raises(ValueError, match="slices applies to sybil-slices only"):
        make_attack("noise", slices=2)


class Constant(torch.nn.Module):
    def __init__(self, label):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(10))
        self.bias.data[label] = 1.0

    def forward(self, x):
        return self.bias.expand(len(x), 10)


def test_attack_success_rates(digits):
    from node.learning.model import FlatModel

    always_target = FlatModel(Constant(TARGET))
    x, y = digits.x_test, digits.y_test
    assert make_attack("backdoor").success(always_target, x, y) == 1.0
    flip = make_attack("label-flip").success(always_target, x, y)
    zeros, ones = int((y == 0).sum()), int((y == 1).sum())
    assert flip == pytest.approx(zeros / (zeros + ones))  # every 0 said to be a 1
    error = make_attack("noise").success(always_target, x, y)
    assert error == pytest.approx(1 - ones / len(y))
    triggered = add_trigger(x)
    assert torch.equal(triggered[:, 3:8], x[:, 3:8]) and (triggered[:, 0] == 3.0).all()


def test_independent_inits_differ_and_shared_ones_agree(digits):
    shared = [learner(i, digits, torch.arange(10), "mlp") for i in range(2)]
    own = [learner(i, digits, torch.arange(10), "mlp", init="independent") for i in range(2)]
    assert torch.equal(shared[0].params, shared[1].params)
    assert not torch.equal(own[0].params, own[1].params)


def test_monna_dampened_momentum_is_the_spec_polyak_average():
    x = torch.zeros(3, dtype=torch.float64)
    buf = torch.zeros(3, dtype=torch.float64)
    g1, g2 = torch.tensor([1.0, 2, 3], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    beta, lr = 0.9, 0.5
    sgd_step(x, g1, buf, lr=lr, momentum=beta, weight_decay=0.0, dampening=beta)
    sgd_step(x, g2, buf, lr=lr, momentum=beta, weight_decay=0.0, dampening=beta)
    m1 = (1 - beta) * g1
    m2 = beta * m1 + (1 - beta) * g2
    assert torch.allclose(buf, m2) and torch.allclose(x, -lr * (m1 + m2))


def test_choose_adversaries_is_seeded_and_checked():
    assert choose_adversaries(10, 3, 5) == choose_adversaries(10, 3, 5)
    assert len(set(choose_adversaries(10, 3, 5))) == 3
    with pytest.raises(ValueError, match=r"\[attack\] adversaries must be in"):
        choose_adversaries(4, 4, 0)


# -- the spread rule --------------------------------------------------------------------------

def honest_graph(n=30):
    return T.cap_degree(T.build_graph("random-geometric", n, seed=2, radius=0.3), 5, seed=1)


def test_cap_degree_caps_and_keeps_the_graph_connected():
    g = T.build_graph("random-geometric", 40, seed=3, radius=0.35)
    capped = T.cap_degree(g, 4, seed=0)
    assert nx.is_connected(capped) and set(capped.edges) <= set(g.edges)
    over = [v for v in capped if capped.degree[v] > 4]
    # only bridges keep a node above the cap
    assert all(any(nx.has_path(capped.subgraph(set(capped) - {v}), a, b) is False
                   for a in capped.neighbors(v) for b in capped.neighbors(v) if a < b)
               for v in over)


@pytest.mark.parametrize("phi, sybils", [(1, None), (1, 3), (2, 5), (0.5, 2), (1.5, 4)])
def test_spread_rule_gives_phi_attack_edges_per_honest_node(phi, sybils):
    g = honest_graph()
    attacked, ids = T.attach_sybils(g, phi, sybils, seed=0)
    assert ids == list(range(30, 30 + len(ids)))
    if sybils is not None:
        assert len(ids) == sybils
    else:
        assert len(ids) == 5  # ceil(30 / 7)
    per_node = [sum(1 for v in attacked.neighbors(i) if v >= 30) for i in range(30)]
    assert sum(per_node) == round(phi * 30)
    assert set(per_node) <= {int(phi), int(phi) + 1}
    assert all(not attacked.has_edge(a, b) for a in ids for b in ids)
    assert nx.is_isomorphic(attacked.subgraph(range(30)), g)


def test_spread_rule_errors_name_the_argument():
    with pytest.raises(T.TopologyError, match="sybils must be in"):
        T.attach_sybils(honest_graph(), 2, sybils=1)
    with pytest.raises(T.TopologyError, match="phi must be > 0"):
        T.attach_sybils(honest_graph(), 0)


# -- the simulator under attack ---------------------------------------------------------------

def sybil_config(mixing, **kw):
    base = dict(nodes=20, topology="random-geometric", radius=0.35, model="logreg",
                partition="dirichlet", alpha=0.3, algorithm="dfedavg", rounds=20,
                attack="label-flip", phi=2.0, mixing=mixing, seed=1, final_merge=False)
    return SimConfig.of(**{**base, **kw})


@pytest.mark.slow
def test_every_sybil_identity_sends_the_adversary_model_and_sybilwall_resists():
    sim = Simulation.from_config(sybil_config("average"))
    identities = [v for v, k in sim.owner.items() if k == 20]
    assert len(identities) == 6 and sim.honest == list(range(20))
    plain = sim.run()
    wall = Simulation.from_config(sybil_config("sybilwall")).run()
    assert 0 <= wall["attack_success"] <= 1 and "attack_success" in plain
    assert wall["attack_success"] < plain["attack_success"] - 0.4
    assert wall["adversaries"] == identities


def test_sybilwall_gossips_histories_from_beyond_one_hop():
    sim = Simulation.from_config(sybil_config("sybilwall", rounds=4))
    sim.run()
    rule = sim.learners[0].rule
    assert isinstance(rule, SybilWall)
    assert any(r.distance > 1 for r in rule.records.values())
    foolsgold = Simulation.from_config(sybil_config("foolsgold", rounds=4))
    foolsgold.run()
    assert all(r.distance == 1 for r in foolsgold.learners[0].rule.records.values())
    assert sim.traffic.messages > foolsgold.traffic.messages


@pytest.mark.slow
def test_clipped_gossip_survives_noise_that_breaks_plain_averaging(tmp_path):
    common = ["--nodes", "12", "--topology", "ring", "--algorithm", "dfedavg", "--rounds", "10",
              "--attack", "noise", "--adversaries", "2", "--quiet", "--model", "logreg"]
    assert main(common + ["--out", str(tmp_path / "avg")]) == 0
    assert main(common + ["--mixing", "clipped-gossip", "--out", str(tmp_path / "clip")]) == 0
    avg = json.loads((tmp_path / "avg" / "summary.json").read_text())
    clip = json.loads((tmp_path / "clip" / "summary.json").read_text())
    assert clip["mean_acc"] > avg["mean_acc"] + 0.1
    rows = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").open()]
    assert all("attack_success" in r for r in rows)
    assert clip["adversaries"] == choose_adversaries(12, 2, derive_seed(0, "adversaries"))
    assert "0" in clip["node_accuracy"] and str(clip["adversaries"][0]) not in \
        clip["node_accuracy"]


@pytest.mark.parametrize("argv, message", [
    (["--attack", "noise"], "[attack] say where the adversaries are"),
    (["--adversaries", "2"], "[attack] adversaries/sybils/phi/scale need kind (--attack"),
    (["--attack", "noise", "--adversaries", "2", "--phi", "1"], "[attack] give either "
     "adversaries K or sybils S with phi PHI, not both"),
    (["--attack", "poison", "--adversaries", "1"], "[attack] kind: unknown 'poison'; valid: "
     "label-flip"),
    (["--mixing", "mean"], "[mixing] name: unknown 'mean'; valid: average"),
    (["--attack", "noise", "--sybils", "3", "--adversaries", "1"], "[attack] sybils needs phi"),
    (["--dampening", "1.0"], "[algorithm] dampening: must be < 1"),
    (["--init", "random"], "[mixing] init: unknown 'random'; valid: shared, independent"),
])
def test_bad_attack_and_mixing_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


# -- the real peer uses the same rules --------------------------------------------------------

def attack_peer_configs(tmp_path, n, mixing, attack, adversaries, rounds):
    """Peers with a Dirichlet(0.5) shard each, logreg and dfedavg; ``attack`` on the
    ``adversaries``."""
    return [peer_config(i, n, tmp_path, rounds, model="logreg", algorithm="dfedavg",
                        final_merge=False, mixing=mixing,
                        **({"attack": attack} if i in adversaries else {}))
            for i in range(n)]


async def test_peers_under_attack_with_a_robust_rule_equal_the_simulator(tmp_path):
    n, rounds = 6, 3
    adversaries = choose_adversaries(n, 1, derive_seed(0, "adversaries"))
    configs = attack_peer_configs(tmp_path, n, "clipped-gossip", "sign-flip", adversaries, rounds)
    peers = await run_memory_network(T.ring(n), configs)
    sim = Simulation.from_config(SimConfig.of(
        nodes=n, topology="ring", rounds=rounds, partition="dirichlet", alpha=0.5, seed=0,
        model="logreg", algorithm="dfedavg", final_merge=False, mixing="clipped-gossip",
        attack="sign-flip", adversaries=1))
    sim.run()
    assert [p.id for p in peers if p.learner.attack] == adversaries
    for peer, learner in zip(peers, sim.learners, strict=True):
        assert type(peer.learner.rule) is type(learner.rule)
        assert torch.allclose(peer.learner.params, learner.params, atol=1e-6)


async def test_sybilwall_peers_gossip_histories_over_the_wire(tmp_path):
    configs = attack_peer_configs(tmp_path, 4, "sybilwall", None, [], rounds=3)
    peers = await run_memory_network(T.ring(4), configs)
    records = peers[0].learner.rule.records
    assert 2 in records and records[2].distance == 2  # the peer opposite on the ring


def test_peer_config_mixing_and_attack_sections_are_checked():
    with pytest.raises(ConfigError, match=r"\[mixing\] name: unknown 'mean'"):
        PeerConfig.from_table({"peer": {"id": 0}, "mixing": {"name": "mean"}})
    with pytest.raises(ConfigError, match=r"\[attack\] kind: unknown"):
        PeerConfig.from_table({"peer": {"id": 0}, "attack": {"kind": "evil"}})
    config = PeerConfig.from_table({"peer": {"id": 0},
                                    "mixing": {"name": "krum", "byzantine_f": 2}})
    assert config.mixing.options()["f"] == 2


def test_launcher_places_the_simulators_adversaries_and_refuses_sybils(tmp_path):
    s = LaunchConfig.of(nodes=6, attack="noise", adversaries=2, mixing="median")
    configs = s.peer_configs([("127.0.0.1", 9000 + i) for i in range(6)], tmp_path)
    chosen = [c.peer.id for c in configs if c.attack.kind == "noise"]
    assert chosen == choose_adversaries(6, 2, derive_seed(0, "adversaries"))
    assert all(c.mixing.name == "median" for c in configs)
    # Sybil identities exist in the simulator only: a launch config refuses phi (and sybils)
    with pytest.raises(ConfigError, match=r"\[attack\] phi does not apply to scripts/launch.py "
                       r"\(only to python -m sim\)"):
        LaunchConfig.from_table({"graph": {"nodes": 6}, "attack": {"kind": "noise", "phi": 1.0}})
    with pytest.raises(ConfigError, match="setting 'phi' does not apply to scripts/launch.py"):
        LaunchConfig.of(nodes=6, attack="noise", phi=1.0)


def test_max_degree_caps_the_simulated_graph():
    sim = Simulation.from_config(SimConfig.of(nodes=30, topology="random-geometric",
                                              radius=0.4, max_degree=4, rounds=1))
    graph = sim.topology.graph_at(0)
    assert nx.is_connected(graph)
    wide = Simulation.from_config(SimConfig.of(nodes=30, topology="random-geometric",
                                               radius=0.4, rounds=1)).topology.graph_at(0)
    assert max(d for _, d in graph.degree) < max(d for _, d in wide.degree)
