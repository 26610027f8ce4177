"""KERN's relation routing: per candidate pair a GGNN over a subject node s, an object node o and P predicate nodes.

Edges s -> k and o -> k weigh a_k = A_rel[label_s, label_o, k]. With messages [M^T h ; M h] (incoming ; outgoing):

    predicate k:        [ a_k (h_s + h_o) ; 0 ]
    subject and object: [ 0 ; sum_k a_k h_k ]

KERN's released code ties the two halves instead (``tied_message``): every node gets ``[m ; m]`` with its m above
("A_out == A_in"), so W [m ; m] = (W_in + W_out) m and both kinds of node use the summed weight.

The structure makes the W a terms cheap: for predicate nodes W [a_k m ; 0] = a_k (W_in m), one matmul per pair
scaled per node; subject and object get the same message, one weighted sum and one matmul per pair. Only the
U h terms are computed per node.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kern_d2.config import resolve_variant
from kern_d2.layers.cuda_graphs import GraphedRowFunction

from .ggnn import GATE_IMPLS as UPDATE_GATE_IMPLS
from .ggnn import GatedGraphUpdate

__all__ = ["GATE_IMPLS", "RelationRouting"]

GATE_IMPLS = UPDATE_GATE_IMPLS + ("compile",)  # MODEL.ROI_RELATION_HEAD.GATE_IMPL


class RelationRouting(nn.Module):
    """Relation logits [R, P] for R candidate pairs.

    Args:
        obj_dim: size of the subject/object features (one projection for both).
        union_dim: size of the union-box features (projected to the predicate nodes' initial state).
        num_predicates: P, including 0 = "no relation".
        hidden_dim: D, the GGNN state size.
        output_dim: size of each node's output o = ReLU(W_o [h_T ; h_0]).
        num_steps: T, the number of propagation steps.
        released_code_gate: reuse U_z in the reset gate, as KERN's released code does.
        tied_message: every node's message is ``[m ; m]`` (the released code) instead of ``[m ; 0]`` for predicate
            nodes and ``[0 ; m]`` for the subject and object.
        gate_impl: how the GGNN's elementwise gate arithmetic runs ("auto", "fused", "eager"; see
            :mod:`kern_d2.modeling.ggnn`), or "compile": the whole routing (its GEMMs and the PyTorch gate
            arithmetic) under ``torch.compile``, which fuses the gates into generated Triton kernels on CUDA (the
            first call of a new size compiles, for tens of seconds).
        inference_cuda_graphs: without gradients on CUDA, run the routing through CUDA graphs captured per size
            bucket of 256 pairs (:class:`kern_d2.layers.GraphedRowFunction`): no launch gaps, same results. The
            graphs keep their own memory (about the peak of one call of the largest bucket).
    """

    def __init__(
        self,
        obj_dim: int,
        union_dim: int,
        num_predicates: int,
        hidden_dim: int = 512,
        output_dim: int = 512,
        num_steps: int = 3,
        released_code_gate: bool = False,
        gate_impl: str = "auto",
        inference_cuda_graphs: bool = False,
        tied_message: bool = False,
    ):
        super().__init__()
        self.tied_message = tied_message
        self.inference_cuda_graphs = inference_cuda_graphs
        self._graphed_route = None  # built at the first graphed call
        self.num_predicates = num_predicates
        self.hidden_dim = hidden_dim
        self.num_steps = num_steps
        self.object_proj = nn.Linear(obj_dim, hidden_dim)
        self.union_proj = nn.Linear(union_dim, hidden_dim)
        if gate_impl not in GATE_IMPLS:
            raise ValueError(f"RelationRouting: gate_impl must be one of {GATE_IMPLS}, got {gate_impl!r}")
        # "compile" compiles the whole routing (forward), whose update then runs in PyTorch ops for Inductor to fuse.
        update_impl = "eager" if gate_impl == "compile" else gate_impl
        self.update = GatedGraphUpdate(hidden_dim, 2 * hidden_dim, released_code_gate, update_impl)
        self.gate_impl = gate_impl
        self._compiled_route = None  # built at the first call with gate_impl "compile"
        self.output = nn.Linear(2 * hidden_dim, output_dim)  # W_o over [h_T ; h_0]
        self.classifier = nn.Linear((num_predicates + 2) * output_dim, num_predicates)

    @classmethod
    def from_config(cls, cfg, obj_dim: int, union_dim: int) -> dict:
        """Constructor arguments from a config with kern_d2's keys (``RelationRouting(**from_config(cfg, ...))``)."""
        rel = cfg.MODEL.ROI_RELATION_HEAD
        variant = resolve_variant(cfg)
        if rel.GATE_IMPL not in GATE_IMPLS:
            raise ValueError(f"MODEL.ROI_RELATION_HEAD.GATE_IMPL must be one of {GATE_IMPLS}, got {rel.GATE_IMPL!r}")
        return {
            "obj_dim": obj_dim,
            "union_dim": union_dim,
            "num_predicates": rel.NUM_PREDICATES,
            "hidden_dim": rel.HIDDEN_DIM,
            "output_dim": rel.OUTPUT_DIM,
            "num_steps": rel.NUM_STEPS,
            "released_code_gate": variant["RESET_GATE"] == "shared",
            "gate_impl": rel.GATE_IMPL,
            "inference_cuda_graphs": rel.INFERENCE_CUDA_GRAPHS,
            "tied_message": variant["RELATION_MESSAGE"] == "tied",
        }

    def _check_inputs(self, subj_features, obj_features, union_features, edge_weights):
        r = subj_features.shape[0]
        expected = {
            "subj_features": (subj_features, (r, self.object_proj.in_features)),
            "obj_features": (obj_features, (r, self.object_proj.in_features)),
            "union_features": (union_features, (r, self.union_proj.in_features)),
            "edge_weights": (edge_weights, (r, self.num_predicates)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"RelationRouting: {name} must have shape {shape}, got {tuple(tensor.shape)}")

    def forward(
        self,
        subj_features: torch.Tensor,
        obj_features: torch.Tensor,
        union_features: torch.Tensor,
        edge_weights: torch.Tensor,
        chunk_size: Optional[int] = None,
    ) -> torch.Tensor:
        """
        Args:
            subj_features, obj_features: [R, obj_dim] features of each pair's subject and object.
            union_features: [R, union_dim] union-box features.
            edge_weights: [R, P] the prior A_rel[label_s, label_o, :] of each pair.
            chunk_size: route at most this many pairs at a time (bounds memory at inference); None = all at once.
        Returns:
            relation logits [R, P].
        """
        self._check_inputs(subj_features, obj_features, union_features, edge_weights)
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"RelationRouting: chunk_size must be positive, got {chunk_size}")
        r = subj_features.shape[0]
        route = self._route
        if self.gate_impl == "compile" and not torch.compiler.is_compiling():
            if self._compiled_route is None:
                self.compile_routing()
            route = self._compiled_route
        if self._uses_cuda_graphs(subj_features):
            if self._graphed_route is None:
                self._graphed_route = GraphedRowFunction(route, self)
            route = self._graphed_route
        if chunk_size is None or r <= chunk_size:
            return route(subj_features, obj_features, union_features, edge_weights)
        return torch.cat(
            [
                route(subj_features[i : i + chunk_size], obj_features[i : i + chunk_size],
                      union_features[i : i + chunk_size], edge_weights[i : i + chunk_size])
                for i in range(0, r, chunk_size)
            ]
        )

    def compile_routing(self, **compile_kwargs) -> None:
        """Route through ``torch.compile`` (``gate_impl="compile"``; the arguments go to torch.compile)."""
        self.gate_impl = "compile"
        self._compiled_route = torch.compile(self._route, **compile_kwargs)
        self._graphed_route = None  # graphs of the uncompiled routing would bypass it

    def __getstate__(self):
        # The compiled function and the captured graphs are rebuilt at first use; copies and pickles leave them out.
        state = self.__dict__.copy()
        state["_compiled_route"] = state["_graphed_route"] = None
        return state

    def _uses_cuda_graphs(self, x: torch.Tensor) -> bool:
        return (self.inference_cuda_graphs and x.is_cuda and x.shape[0] > 0 and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling())

    def _route(self, subj_features, obj_features, union_features, edge_weights) -> torch.Tensor:
        r, p, d = subj_features.shape[0], self.num_predicates, self.hidden_dim
        h_so_0 = self.object_proj(torch.stack([subj_features, obj_features], dim=1))  # [R, 2, D]
        h_pred_0 = self.union_proj(union_features)[:, None, :]  # [R, 1, D]
        weights = edge_weights.to(h_pred_0.dtype)  # keep the [R, P, *] gate arithmetic in the compute dtype
        scale = weights[:, :, None]  # [R, P, 1]
        # Weight slices used at every step, cast once to the compute dtype (autocast would cast them at every use).
        w_incoming = self.update.message_weight(slice(0, d)).to(h_pred_0.dtype)  # [3D, D]
        w_outgoing = self.update.message_weight(slice(d, 2 * d)).to(h_pred_0.dtype)
        if self.tied_message:  # W [m ; m] = (W_in + W_out) m for every node
            w_incoming = w_outgoing = w_incoming + w_outgoing

        h_so, h_pred = h_so_0, h_pred_0  # h_pred broadcasts over the P nodes until the first update
        pred_sum = weights.sum(dim=1, keepdim=True) * h_pred_0[:, 0]  # [R, D]: sum_k a_k h_k
        for _ in range(self.num_steps):
            pred_terms = F.linear(h_so.sum(dim=1), w_incoming)[:, None, :]  # [R, 1, 3D], times a_k per node
            so_terms = F.linear(pred_sum, w_outgoing)[:, None, :]  # the same for s and o
            h_so = self.update.update(h_so, so_terms)
            h_pred, pred_sum = self.update.update(h_pred, pred_terms, scale, weighted_sum=True)
        h_pred = h_pred.expand(r, p, d)

        # W_o [h_T ; h_0] = W_o,T h_T + W_o,0 h_0: the h_0 half once per pair for the predicate nodes.
        w_t, w_0 = self.output.weight[:, :d].to(h_pred.dtype), self.output.weight[:, d:].to(h_pred.dtype)
        # In place after the GEMM: the [R, P, O] outputs are the largest tensors here (neither op's backward needs
        # the GEMM's result).
        out_so = F.linear(h_so, w_t).add_(F.linear(h_so_0, w_0, self.output.bias)).relu_()  # [R, 2, O]
        out_pred = F.linear(h_pred, w_t).add_(F.linear(h_pred_0, w_0, self.output.bias)).relu_()  # [R, P, O]
        # The classifier over the node outputs in the order s, o, predicates, without concatenating them, computed
        # transposed (W @ nodes^T, [P, R]): for this skinny product cuBLAS is ~3x faster that way round (H100).
        split = 2 * out_so.shape[2]
        w_cls = self.classifier.weight
        logits_t = F.linear(w_cls[:, split:], out_pred.reshape(r, p * out_pred.shape[2]))
        logits_t = logits_t + F.linear(w_cls[:, :split], out_so.reshape(r, split))
        return logits_t.t() + self.classifier.bias.to(logits_t.dtype)  # autocast: bf16 like F.linear
