"""The fused GGNN gate ops (kern_d2.layers.ggnn_gates) against the PyTorch form of the same equations."""
import itertools
import math

import pytest
import torch

from kern_d2.layers.ggnn_gates import ggnn_blend, ggnn_gates
from kern_d2.layers.compiled_ops import load_ops
from kern_d2.modeling.ggnn import GatedGraphUpdate
from kern_d2.modeling.relation_routing import RelationRouting

R, K, D = 3, 4, 5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference_gates(state_zr, message_zr, h, scale):
    """z, r * h by the equations, broadcasting [R, 1, .] inputs over the K nodes."""
    message = message_zr[:, None, :] if scale is None else scale[:, :, None] * message_zr[:, None, :]
    z, r = torch.sigmoid(state_zr + message).chunk(2, dim=-1)
    return z.expand(-1, K, -1), (r * h).expand(-1, K, -1)


def reference_blend(state_h, message_h, z, h, scale):
    message = message_h[:, None, :] if scale is None else scale[:, :, None] * message_h[:, None, :]
    candidate = torch.tanh(state_h + message)
    return h + z * (candidate - h)


def gate_inputs(state_rows, h_rows, with_scale, dtype=torch.float64, device="cpu", dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)

    def make(*shape, uniform=False):
        t = torch.rand(*shape, generator=g, dtype=torch.float64) if uniform else \
            torch.randn(*shape, generator=g, dtype=torch.float64)
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    return {
        "state_zr": make(R, state_rows, 2 * dim),
        "message_zr": make(R, 2 * dim),
        "h": make(R, h_rows, dim),
        "scale": make(R, K, uniform=True) if with_scale else None,
        "state_h": make(R, K, dim),
        "message_h": make(R, dim),
        "z": make(R, K, dim, uniform=True),
    }


LAYOUTS = list(itertools.product([K, 1], [K, 1], [True, False]))  # state rows, h rows, scale


@pytest.mark.parametrize("state_rows,h_rows,with_scale", LAYOUTS)
def test_forward_matches_equations(state_rows, h_rows, with_scale):
    x = gate_inputs(state_rows, h_rows, with_scale)
    z, reset_h = ggnn_gates(x["state_zr"], x["message_zr"], x["h"], x["scale"], num_nodes=K)
    expected_z, expected_reset_h = reference_gates(x["state_zr"], x["message_zr"], x["h"], x["scale"])
    torch.testing.assert_close(z, expected_z, rtol=0, atol=1e-14)
    torch.testing.assert_close(reset_h, expected_reset_h, rtol=0, atol=1e-14)
    out = ggnn_blend(x["state_h"], x["message_h"], x["z"], x["h"], x["scale"])
    expected = reference_blend(x["state_h"], x["message_h"], x["z"], x["h"], x["scale"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_values_by_hand():
    # One pair, two nodes sharing S, D = 1: S_z = 0 and S_r = ln 4 with M = 0 give z = 1/2 and r = 4/5.
    state = torch.tensor([[[0.0, math.log(4.0)]]])
    z, reset_h = ggnn_gates(state, torch.zeros(1, 2), torch.tensor([[[2.0], [10.0]]]), num_nodes=2)
    torch.testing.assert_close(z, torch.full((1, 2, 1), 0.5))
    torch.testing.assert_close(reset_h, torch.tensor([[[1.6], [8.0]]]))
    # Blend: S_h = 0 and M_h = atanh(1/2) scaled by s = (2, 0): c = tanh(2 atanh(1/2)) = 4/5 and 0.
    message = torch.tensor([[0.5]]).atanh()
    out = ggnn_blend(torch.zeros(1, 2, 1), message, torch.full((1, 2, 1), 0.25), torch.tensor([[[0.4]]]),
                     torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[[0.4 + 0.25 * 0.4], [0.4 - 0.25 * 0.4]]]))


@pytest.mark.parametrize("state_rows,h_rows,with_scale", LAYOUTS)
def test_gradcheck(state_rows, h_rows, with_scale):
    x = gate_inputs(state_rows, h_rows, with_scale)
    inputs = (x["state_zr"], x["message_zr"], x["h"], x["scale"])
    assert torch.autograd.gradcheck(lambda *a: ggnn_gates(*a, num_nodes=K), inputs)
    inputs = (x["state_h"], x["message_h"], x["z"], x["h"], x["scale"])
    assert torch.autograd.gradcheck(ggnn_blend, inputs)


def test_blend_weighted_sum():
    x = gate_inputs(K, 1, True)
    out, sums = ggnn_blend(x["state_h"], x["message_h"], x["z"], x["h"], x["scale"], weighted_sum=True)
    expected = reference_blend(x["state_h"], x["message_h"], x["z"], x["h"], x["scale"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(sums, (x["scale"][:, :, None] * expected).sum(dim=1), rtol=0, atol=1e-14)

    def both(*args):
        return ggnn_blend(*args, weighted_sum=True)

    assert torch.autograd.gradcheck(both, (x["state_h"], x["message_h"], x["z"], x["h"], x["scale"]))
    with pytest.raises(ValueError, match="weighted_sum needs the per-node scale"):
        ggnn_blend(x["state_h"], x["message_h"], x["z"], x["h"], None, weighted_sum=True)


def test_messages_may_be_column_slices():
    # The model passes column slices of one [R, 3D] tensor of message terms (row stride 3D), read in place.
    x = gate_inputs(K, K, True)
    terms = torch.cat([x["message_zr"], x["message_h"]], dim=1).detach().requires_grad_(True)

    def update(message_terms, message_zr=None, message_h=None):
        message_zr = message_terms[:, : 2 * D] if message_zr is None else message_zr
        message_h = message_terms[:, 2 * D :] if message_h is None else message_h
        z, reset_h = ggnn_gates(x["state_zr"], message_zr, x["h"], x["scale"], num_nodes=K)
        return ggnn_blend(x["state_h"] + reset_h, message_h, z, x["h"], x["scale"])

    assert not terms[:, : 2 * D].is_contiguous()
    torch.testing.assert_close(update(terms), update(None, x["message_zr"], x["message_h"]), rtol=0, atol=0)
    assert torch.autograd.gradcheck(update, (terms,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_float(dtype):
    x = gate_inputs(1, K, True, dtype=dtype, dim=16)
    z, reset_h = ggnn_gates(x["state_zr"], x["message_zr"], x["h"], x["scale"], num_nodes=K)
    assert z.dtype == dtype
    as_float = {k: None if v is None else v.float() for k, v in x.items()}
    expected_z, expected_reset_h = reference_gates(as_float["state_zr"], as_float["message_zr"], as_float["h"],
                                                   as_float["scale"])
    torch.testing.assert_close(z.float(), expected_z, rtol=0, atol=1e-2)  # one rounding of the result
    torch.testing.assert_close(reset_h.float(), expected_reset_h, rtol=1e-2, atol=1e-2)


def test_mixed_dtypes_are_promoted():
    x = gate_inputs(K, K, True, dtype=torch.float32)
    z, _ = ggnn_gates(x["state_zr"].bfloat16(), x["message_zr"], x["h"], x["scale"].double(), num_nodes=K)
    assert z.dtype == torch.float64


def test_no_grad_keeps_no_saved_state():
    x = gate_inputs(K, K, True, dtype=torch.float32)
    ops = load_ops()
    args = [x["state_zr"].detach(), x["message_zr"].detach(), x["scale"].detach(), x["h"].detach()]
    _, _, reset = ops.ggnn_gates(*args, K, False)
    assert reset.numel() == 0
    _, candidate, sums = ops.ggnn_blend(x["state_h"].detach(), x["message_h"].detach(), None, x["z"].detach(),
                                        x["h"].detach(), False, False)
    assert candidate.numel() == 0 and sums.numel() == 0


def test_empty_groups():
    x = gate_inputs(K, K, True, dtype=torch.float32)
    empty = {k: None if v is None else v[:0] for k, v in x.items()}
    z, reset_h = ggnn_gates(empty["state_zr"], empty["message_zr"], empty["h"], empty["scale"], num_nodes=K)
    assert z.shape == (0, K, D)
    (z.sum() + reset_h.sum()).backward()
    assert x["scale"].grad.shape == (R, K) and x["scale"].grad.abs().sum() == 0


def test_invalid_shapes_name_the_argument():
    x = gate_inputs(K, K, True, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"ggnn_gates: message_zr must be \[3, 10\]"):
        ggnn_gates(x["state_zr"], x["message_zr"][:, :4], x["h"], x["scale"], num_nodes=K)
    with pytest.raises(RuntimeError, match=r"ggnn_gates: scale must be \[3, 4\]"):
        ggnn_gates(x["state_zr"], x["message_zr"], x["h"], x["scale"][:, :2], num_nodes=K)
    with pytest.raises(RuntimeError, match=r"ggnn_blend: h must be \[3, 4 or 1, 5\]"):
        ggnn_blend(x["state_h"], x["message_h"], x["z"], x["h"][:, :2], x["scale"])
    with pytest.raises(RuntimeError, match="the reset gates were not saved"):
        ops = load_ops()
        z = x["z"].detach()
        ops._ggnn_gates_backward(z, z, z, z.new_empty(0), x["message_zr"].detach(), None, x["h"].detach(), False)


@pytest.mark.parametrize("op,save", [("ggnn_gates", (True,)), ("ggnn_gates", (False,)), ("ggnn_blend", (True, True)),
                                     ("ggnn_blend", (False, False)), ("ggnn_blend", (True, False))])
def test_opcheck(op, save):
    # The outputs not asked for are empty tensors: opcheck's schema test fails if they alias each other.
    x = gate_inputs(1, 1, True, dtype=torch.float32)
    if op == "ggnn_gates":
        args = (x["state_zr"], x["message_zr"], x["scale"], x["h"], K) + save
    else:
        args = (x["state_h"], x["message_h"], x["scale"], x["z"], x["h"]) + save
    # Without the saved tensors the backward cannot run (those calls are for no_grad): no autograd checks then.
    checks = {} if all(save) else {"test_utils": ("test_schema", "test_faketensor")}
    torch.library.opcheck(getattr(load_ops(), op).default, args, **checks)


def make_routing(gate_impl, dtype=torch.float64):
    torch.manual_seed(0)
    module = RelationRouting(6, 9, 5, hidden_dim=8, output_dim=7, num_steps=3, gate_impl=gate_impl).to(dtype)
    with torch.no_grad():
        module.update.gate_bias.uniform_(-0.5, 0.5)
    return module


def routing_inputs(num_pairs=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(num_pairs, n, generator=g, dtype=dtype) for n in (6, 6, 9)]
    return args + [torch.softmax(torch.randn(num_pairs, 5, generator=g, dtype=dtype), dim=1)]


def test_relation_routing_fused_equals_eager_with_gradients():
    fused, eager = make_routing("fused"), make_routing("eager")
    results = []
    for module in (fused, eager):
        args = [a.requires_grad_(True) for a in routing_inputs()]
        out = module(*args)
        out.square().sum().backward()
        results.append([out] + [a.grad for a in args] + [p.grad for p in module.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_relation_routing_fused_traces_with_torch_compile():
    module = make_routing("fused", dtype=torch.float32)
    args = routing_inputs(dtype=torch.float32)
    expected = module(*args)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), expected)


def test_unknown_gate_impl():
    with pytest.raises(ValueError, match="RelationRouting: gate_impl must be one of"):
        make_routing("triton")
    with pytest.raises(ValueError, match="GatedGraphUpdate: gate_impl must be one of"):
        GatedGraphUpdate(4, 8, gate_impl="compile")  # compiling is the whole routing's business


@CUDA
@pytest.mark.parametrize("dtype,dim", [(torch.float32, 16), (torch.bfloat16, 16), (torch.float32, 5),
                                       (torch.float64, 12)])
@pytest.mark.parametrize("state_rows,h_rows,with_scale", LAYOUTS)
def test_cuda_matches_cpu(dtype, dim, state_rows, h_rows, with_scale):
    # dim 16 takes the 16-byte packed path, 5 the one-element path.
    results = []
    for device in ("cpu", "cuda"):
        x = gate_inputs(state_rows, h_rows, with_scale, dtype=dtype, device=device, dim=dim)
        z, reset_h = ggnn_gates(x["state_zr"], x["message_zr"], x["h"], x["scale"], num_nodes=K)
        out = ggnn_blend(x["state_h"], x["message_h"], x["z"], x["h"], x["scale"])
        loss = z.square().sum() + reset_h.sum() + out.square().sum()
        if with_scale:  # the weighted-sum kernels, with the message read from a column slice
            padded = torch.cat([x["message_h"], x["message_h"].new_zeros(R, 16)], dim=1)[:, :dim]  # row stride dim + 16
            out_sum, sums = ggnn_blend(x["state_h"], padded, x["z"], x["h"], x["scale"], weighted_sum=True)
            loss = loss + out_sum.sum() + sums.square().sum()
        loss.float().backward()
        grads = [v.grad for v in x.values() if v is not None]
        results.append([t.cpu().float() for t in [z, reset_h, out] + grads])
    tol = {torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
