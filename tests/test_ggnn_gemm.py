"""The Triton GEMM-epilogue kernels (kern_d2.layers.ggnn_gemm) against the PyTorch form of the same arithmetic.

On CUDA the compiled kernels run; without a GPU the same kernels run in Triton's interpreter on CPU tensors (fp32:
the interpreter has no bf16).
"""
import os

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("triton")

from kern_d2.layers import ggnn_gemm  # noqa: E402
from kern_d2.modeling.relation_routing import RelationRouting  # noqa: E402

SMALL_TILES = (16, 32, 16, 4, 1)  # many tiles on small inputs: pairs span tile borders


@pytest.fixture(scope="module")
def device():
    """CUDA when there is a GPU; else CPU, where conftest.py has chosen Triton's interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    return torch.device("cpu")


def reference_gates(h, weight, bias, message, scale):
    d = h.shape[-1]
    s = 1.0 if scale is None else scale[..., None]
    state = h @ weight.t() + bias
    z = torch.sigmoid(state[..., :d] + s * message[:, None, :d])
    r = torch.sigmoid(state[..., d:] + s * message[:, None, d : 2 * d])
    return z, r * h


def reference_blend(reset_h, weight, bias, message, z, h, scale):
    d = h.shape[-1]
    s = 1.0 if scale is None else scale[..., None]
    candidate = torch.tanh(reset_h @ weight.t() + bias + s * message[:, None, :d])
    return h + z * (candidate - h)


def make_inputs(device, pairs, nodes, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(pairs, nodes, dim, generator=g)
    messages = torch.randn(pairs, 3 * dim + 5, generator=g)  # W a terms in column slices, row stride 3D + 5
    scale = torch.rand(pairs, nodes, generator=g)
    w_zr, b_zr = torch.randn(2 * dim, dim, generator=g) / dim**0.5, torch.randn(2 * dim, generator=g)
    w_h, b_h = torch.randn(dim, dim, generator=g) / dim**0.5, torch.randn(dim, generator=g)
    return [t.to(device) for t in (h, messages, scale, w_zr, b_zr, w_h, b_h)]


@pytest.mark.parametrize("config", [None, SMALL_TILES])
@pytest.mark.parametrize("with_scale", [True, False])
def test_gates_gemm(device, config, with_scale):
    h, messages, scale, w_zr, b_zr, _, _ = make_inputs(device, pairs=9, nodes=7, dim=40)
    scale = scale if with_scale else None
    z, reset_h = ggnn_gemm.gates_gemm(h, w_zr, b_zr, messages[:, 3:], scale, config=config)
    ref_z, ref_reset_h = reference_gates(h, w_zr, b_zr, messages[:, 3:], scale)
    assert_close(z, ref_z, rtol=0, atol=1e-5)
    assert_close(reset_h, ref_reset_h, rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", [None, SMALL_TILES])
@pytest.mark.parametrize("shared_state", [False, True])
def test_blend_gemm_and_weighted_sum(device, config, shared_state):
    h, messages, scale, _, _, w_h, b_h = make_inputs(device, pairs=11, nodes=7, dim=40, seed=1)
    z, reset_h = torch.rand_like(h), torch.randn_like(h)
    if shared_state:  # one state per pair, as before the first step
        h = h[:, :1]
    h_new, sums = ggnn_gemm.blend_gemm(reset_h, w_h, b_h, messages[:, 7:], z, h, scale, weighted_sum=True,
                                       config=config)
    ref = reference_blend(reset_h, w_h, b_h, messages[:, 7:], z, h, scale)
    assert h_new.shape == (11, 7, 40)
    assert_close(h_new, ref, rtol=0, atol=1e-5)
    assert_close(sums, (scale[..., None] * ref).sum(dim=1), rtol=0, atol=1e-5)
    again = ggnn_gemm.blend_gemm(reset_h, w_h, b_h, messages[:, 7:], z, h, scale, weighted_sum=True, config=config)
    assert torch.equal(again[1], sums)  # at most two tiles add into a pair's sum: the order cannot matter


def test_blend_gemm_without_scale(device):
    h, messages, _, _, _, w_h, b_h = make_inputs(device, pairs=5, nodes=2, dim=24, seed=2)
    z, reset_h = torch.rand_like(h), torch.randn_like(h)
    h_new = ggnn_gemm.blend_gemm(reset_h, w_h, b_h, messages, z, h, None)
    assert_close(h_new, reference_blend(reset_h, w_h, b_h, messages, z, h, None), rtol=0, atol=1e-5)


def test_pair_bias_relu_gemm(device):
    g = torch.Generator().manual_seed(3)
    x, weight, pair_bias = torch.randn(6, 5, 33, generator=g), torch.randn(20, 33, generator=g), torch.randn(6, 20, generator=g)
    x, weight, pair_bias = x.to(device), weight.to(device), pair_bias.to(device)
    out = ggnn_gemm.pair_bias_relu_gemm(x, weight, pair_bias, config=SMALL_TILES)
    assert_close(out, torch.relu(x @ weight.t() + pair_bias[:, None]), rtol=0, atol=1e-5)
    assert (out == 0).any() and (out > 0).any()


def test_hand_values(device):
    # D = 1, one pair of two nodes, zero weights: the gates are sigmoid(bias + s m), the candidate tanh(b + s m).
    h = torch.tensor([[[2.0], [-1.0]]], device=device)
    zeros = torch.zeros(2, 1, device=device)
    message = torch.tensor([[1.0, 0.0, 0.5]], device=device)
    scale = torch.tensor([[0.0, 2.0]], device=device)
    z, reset_h = ggnn_gemm.gates_gemm(h, zeros, torch.zeros(2, device=device), message, scale)
    sig1 = 1 / (1 + torch.exp(torch.tensor(-2.0)))  # node 1: sigmoid(2 * 1)
    assert_close(z.flatten().cpu(), torch.tensor([0.5, sig1.item()]))
    assert_close(reset_h.flatten().cpu(), torch.tensor([0.5 * 2.0, 0.5 * -1.0]))
    h_new, sums = ggnn_gemm.blend_gemm(reset_h, zeros[:1], torch.zeros(1, device=device), message[:, 2:], z, h,
                                       scale, weighted_sum=True)
    expected = torch.tensor([2.0 + 0.5 * (0.0 - 2.0), -1.0 + sig1.item() * (torch.tanh(torch.tensor(1.0)).item() + 1.0)])
    assert_close(h_new.flatten().cpu(), expected)
    assert_close(sums.flatten().cpu(), (torch.tensor([0.0, 2.0]) * expected).sum().reshape(1))


def test_bad_message_raises(device):
    h, messages, scale, w_zr, b_zr, w_h, b_h = make_inputs(device, pairs=3, nodes=4, dim=8)
    with pytest.raises(ValueError, match=r"gates_gemm: message must be \[3, >= 16\]"):
        ggnn_gemm.gates_gemm(h, w_zr, b_zr, messages[:, :10], scale)
    with pytest.raises(ValueError, match="blend_gemm: the weighted sum needs a scale"):
        ggnn_gemm.blend_gemm(h, w_h, b_h, messages, h, h, None, weighted_sum=True)


def test_relation_routing_inference_matches_eager(device):
    """The whole routing with gate_impl "gemm_epilogue" under no_grad equals the PyTorch form; with gradients it
    runs the differentiable ops."""
    torch.manual_seed(0)
    eager = RelationRouting(6, 9, 5, hidden_dim=24, output_dim=7, num_steps=3, gate_impl="eager").to(device)
    gemm = RelationRouting(6, 9, 5, hidden_dim=24, output_dim=7, num_steps=3, gate_impl="gemm_epilogue").to(device)
    gemm.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(13, 6, generator=g), torch.randn(13, 6, generator=g), torch.randn(13, 9, generator=g),
              torch.softmax(torch.randn(13, 5, generator=g), dim=1)]
    inputs = [t.to(device) for t in inputs]
    assert not gemm.update.uses_gemm_epilogues(inputs[0])  # parameters require grad
    with torch.no_grad():
        assert gemm.update.uses_gemm_epilogues(inputs[0])
        assert_close(gemm(*inputs), eager(*inputs), rtol=0, atol=1e-5)
    gemm(*inputs).sum().backward()
    assert gemm.update.candidate.weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the interpreter has no bf16)")
def test_relation_routing_bf16_autocast_matches_fused():
    torch.manual_seed(0)
    fused = RelationRouting(64, 64, 51, hidden_dim=128, output_dim=64, gate_impl="fused").cuda()
    gemm = RelationRouting(64, 64, 51, hidden_dim=128, output_dim=64, gate_impl="gemm_epilogue").cuda()
    gemm.load_state_dict(fused.state_dict())
    inputs = [torch.randn(300, 64, device="cuda") for _ in range(3)] + [torch.softmax(torch.randn(300, 51, device="cuda"), 1)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out, ref = gemm(*inputs).float(), fused(*inputs).float()
    with torch.no_grad():
        exact = fused.float()(*inputs)
    # Both round to bf16 at different points; each is close to the fp32 result.
    assert (out - exact).abs().max() <= 2 * (ref - exact).abs().max() + 1e-2
