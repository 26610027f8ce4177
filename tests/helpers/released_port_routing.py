"""A float64 port of the two routings of KERN's released code (yuweihao/KERN, ``lib/ggnn.py`` and the
``GGNNObjReason`` / ``GGNNRelReason`` wrappers of ``lib/kern_model.py``), kept to the released structure and
independent of kern_d2's modules: it is the reference that ``MODEL.ROI_RELATION_HEAD.VARIANT "released"`` must equal.

What the released structure fixes, and kern_d2's own reading does not:
- object routing over VG's classes *with* background at index 0 (151 nodes; its prior row and column are 0);
- relation routing messages ``[m ; m]`` for every node ("A_out == A_in"): predicate k gets a_k (h_s + h_o), the
  subject and the object get sum_k a_k h_k;
- six biased linear maps per GGNN, the reset gate reusing ``fc_eq3_u`` (U_z, with its bias); ``fc_eq4_u`` unused;
- object labels for the relation prior: argmax over the foreground columns (``[:, 1:].max(1) + 1``).

Parameters are plain tensors in a dict named after the released modules (``fc_eq3_w.weight``, ...).
"""
from typing import Dict, List

import torch

Params = Dict[str, torch.Tensor]
GGNN_LAYERS = ("fc_eq3_w", "fc_eq3_u", "fc_eq4_w", "fc_eq4_u", "fc_eq5_w", "fc_eq5_u")


def _linear(params: Params, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ params[f"{name}.weight"].t() + params[f"{name}.bias"]


def random_params(layers: Dict[str, tuple], generator: torch.Generator) -> Params:
    """{name: (out, in)} -> float64 weights and biases drawn uniformly from [-0.3, 0.3]."""
    params = {}
    for name, (out_dim, in_dim) in layers.items():
        params[f"{name}.weight"] = (torch.rand(out_dim, in_dim, generator=generator, dtype=torch.float64) - 0.5) * 0.6
        params[f"{name}.bias"] = (torch.rand(out_dim, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    return params


def ggnn_layers(hidden_dim: int, output_dim: int, classifier_in: int, classifier_out: int, classifier: str) -> dict:
    layers = {name: (hidden_dim, 2 * hidden_dim if name.endswith("_w") else hidden_dim) for name in GGNN_LAYERS}
    layers["fc_output"] = (output_dim, 2 * hidden_dim)
    layers[classifier] = (classifier_out, classifier_in)
    return layers


def _gated_step(params: Params, av: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Equations (3)-(6) of Gated Graph Sequence NNs as the released code writes them (reset gate with fc_eq3_u)."""
    zv = torch.sigmoid(_linear(params, "fc_eq3_w", av) + _linear(params, "fc_eq3_u", hidden))
    rv = torch.sigmoid(_linear(params, "fc_eq4_w", av) + _linear(params, "fc_eq3_u", hidden))
    hv = torch.tanh(_linear(params, "fc_eq5_w", av) + _linear(params, "fc_eq5_u", rv * hidden))
    return (1 - zv) * hidden + zv * hv


def ggnn_obj(params: Params, input_ggnn: torch.Tensor, matrix: torch.Tensor, time_step_num: int) -> torch.Tensor:
    """``GGNNObj.forward`` for one image: input_ggnn [N, D] (projected features), matrix [C+1, C+1] (background at
    0) -> obj_dists [N, C+1]."""
    num_object, num_cls = input_ggnn.shape[0], matrix.shape[0]
    hidden = input_ggnn.repeat(1, num_cls).view(num_object, num_cls, -1)
    for _ in range(time_step_num):
        hidden_sum = hidden.sum(0)
        av = torch.cat([torch.cat([matrix.t() @ (hidden_sum - h_i) for h_i in hidden], 0),
                        torch.cat([matrix @ (hidden_sum - h_i) for h_i in hidden], 0)], 1)
        flat = _gated_step(params, av, hidden.view(num_object * num_cls, -1))
        hidden = flat.view(num_object, num_cls, -1)
    output = torch.cat((hidden.view(num_object * num_cls, -1),
                        input_ggnn.repeat(1, num_cls).view(num_object * num_cls, -1)), 1)
    output = torch.relu(_linear(params, "fc_output", output))
    return _linear(params, "fc_obj_cls", output.view(num_object, -1))


def ggnn_obj_reason(params: Params, obj_fmaps: torch.Tensor, num_per_image: List[int], matrix: torch.Tensor,
                    time_step_num: int) -> torch.Tensor:
    """``GGNNObjReason.forward`` (SGCls/SGDet): project, then one ``GGNNObj`` per image -> [N, C+1]."""
    input_ggnn = _linear(params, "obj_proj", obj_fmaps)
    out, start = [], 0
    for n in num_per_image:
        out.append(ggnn_obj(params, input_ggnn[start : start + n], matrix, time_step_num))
        start += n
    return torch.cat(out, 0)


def ggnn_rel(params: Params, sub_obj_preds: torch.Tensor, input_ggnn: torch.Tensor, matrix: torch.Tensor,
             time_step_num: int) -> torch.Tensor:
    """``GGNNRel.forward``: sub_obj_preds [R, 2] (labels with background at 0), input_ggnn [R, 2+P, D] (subject,
    object, P predicate nodes), matrix [C+1, C+1, P] -> rel_dists [R, P]."""
    rel_num, node_num, _ = input_ggnn.shape
    edge = torch.stack([matrix[s, o] for s, o in sub_obj_preds.tolist()])  # [R, P]
    batch_in_matrix_sub = torch.stack([edge, edge], dim=1)  # [R, 2, P]: the same row for subject and object
    hidden = input_ggnn
    for _ in range(time_step_num):
        av = torch.cat((torch.bmm(batch_in_matrix_sub, hidden[:, 2:]),
                        torch.bmm(batch_in_matrix_sub.transpose(1, 2), hidden[:, :2])), 1).repeat(1, 1, 2)
        flat = _gated_step(params, av.view(rel_num * node_num, -1), hidden.reshape(rel_num * node_num, -1))
        hidden = flat.view(rel_num, node_num, -1)
    output = torch.cat((hidden.reshape(rel_num * node_num, -1), input_ggnn.reshape(rel_num * node_num, -1)), 1)
    output = torch.relu(_linear(params, "fc_output", output))
    return _linear(params, "fc_rel_cls", output.view(rel_num, -1))


def ggnn_rel_reason(params: Params, obj_fmaps: torch.Tensor, vr: torch.Tensor, rel_inds: torch.Tensor,
                    obj_preds: torch.Tensor, matrix: torch.Tensor, time_step_num: int) -> torch.Tensor:
    """``GGNNRelReason.forward``'s relation part: obj_fmaps [N, Fo], vr [R, Fu], rel_inds [R, 2] (subject, object
    box), obj_preds [N] (background at 0) -> rel_dists [R, P]."""
    num_rel_cls = matrix.shape[2]
    sub_obj_preds = torch.stack([obj_preds[rel_inds[:, 0]], obj_preds[rel_inds[:, 1]]], 1)
    obj_proj = _linear(params, "obj_proj", obj_fmaps)
    vr_proj = _linear(params, "rel_proj", vr)
    input_ggnn = torch.stack([torch.cat([obj_proj[s][None], obj_proj[o][None], vr_proj[i].repeat(num_rel_cls, 1)], 0)
                              for i, (s, o) in enumerate(rel_inds.tolist())])
    return ggnn_rel(params, sub_obj_preds, input_ggnn, matrix, time_step_num)


def predicted_labels(obj_dists: torch.Tensor) -> torch.Tensor:
    """Released SGCls labels: ``obj_dists[:, 1:].max(1)[1] + 1`` (never background)."""
    return obj_dists[:, 1:].max(1)[1] + 1
