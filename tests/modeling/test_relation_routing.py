"""RelationRouting against literal implementations of the equations (tests/helpers/routing_reference.py)."""
import copy

import pytest
import torch

from kern_d2.modeling.relation_routing import RelationRouting

from tests.helpers.routing_reference import relation_routing_batched, relation_routing_literal

P, D = 4, 8


def make_routing(num_steps=3, released_code_gate=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    module = RelationRouting(6, 9, P, hidden_dim=D, output_dim=7, num_steps=num_steps,
                             released_code_gate=released_code_gate).to(dtype)
    with torch.no_grad():
        module.update.gate_bias.uniform_(-0.5, 0.5)  # zero at init: make the test see it
    return module


def inputs(num_pairs, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    subj, obj = torch.randn(num_pairs, 6, generator=g, dtype=dtype), torch.randn(num_pairs, 6, generator=g, dtype=dtype)
    union = torch.randn(num_pairs, 9, generator=g, dtype=dtype)
    weights = torch.rand(num_pairs, P, generator=g, dtype=dtype)
    return subj, obj, union, weights / weights.sum(1, keepdim=True)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_matches_literal_equations(num_steps):
    module = make_routing(num_steps)
    args = inputs(3)
    torch.testing.assert_close(module(*args), relation_routing_literal(module, *args), rtol=0, atol=1e-5)


def test_batched_reference_matches_literal_loops():
    # The benchmark's baseline (adjacency bmm, six linear maps on all nodes) is the same function as the loops.
    module = make_routing()
    args = inputs(3)
    torch.testing.assert_close(relation_routing_batched(module, *args), relation_routing_literal(module, *args),
                               rtol=0, atol=1e-10)


def test_released_code_gate():
    args = inputs(3)
    released = make_routing(released_code_gate=True)
    torch.testing.assert_close(released(*args), relation_routing_literal(released, *args), rtol=0, atol=1e-5)
    default = make_routing()
    with torch.no_grad():  # same weights except U_r, which the released code replaces by U_z
        for name, p in default.named_parameters():
            if name != "update.state_gates.weight":
                p.copy_(dict(released.named_parameters())[name])
        default.update.state_gates.weight[:D] = released.update.state_gates.weight
    assert (default(*args) - released(*args)).abs().max() > 1e-3


def test_chunked_equals_unchunked_and_pairs_are_independent():
    module = make_routing()
    args = inputs(7)
    whole = module(*args)
    for chunk in (1, 3, 7, 100):
        torch.testing.assert_close(module(*args, chunk_size=chunk), whole, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        module(*args, chunk_size=0)
    assert module(*(a[:0] for a in args)).shape == (0, P)


def test_gradients_reach_every_parameter():
    module = make_routing(dtype=torch.float32)
    args = [a.requires_grad_(True) for a in inputs(5, dtype=torch.float32)]
    module(*args).logsumexp(1).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for a in args:
        assert a.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu():
    module = make_routing(dtype=torch.float32)
    args = inputs(5, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(*args, chunk_size=2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), module(*args), rtol=0, atol=0.05)


def test_gate_impl_compile_traces_the_whole_routing():
    # gate_impl "compile": the routing, gates in PyTorch ops, in one dynamo graph (aot_eager: autograd, no codegen).
    module = make_routing(dtype=torch.float32)
    args = inputs(3, dtype=torch.float32)
    expected = module(*args)
    module.compile_routing(backend="aot_eager", fullgraph=True)
    assert module.update.gate_impl == "auto"  # make_routing's default; "compile" modules build theirs "eager"
    out = module(*args)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert module.update.candidate.weight.grad is not None
    compiled = RelationRouting(6, 9, 4, hidden_dim=8, output_dim=7, gate_impl="compile")
    assert compiled.update.gate_impl == "eager" and compiled.gate_impl == "compile"
    copied = copy.deepcopy(module)  # the compiled function is left out and rebuilt at the next call
    assert copied._compiled_route is None and module._compiled_route is not None
    torch.testing.assert_close(copied(*args), expected)


def test_bad_shapes():
    module = make_routing()
    subj, obj, union, weights = inputs(3)
    with pytest.raises(ValueError, match=r"edge_weights must have shape \(3, 4\)"):
        module(subj, obj, union, weights[:, :3])
    with pytest.raises(ValueError, match=r"union_features must have shape \(3, 9\)"):
        module(subj, obj, union[:2], weights)
