"""The gated update of a Gated Graph Neural Network (Li et al., "Gated Graph Sequence Neural Networks"), shared by
the object routing and the relation routing.

For a node with state h [D] and incoming message a [M]:

    z  = sigmoid(W_z a + U_z h + b_z)
    r  = sigmoid(W_r a + U_r h + b_r)
    h~ = tanh(W_h a + U_h (r * h) + b_h)
    h' = (1 - z) * h + z * h~

The three ``W a`` terms come from one matmul (``message``, [3D, M], no bias), the ``U_z h`` and ``U_r h`` terms
from one matmul (``state_gates``), ``U_h (r * h)`` from ``candidate`` (which holds b_h). The biases b_z, b_r live
in ``gate_bias`` so that the ``W a`` terms stay linear in ``a``: the relation routing relies on it to scale one
per-pair term by a per-node weight instead of multiplying every node's message.

The elementwise arithmetic around the matmuls (``gate_impl``) runs as
- "auto" (default): "fused" on CUDA tensors, "eager" on CPU ones (ATen's vectorised CPU ops beat the fused CPU
  kernel, which is kept as the reference implementation of the CUDA one);
- "fused": the kernels of :mod:`kern_d2.layers.ggnn_gates` (kern_d2._C, CPU and CUDA) where a message term is shared
  by a group of nodes (the relation routing), the PyTorch form elsewhere (per-node messages: the object routing);
- "eager": plain PyTorch ops (what ``torch.compile`` fuses when a caller compiles the update: the relation
  routing's "compile").
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from kern_d2.layers.ggnn_gates import ggnn_blend, ggnn_gates

__all__ = ["GATE_IMPLS", "GatedGraphUpdate", "update_and_reset_gates", "blend_candidate"]

GATE_IMPLS = ("auto", "fused", "eager")


def _with_message(state: torch.Tensor, message: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    """state + scale * message in one pass (a new tensor, so the caller may modify it in place)."""
    return state + message if scale is None else torch.addcmul(state, message, scale)


def update_and_reset_gates(
    message_zr: torch.Tensor, state_zr: torch.Tensor, h: torch.Tensor, scale: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pure gate arithmetic (``torch.compile``-able).

    Args:
        message_zr: [..., 2D] the ``W_z a ; W_r a`` terms, broadcastable to ``state_zr``.
        state_zr: [..., 2D] the ``U_z h + b_z ; U_r h + b_r`` terms.
        h: [..., D] current states.
        scale: optional [..., 1] per-node factor applied to ``message_zr`` (the message is ``scale * a``).
    Returns:
        z [..., D] and r * h [..., D].
    """
    z, r = torch.sigmoid_(_with_message(state_zr, message_zr, scale)).chunk(2, dim=-1)
    return z, r * h


def blend_candidate(
    message_h: torch.Tensor,
    state_h: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pure gate arithmetic (``torch.compile``-able): h' = (1 - z) h + z tanh(W_h a + U_h (r h) + b_h)."""
    candidate = torch.tanh_(_with_message(state_h, message_h, scale))
    return torch.lerp(h.expand_as(candidate), candidate, z)


def _shared_message(h: torch.Tensor, message_terms: torch.Tensor) -> bool:
    """Whether the update is over groups [R, K, D] whose nodes share one message term [R, 1, 3D]."""
    return h.dim() == 3 and message_terms.dim() == 3 and message_terms.shape[:2] == (h.shape[0], 1)


class GatedGraphUpdate(nn.Module):
    """One GGNN state update, applied to any batch of nodes ``[..., D]``.

    Args:
        hidden_dim: D, the node state size.
        message_dim: M, the incoming message size (2 D for messages ``[incoming ; outgoing]``).
        released_code_gate: reproduce KERN's released code, whose reset gate reuses U_z (U_r := U_z).
        gate_impl: how the elementwise gate arithmetic runs, one of :data:`GATE_IMPLS` (see the module docstring).
    """

    def __init__(self, hidden_dim: int, message_dim: int, released_code_gate: bool = False, gate_impl: str = "auto"):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.message_dim = message_dim
        self.released_code_gate = released_code_gate
        self.message = nn.Linear(message_dim, 3 * hidden_dim, bias=False)
        self.state_gates = nn.Linear(hidden_dim, (1 if released_code_gate else 2) * hidden_dim, bias=False)
        self.gate_bias = nn.Parameter(torch.zeros(2 * hidden_dim))
        self.candidate = nn.Linear(hidden_dim, hidden_dim)
        if gate_impl not in GATE_IMPLS:
            raise ValueError(f"GatedGraphUpdate: gate_impl must be one of {GATE_IMPLS}, got {gate_impl!r}")
        self.gate_impl = gate_impl

    def state_gate_weight(self) -> torch.Tensor:
        """[2D, D]: U_z stacked on U_r (U_z twice with ``released_code_gate``)."""
        weight = self.state_gates.weight
        return torch.cat([weight, weight]) if self.released_code_gate else weight

    def message_weight(self, block: slice = slice(None)) -> torch.Tensor:
        """[3D, len(block)]: the columns ``block`` of (W_z; W_r; W_h), e.g. the incoming half of the message."""
        return self.message.weight[:, block]

    def message_terms(self, message: torch.Tensor) -> torch.Tensor:
        """[..., M] -> [..., 3D]: W_z a ; W_r a ; W_h a."""
        return self.message(message)

    def update(
        self,
        h: torch.Tensor,
        message_terms: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        weighted_sum: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """New states [..., D] from states ``h`` [..., D] and precomputed ``message_terms`` [..., 3D].

        ``message_terms`` may broadcast against ``h`` (one term shared by several nodes); ``scale`` [..., 1] then
        gives each node its own multiple of it (the message of that node is ``scale * a``). With ``weighted_sum``
        (groups [R, K, D] and ``scale`` [R, K, 1]) also returns sum_k scale_k h'_k [R, D].
        """
        d = self.hidden_dim
        state_zr = F.linear(h, self.state_gate_weight(), self.gate_bias)
        fused = self.gate_impl == "fused" or (self.gate_impl == "auto" and h.is_cuda)
        if fused and _shared_message(h, message_terms):
            message = message_terms[:, 0]  # [R, 3D]; the kernels read its column slices in place
            node_scale = None if scale is None else scale[..., 0]  # [R, K]
            num_nodes = h.shape[1] if node_scale is None else max(h.shape[1], node_scale.shape[1])
            z, reset_h = ggnn_gates(state_zr, message[:, : 2 * d], h, node_scale, num_nodes)
            return ggnn_blend(self.candidate(reset_h), message[:, 2 * d :], z, h, node_scale, weighted_sum)
        z, reset_h = update_and_reset_gates(message_terms[..., : 2 * d], state_zr, h, scale)
        h_new = blend_candidate(message_terms[..., 2 * d :], self.candidate(reset_h), z, h, scale)
        if not weighted_sum:
            return h_new
        return h_new, torch.bmm(scale.transpose(1, 2).to(h_new.dtype), h_new).squeeze(1)

    def forward(self, h: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """h [..., D], message [..., M] -> new h [..., D]."""
        return self.update(h, self.message_terms(message))
