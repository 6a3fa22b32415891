import pytest
import torch
import torch.nn.functional as F

from node.config import DataSection
from node.learning import (
    BatchSampler,
    build_model,
    derive_seed,
    partition,
    resolve_algorithm,
    sam_gradient,
    sgd_step,
)
from sim import SimConfig, Simulation
from tests.helpers import digits_data


def test_module_parameters_and_grads_are_views_into_the_flat_vectors():
    model = build_model("cnn", in_features=64, num_classes=10, seed=0)
    params = list(model.module.parameters())
    assert model.size == sum(p.numel() for p in params)
    model.params.fill_(0.5)
    assert all(bool((p == 0.5).all()) for p in params)
    x, y = torch.randn(7, 64), torch.randint(0, 10, (7,))
    expected = torch.autograd.grad(F.cross_entropy(model.module(x), y), params)
    model.grad.zero_()
    F.cross_entropy(model.module(x), y).backward()
    assert torch.allclose(model.grad, torch.cat([g.reshape(-1) for g in expected]))
    for s, p in zip(model.layout, params):
        assert model.params[s.start:s.stop].data_ptr() == p.data_ptr()


def test_same_init_seed_same_model_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("mlp", in_features=64, num_classes=10, seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    same = build_model("mlp", in_features=64, num_classes=10, seed=5)
    other = build_model("mlp", in_features=64, num_classes=10, seed=6)
    assert torch.equal(a.params, same.params)
    assert not torch.equal(a.params, other.params)


def test_flat_sgd_matches_torch_optim_sgd_with_momentum_and_weight_decay():
    flat = build_model("mlp", in_features=64, num_classes=10, seed=1)
    ref = build_model("mlp", in_features=64, num_classes=10, seed=1)
    opt = torch.optim.SGD(ref.module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    buf = torch.zeros_like(flat.params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(8, 64, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        flat.grad.zero_()
        F.cross_entropy(flat.module(x), y).backward()
        with torch.no_grad():
            sgd_step(flat.params, flat.grad, buf, lr=0.1, momentum=0.9, weight_decay=1e-2)
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(ref.module(x), y).backward()
        opt.step()
    assert torch.allclose(flat.params, ref.params, atol=1e-6)


def test_sam_step_on_a_quadratic_matches_the_closed_form():
    a = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x, grad = x0.clone(), torch.zeros(2, dtype=torch.float64)

    def compute():
        grad.copy_(a @ x)
        return float(0.5 * x @ a @ x)

    rho, lr = 0.1, 0.05
    loss = sam_gradient(x, grad, compute, rho=rho)
    assert torch.equal(x, x0)  # restored exactly
    assert loss == pytest.approx(float(0.5 * x0 @ a @ x0))
    g = a @ x0
    expected_grad = a @ (x0 + rho * g / g.norm())
    assert torch.allclose(grad, expected_grad, atol=1e-12)
    sgd_step(x, grad, torch.zeros(2, dtype=torch.float64), lr=lr, momentum=0.0,
             weight_decay=0.0)
    assert torch.allclose(x, x0 - lr * expected_grad, atol=1e-12)


def test_sam_with_rho_zero_is_a_plain_gradient():
    x, grad = torch.tensor([2.0]), torch.zeros(1)
    calls = []

    def compute():
        calls.append(1)
        grad.copy_(2 * x)
        return 0.0

    sam_gradient(x, grad, compute, rho=0.0)
    assert len(calls) == 1 and grad.item() == 4.0


def test_batch_sampler_covers_an_epoch_and_resumes_from_its_state():
    sampler = BatchSampler(10, 3, seed=4)
    epoch = torch.cat([sampler.next() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9
    state = sampler.state_dict()
    following = [sampler.next() for _ in range(4)]
    clone = BatchSampler(10, 3, seed=99)
    clone.load_state_dict(state)
    assert all(torch.equal(a, clone.next()) for a in following)


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_algorithm("dsgd", rho=0.1), "rho = 0.1 does not apply to dsgd"),
    (lambda: resolve_algorithm("dfedsam", gossip_steps=3), "gossip_steps = 3"),
    (lambda: resolve_algorithm("adam"), "valid: dsgd, dfedavg, dfedsam, dfedsam-mgs"),
    (lambda: resolve_algorithm("dfedavg", local_steps=0), "local_steps must be >= 1"),
])
def test_algorithm_resolution_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_algorithms_compose_the_same_parts():
    assert resolve_algorithm("dsgd") == resolve_algorithm("dsgd", local_steps=1)
    mgs = resolve_algorithm("dfedsam-mgs")
    assert (mgs.local_steps, mgs.rho, mgs.gossip_steps) == (5, 0.05, 4)
    assert resolve_algorithm("dfedavg", local_steps=3).rho == 0.0


def run_sim(**overrides):
    config = SimConfig.of(**{"nodes": 6, "rounds": 4, "partition": "dirichlet", "alpha": 0.5,
                          "seed": 3, **overrides})
    sim = Simulation.from_config(config)
    summary = sim.run()
    return sim, summary


def test_rho_zero_and_one_gossip_step_reproduce_dfedavg_bit_for_bit():
    ref, _ = run_sim(algorithm="dfedavg", local_steps=3, final_merge=False)
    for overrides in ({"algorithm": "dfedsam-mgs", "rho": 0.0, "gossip_steps": 1},
                      {"algorithm": "dfedsam", "rho": 0.0}):
        other, _ = run_sim(local_steps=3, final_merge=False, **overrides)
        for a, b in zip(ref.learners, other.learners):
            assert torch.equal(a.params, b.params)
    sam, _ = run_sim(algorithm="dfedsam", local_steps=3, rho=0.05, final_merge=False)
    assert not torch.equal(sam.learners[0].params, ref.learners[0].params)


def test_dfedsam_equals_dfedsam_mgs_with_one_gossip_step():
    a, _ = run_sim(algorithm="dfedsam", local_steps=2, final_merge=False)
    b, _ = run_sim(algorithm="dfedsam-mgs", local_steps=2, gossip_steps=1, final_merge=False)
    assert all(torch.equal(x.params, y.params) for x, y in zip(a.learners, b.learners))


def test_dsgd_on_the_complete_graph_is_centralized_minibatch_sgd():
    seed, nodes, rounds = 11, 4, 6
    config = SimConfig.of(nodes=nodes, rounds=rounds, topology="complete", algorithm="dsgd",
                          partition="iid", seed=seed, lr=0.1, lr_decay=0.9, momentum=0.9,
                          weight_decay=1e-3, batch_size=8, final_merge=False)
    sim = Simulation.from_config(config)
    sim.run()

    data = digits_data()
    parts = partition(data, DataSection(partition="iid"), num_nodes=nodes, seed=seed)
    samplers = [BatchSampler(len(p), 8, derive_seed(seed, "batches", i))
                for i, p in enumerate(parts)]
    central = build_model("mlp", in_features=64, num_classes=10, seed=derive_seed(seed, "init"))
    opt = torch.optim.SGD(central.module.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for t in range(rounds):
        for group in opt.param_groups:
            group["lr"] = 0.1 * 0.9 ** t
        batch = torch.cat([torch.as_tensor(p)[s.next()] for p, s in zip(parts, samplers)])
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(central.module(data.x_train[batch]), data.y_train[batch]).backward()
        opt.step()
    for learner in sim.learners:
        assert torch.allclose(learner.params, central.params, atol=1e-5)
    initial = build_model("mlp", in_features=64, num_classes=10, seed=derive_seed(seed, "init"))
    assert not torch.allclose(central.params, initial.params)
