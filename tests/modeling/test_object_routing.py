"""ObjectRouting against a literal, loop-based implementation of the equations (tests/helpers/routing_reference.py)."""
import pytest
import torch

from kern_d2.modeling.object_routing import ObjectRouting

from tests.helpers.routing_reference import object_routing_literal

C, D = 5, 8


def make_routing(num_steps=3, released_code_gate=False, input_dim=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    module = ObjectRouting(input_dim, C, hidden_dim=D, output_dim=7, num_steps=num_steps,
                           released_code_gate=released_code_gate).to(dtype)
    with torch.no_grad():
        module.update.gate_bias.uniform_(-0.5, 0.5)  # zero at init: make the test see it
    return module


def inputs(num_objects, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(num_objects), 6, generator=g, dtype=dtype), torch.rand(C, C, generator=g)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_matches_literal_equations(num_steps):
    module = make_routing(num_steps)
    x, cooc = inputs([4])
    expected = object_routing_literal(module, x, [4], cooc)
    torch.testing.assert_close(module(x, [4], cooc), expected, rtol=0, atol=1e-5)


def test_per_object_reference_matches_per_edge_reference():
    # The benchmark's baseline (one matrix product per object pair) is the same function as the per-edge loops.
    module = make_routing()
    x, cooc = inputs([4, 2])
    torch.testing.assert_close(object_routing_literal(module, x, [4, 2], cooc, per_edge=False),
                               object_routing_literal(module, x, [4, 2], cooc), rtol=0, atol=1e-10)


def test_released_code_gate():
    x, cooc = inputs([4])
    released = make_routing(released_code_gate=True)
    expected = object_routing_literal(released, x, [4], cooc)
    torch.testing.assert_close(released(x, [4], cooc), expected, rtol=0, atol=1e-5)
    default = make_routing()
    with torch.no_grad():  # same weights except U_r, which the released code replaces by U_z
        for name, p in default.named_parameters():
            if name != "update.state_gates.weight":
                p.copy_(dict(released.named_parameters())[name])
        default.update.state_gates.weight[:D] = released.update.state_gates.weight
    assert (default(x, [4], cooc) - released(x, [4], cooc)).abs().max() > 1e-3
    with torch.no_grad():
        default.update.state_gates.weight[D:] = released.update.state_gates.weight
    torch.testing.assert_close(default(x, [4], cooc), released(x, [4], cooc), rtol=0, atol=1e-12)


def test_images_do_not_leak_into_each_other():
    module = make_routing()
    x, cooc = inputs([3, 4, 1])
    together = module(x, [3, 4, 1], cooc)
    alone = torch.cat([module(x[:3], [3], cooc), module(x[3:7], [4], cooc), module(x[7:], [1], cooc)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    # Objects of different images interleaved, given as an image-index vector.
    order = torch.tensor([7, 0, 3, 1, 4, 5, 2, 6])
    index = torch.tensor([2, 0, 1, 0, 1, 1, 0, 1])
    torch.testing.assert_close(module(x[order], index, cooc), together[order], rtol=0, atol=1e-12)
    torch.testing.assert_close(module(x[order], index, cooc, num_images=3), together[order], rtol=0, atol=1e-12)


def test_lonely_object_and_empty_batch():
    module = make_routing()
    x, cooc = inputs([1])
    torch.testing.assert_close(module(x, [1], cooc), object_routing_literal(module, x, [1], cooc), rtol=0, atol=1e-12)
    assert module(x[:0], [0], cooc).shape == (0, C)


def test_gradients_reach_every_parameter():
    module = make_routing(dtype=torch.float32)
    x, cooc = inputs([3, 2], dtype=torch.float32)
    x.requires_grad_(True)
    module(x, [3, 2], cooc).logsumexp(1).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu():
    module = make_routing(dtype=torch.float32)
    x, cooc = inputs([3, 2], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x, [3, 2], cooc)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), module(x, [3, 2], cooc), rtol=0, atol=0.05)


def test_bad_inputs():
    module = make_routing()
    x, cooc = inputs([4])
    with pytest.raises(ValueError, match=r"cooccurrence must be \[5, 5\]"):
        module(x, [4], cooc[:4, :4])
    with pytest.raises(ValueError, match="sum to 3, but there are 4 objects"):
        module(x, [1, 2], cooc)
    with pytest.raises(ValueError, match=r"obj_features must be \[N, 6\]"):
        module(x[:, :5], [4], cooc)
