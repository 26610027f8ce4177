"""Fused elementwise halves of a GGNN update (``torch.ops.kern_d2.ggnn_gates`` / ``ggnn_blend``), for nodes grouped
by pair where every node of a group receives the same message term times its own scale (KERN's relation routing).

With S the per-node state terms (bias included), M the group's message terms and s the per-node scale:

    ggnn_gates:  z = sigmoid(S_z + s M_z),  r = sigmoid(S_r + s M_r)      ->  z, r * h
    ggnn_blend:  c = tanh(S_h + s M_h)                                    ->  h' = h + z (c - h)

and, on request, ggnn_blend also returns sum_k s_k h'_k per group in the same pass (in KERN the message of the
subject and object nodes, with s the prior weights of the predicate nodes).

The unfused PyTorch form (:mod:`kern_d2.modeling.ggnn`) reads and writes every [R, K, D] intermediate several
times; the kernels read each input once and keep the arithmetic in registers (fp32 for half inputs). Both ops are
differentiable (hand-written backward kernels) and have fake kernels for ``torch.compile``.
"""
from typing import Optional, Tuple, Union

import torch

from .compiled_ops import fake_kernel, load_ops

__all__ = ["ggnn_gates", "ggnn_blend"]


@fake_kernel("kern_d2::ggnn_gates")
def _ggnn_gates_fake(state_zr, message_zr, scale, h, num_nodes, save_reset):
    out = h.new_empty((h.shape[0], num_nodes, h.shape[2]))
    reset = torch.empty_like(out) if save_reset else h.new_empty((0,))
    return out, torch.empty_like(out), reset


@fake_kernel("kern_d2::_ggnn_gates_backward")
def _ggnn_gates_backward_fake(grad_z, grad_reset_h, z, reset, message_zr, scale, h, state_broadcast):
    pairs, nodes, dim = z.shape
    grad_state = z.new_empty((pairs, 1 if state_broadcast else nodes, 2 * dim))
    grad_scale = torch.empty_like(scale) if scale is not None else z.new_empty((0,))
    return grad_state, message_zr.new_empty(message_zr.shape), grad_scale, torch.empty_like(h)


@fake_kernel("kern_d2::ggnn_blend")
def _ggnn_blend_fake(state_h, message_h, scale, z, h, save_candidate, weighted_sum):
    candidate = torch.empty_like(state_h) if save_candidate else state_h.new_empty((0,))
    sums = state_h.new_empty((state_h.shape[0], state_h.shape[2]) if weighted_sum else (0,))
    return torch.empty_like(state_h), candidate, sums


@fake_kernel("kern_d2::_ggnn_blend_backward")
def _ggnn_blend_backward_fake(grad_h_new, grad_weighted_sum, candidate, z, message_h, scale, h):
    grad_scale = torch.empty_like(scale) if scale is not None else z.new_empty((0,))
    return (torch.empty_like(candidate), message_h.new_empty(message_h.shape), grad_scale, torch.empty_like(z),
            torch.empty_like(h))


def _gates_setup_context(ctx, inputs, output):
    state_zr, message_zr, scale, h, num_nodes, _ = inputs
    z, _, reset = output
    ctx.save_for_backward(z, reset, message_zr, scale, h)
    ctx.state_broadcast = state_zr.shape[1] != num_nodes


def _gates_backward(ctx, grad_z, grad_reset_h, _grad_reset):
    z, reset, message_zr, scale, h = ctx.saved_tensors
    grad_state, grad_message, grad_scale, grad_h = torch.ops.kern_d2._ggnn_gates_backward(
        grad_z.contiguous(), grad_reset_h.contiguous(), z, reset, message_zr, scale, h, ctx.state_broadcast
    )
    return grad_state, grad_message, (grad_scale if scale is not None else None), grad_h, None, None


def _blend_setup_context(ctx, inputs, output):
    _, message_h, scale, z, h, _, weighted_sum = inputs
    ctx.save_for_backward(output[1], z, message_h, scale, h)
    ctx.weighted_sum = weighted_sum


def _blend_backward(ctx, grad_h_new, _grad_candidate, grad_sums):
    candidate, z, message_h, scale, h = ctx.saved_tensors
    grad_sums = grad_sums.contiguous() if ctx.weighted_sum else None
    grad_state, grad_message, grad_scale, grad_z, grad_h = torch.ops.kern_d2._ggnn_blend_backward(
        grad_h_new.contiguous(), grad_sums, candidate, z, message_h, scale, h
    )
    return grad_state, grad_message, (grad_scale if scale is not None else None), grad_z, grad_h, None, None


_autograd_registered = False


def _ops():
    """torch.ops.kern_d2 with the gate ops' autograd formulas registered. A plain flag, not a cache: torch.compile
    traces through cached functions but reads a global as a constant."""
    global _autograd_registered
    if not _autograd_registered:
        load_ops()
        torch.library.register_autograd("kern_d2::ggnn_gates", _gates_backward, setup_context=_gates_setup_context)
        torch.library.register_autograd("kern_d2::ggnn_blend", _blend_backward, setup_context=_blend_setup_context)
        _autograd_registered = True
    return torch.ops.kern_d2


# Register at import where the extension is built, so that torch.compile never traces the registration.
try:
    _ops()
except ImportError:  # not built: the first call raises the loader's error
    pass


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _call(op, needs_grad: bool, *args):
    """``op(*args)``; without gradients it skips the (Python) autograd kernel, a measurable share of the time of a
    small call. Under torch.compile the op is called plainly (the tracer handles autograd itself)."""
    if needs_grad or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _in_dtype(dtype_of: torch.Tensor, *tensors):
    """The tensors in one dtype (the promoted one), e.g. bf16 states with fp32 weights."""
    dtype = dtype_of.dtype
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return [None if t is None else t.to(dtype) for t in (dtype_of,) + tensors]


def _nodes(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _rows(message: torch.Tensor) -> torch.Tensor:
    """A message [R, W] as the kernels read it: unit column stride, any row stride (a column slice is fine)."""
    return message if message.stride(-1) == 1 or message.shape[-1] <= 1 else message.contiguous()


def ggnn_gates(
    state_zr: torch.Tensor, message_zr: torch.Tensor, h: torch.Tensor, scale: Optional[torch.Tensor] = None,
    num_nodes: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Update gate z and reset states r * h of R groups of K nodes.

    Args:
        state_zr: [R, K or 1, 2D] U_z h + b_z ; U_r h + b_r.
        message_zr: [R, 2D] the group's W_z a ; W_r a (each node adds ``scale`` times it).
        h: [R, K or 1, D] node states.
        scale: [R, K] per-node factor of the message, or None (factor 1).
        num_nodes: K; defaults to the largest of the inputs' node dimensions.
    Returns:
        z [R, K, D] and r * h [R, K, D].
    """
    if num_nodes is None:
        num_nodes = max(state_zr.shape[1], h.shape[1], scale.shape[1] if scale is not None else 1)
    h, state_zr, message_zr, scale = _in_dtype(h, state_zr, message_zr, scale)
    h, state_zr, message_zr, scale = _nodes(h), _nodes(state_zr), _rows(message_zr), _nodes(scale)
    save = _needs_grad(state_zr, message_zr, h, scale)
    z, reset_h, _ = _call(_ops().ggnn_gates, save, state_zr, message_zr, scale, h, num_nodes, save)
    return z, reset_h


def ggnn_blend(
    state_h: torch.Tensor, message_h: torch.Tensor, z: torch.Tensor, h: torch.Tensor,
    scale: Optional[torch.Tensor] = None, weighted_sum: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """New states h' = h + z (tanh(S_h + s M_h) - h) of R groups of K nodes.

    Args:
        state_h: [R, K, D] U_h (r * h) + b_h.
        message_h: [R, D] the group's W_h a.
        z: [R, K, D] update gates.
        h: [R, K or 1, D] node states.
        scale: [R, K] per-node factor of the message, or None.
        weighted_sum: also return sum_k scale_k h'_k [R, D] (needs ``scale``), computed in the same pass.
    Returns:
        h' [R, K, D] (and the weighted sum).
    """
    if weighted_sum and scale is None:
        raise ValueError("ggnn_blend: weighted_sum needs the per-node scale")
    state_h, message_h, z, h, scale = _in_dtype(state_h, message_h, z, h, scale)
    state_h, message_h, z, h, scale = _nodes(state_h), _rows(message_h), _nodes(z), _nodes(h), _nodes(scale)
    save = _needs_grad(state_h, message_h, z, h, scale)
    h_new, _, sums = _call(_ops().ggnn_blend, save, state_h, message_h, scale, z, h, save, weighted_sum)
    return (h_new, sums) if weighted_sum else h_new
