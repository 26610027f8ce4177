"""Literal implementations of KERN's two routings *as kern_d2 reads the paper* (VARIANT "kern_d2": untied messages
``[m ; 0]`` / ``[0 ; m]``, no background node), written straight from the equations with the weights of an
``ObjectRouting`` / ``RelationRouting`` module. Used by the tests (as the reference) and by
benchmarks/bench_routing.py (as the baseline). Nothing here exploits the structure the modules exploit.
The released code's routings have their own port: tests/helpers/released_port_routing.py.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F


def gate_weights(cell) -> Dict[str, torch.Tensor]:
    """The GGNN weights of a ``GatedGraphUpdate`` under their names in the equations (W_* [D, 2D], U_* [D, D])."""
    d = cell.hidden_dim
    w = cell.message.weight
    u = cell.state_gates.weight
    u_z = u[:d]
    u_r = u_z if cell.released_code_gate else u[d:]  # the released code's reset gate reuses U_z
    return {
        "W_z": w[:d], "W_r": w[d : 2 * d], "W_h": w[2 * d :],
        "U_z": u_z, "U_r": u_r, "U_h": cell.candidate.weight,
        "b_z": cell.gate_bias[:d], "b_r": cell.gate_bias[d:], "b_h": cell.candidate.bias,
    }


def ggnn_step(h: torch.Tensor, a: torch.Tensor, w: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The gated update for node states h [..., D] and messages a [..., 2D], six separate linear maps."""
    z = torch.sigmoid(F.linear(a, w["W_z"]) + F.linear(h, w["U_z"]) + w["b_z"])
    r = torch.sigmoid(F.linear(a, w["W_r"]) + F.linear(h, w["U_r"]) + w["b_r"])
    h_tilde = torch.tanh(F.linear(a, w["W_h"]) + F.linear(r * h, w["U_h"]) + w["b_h"])
    return (1 - z) * h + z * h_tilde


def object_routing_literal(module, obj_features, num_objects: List[int], cooccurrence, per_edge: bool = True):
    """Object logits [N, C], one image and one object at a time.

    The message of node (i, c) is sum over the other objects j of the image of [(A^T h_j)_c ; (A h_j)_c];
    ``per_edge`` builds it edge by edge (class c' of object j -> class c of object i), otherwise with one
    matrix-vector product per (i, j) (the per-object loop the benchmark times).
    """
    w = gate_weights(module.update)
    a_mat = cooccurrence.to(obj_features.dtype)
    num_classes, d = module.num_classes, module.hidden_dim
    logits, start = [], 0
    for n in num_objects:
        f = module.input_proj(obj_features[start : start + n])
        start += n
        h = [f[i].expand(num_classes, d) for i in range(n)]
        for _ in range(module.num_steps):
            new_h = []
            for i in range(n):
                incoming = torch.zeros_like(h[i])
                outgoing = torch.zeros_like(h[i])
                for j in range(n):
                    if j == i:
                        continue
                    if per_edge:
                        for c in range(num_classes):
                            for c2 in range(num_classes):
                                incoming[c] = incoming[c] + a_mat[c2, c] * h[j][c2]
                                outgoing[c] = outgoing[c] + a_mat[c, c2] * h[j][c2]
                    else:
                        incoming = incoming + a_mat.t() @ h[j]
                        outgoing = outgoing + a_mat @ h[j]
                new_h.append(ggnn_step(h[i], torch.cat([incoming, outgoing], dim=1), w))
            h = new_h
        for i in range(n):
            nodes = F.relu(module.output(torch.cat([h[i], f[i].expand(num_classes, d)], dim=1)))
            logits.append(module.classifier(nodes.reshape(-1)))
    return torch.stack(logits) if logits else obj_features.new_zeros(0, num_classes)


def relation_routing_literal(module, subj_features, obj_features, union_features, edge_weights):
    """Relation logits [R, P], one pair, one node and one edge at a time.

    Nodes of a pair: 0 = subject, 1 = object, 2 + k = predicate k. Edges u -> v with weight M[u, v]:
    subject -> k and object -> k, weight a_k. A node's message is [sum_u M[u, v] h_u ; sum_w M[v, w] h_w].
    """
    w = gate_weights(module.update)
    p, d = module.num_predicates, module.hidden_dim
    logits = []
    for pair in range(subj_features.shape[0]):
        a = edge_weights[pair].to(subj_features.dtype)
        edges = [(u, 2 + k, a[k]) for u in (0, 1) for k in range(p)]
        h0 = [module.object_proj(subj_features[pair]), module.object_proj(obj_features[pair])]
        h0 += [module.union_proj(union_features[pair])] * p
        h = list(h0)
        for _ in range(module.num_steps):
            new_h = []
            for v in range(p + 2):
                incoming = torch.zeros(d, dtype=h[0].dtype)
                outgoing = torch.zeros(d, dtype=h[0].dtype)
                for src, dst, weight in edges:
                    if dst == v:
                        incoming = incoming + weight * h[src]
                    if src == v:
                        outgoing = outgoing + weight * h[dst]
                new_h.append(ggnn_step(h[v], torch.cat([incoming, outgoing]), w))
            h = new_h
        nodes = [F.relu(module.output(torch.cat([h[v], h0[v]]))) for v in range(p + 2)]
        logits.append(module.classifier(torch.cat(nodes)))
    return torch.stack(logits)


def relation_routing_batched(module, subj_features, obj_features, union_features, edge_weights):
    """Relation logits [R, P]: all R x (P + 2) nodes at once, messages [M^T H ; M H] by bmm with the
    (P + 2) x (P + 2) adjacency M of each pair, and the six linear maps of the gated update on every node."""
    w = gate_weights(module.update)
    r, p = subj_features.shape[0], module.num_predicates
    h_pred = module.union_proj(union_features)[:, None, :].expand(r, p, module.hidden_dim)
    h0 = torch.cat([module.object_proj(subj_features)[:, None], module.object_proj(obj_features)[:, None], h_pred], 1)
    adjacency = h0.new_zeros(r, p + 2, p + 2)
    adjacency[:, 0, 2:] = edge_weights
    adjacency[:, 1, 2:] = edge_weights
    h = h0
    for _ in range(module.num_steps):
        messages = torch.cat([torch.bmm(adjacency.transpose(1, 2), h), torch.bmm(adjacency, h)], dim=2)
        h = ggnn_step(h, messages, w)
    nodes = F.relu(module.output(torch.cat([h, h0], dim=2)))
    return module.classifier(nodes.reshape(r, -1))
