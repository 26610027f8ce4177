"""VARIANT "released": kern_d2's routings with the released switches equal the float64 port of KERN's released code
(tests/helpers/released_port_routing.py) to 1e-10, in SGCls (object routing + relation routing over predicted labels)
and in PredCls (relation routing over gt labels), with the released weights mapped onto kern_d2's parameters."""
import pytest
import torch
from detectron2.config import get_cfg

from kern_d2.config import add_kern_config, resolve_variant
from kern_d2.modeling.object_routing import ObjectRouting
from kern_d2.modeling.relation_routing import RelationRouting

from tests.helpers import released_port_routing as port

C, P, D, O, FO, FU, STEPS = 5, 4, 6, 7, 9, 8, 3


def released_cfg(**keys):
    cfg = add_kern_config(get_cfg())
    cfg.MODEL.ROI_RELATION_HEAD.VARIANT = "released"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = C
    rel = cfg.MODEL.ROI_RELATION_HEAD
    rel.NUM_PREDICATES, rel.HIDDEN_DIM, rel.OUTPUT_DIM, rel.NUM_STEPS = P, D, O, STEPS
    for key, value in keys.items():
        setattr(rel, key, value)
    return cfg


def load_ggnn(update, params):
    """Released GGNN weights -> a kern_d2 ``GatedGraphUpdate`` with the shared reset gate. Biases that the released
    code adds in pairs (W a + b_w + U h + b_u) become one bias."""
    with torch.no_grad():
        update.message.weight.copy_(torch.cat([params[f"fc_eq{k}_w.weight"] for k in (3, 4, 5)]))
        update.state_gates.weight.copy_(params["fc_eq3_u.weight"])  # U_z, reused by the reset gate
        update.gate_bias.copy_(torch.cat([params["fc_eq3_w.bias"] + params["fc_eq3_u.bias"],
                                          params["fc_eq4_w.bias"] + params["fc_eq3_u.bias"]]))
        update.candidate.weight.copy_(params["fc_eq5_u.weight"])
        update.candidate.bias.copy_(params["fc_eq5_w.bias"] + params["fc_eq5_u.bias"])


def released_to_kern_order(num_classes):
    """kern_d2's class order (foreground 0..C-1, background last) as indices into the released order (background 0)."""
    return torch.tensor(list(range(1, num_classes + 1)) + [0])


def make_object_pair(generator):
    params = port.random_params(dict(obj_proj=(D, FO), **port.ggnn_layers(D, O, (C + 1) * O, C + 1, "fc_obj_cls")),
                                generator)
    module = ObjectRouting(**ObjectRouting.from_config(released_cfg(), FO)).double()
    assert module.background_node and module.update.released_code_gate
    load_ggnn(module.update, params)
    order = released_to_kern_order(C)
    with torch.no_grad():
        module.input_proj.weight.copy_(params["obj_proj.weight"])
        module.input_proj.bias.copy_(params["obj_proj.bias"])
        module.output.weight.copy_(params["fc_output.weight"])
        module.output.bias.copy_(params["fc_output.bias"])
        w = params["fc_obj_cls.weight"].view(C + 1, C + 1, O)[order][:, order]  # rows: classes, blocks: nodes
        module.classifier.weight.copy_(w.reshape(C + 1, (C + 1) * O))
        module.classifier.bias.copy_(params["fc_obj_cls.bias"][order])
    return params, module


def make_relation_pair(generator):
    layers = dict(obj_proj=(D, FO), rel_proj=(D, FU), **port.ggnn_layers(D, O, (P + 2) * O, P, "fc_rel_cls"))
    params = port.random_params(layers, generator)
    module = RelationRouting(**RelationRouting.from_config(released_cfg(), FO, FU)).double()
    assert module.tied_message and module.update.released_code_gate
    load_ggnn(module.update, params)
    with torch.no_grad():
        for ours, theirs in ((module.object_proj, "obj_proj"), (module.union_proj, "rel_proj"),
                             (module.output, "fc_output"), (module.classifier, "fc_rel_cls")):
            ours.weight.copy_(params[f"{theirs}.weight"])
            ours.bias.copy_(params[f"{theirs}.bias"])
    return params, module


def released_priors(generator):
    """Released-layout matrices (background at index 0, its row and column 0) and kern_d2's slices of them."""
    obj = torch.rand(C + 1, C + 1, generator=generator, dtype=torch.float64)
    obj[0], obj[:, 0] = 0, 0
    rel = torch.rand(C + 1, C + 1, P, generator=generator, dtype=torch.float64)
    rel[:, :, 2] = 0  # an unseen predicate: prior 0, as the released construction gives
    rel = rel / rel.sum(2, keepdim=True)
    return obj, rel, obj[1:, 1:], rel[1:, 1:]


def test_variant_resolves_every_point_and_keys_override_it():
    resolved = resolve_variant(released_cfg())
    assert resolved["RELATION_MESSAGE"] == "tied" and resolved["RESET_GATE"] == "shared"
    assert resolved["OBJECT_FEATURES"] == "finetuned" and resolved["ADAM_EPS"] == 1e-3
    assert resolve_variant(released_cfg(RELATION_MESSAGE="untied"))["RELATION_MESSAGE"] == "untied"
    default = add_kern_config(get_cfg())
    assert resolve_variant(default)["RELATION_MESSAGE"] == "untied"
    default.MODEL.ROI_RELATION_HEAD.RELEASED_CODE_GATE = True  # the legacy key still means the shared gate
    assert resolve_variant(default)["RESET_GATE"] == "shared"
    default.MODEL.ROI_RELATION_HEAD.RELATION_MESSAGE = "both"
    with pytest.raises(ValueError, match="RELATION_MESSAGE"):
        resolve_variant(default)


@pytest.mark.parametrize("seed", [0, 1])
def test_sgcls_equals_released_port(seed):
    g = torch.Generator().manual_seed(seed)
    obj_params, obj_routing = make_object_pair(g)
    rel_params, rel_routing = make_relation_pair(g)
    obj_matrix, rel_matrix, cooccurrence, rel_prior = released_priors(g)
    num_per_image = [3, 1, 4]
    n = sum(num_per_image)
    obj_fmaps = torch.randn(n, FO, generator=g, dtype=torch.float64)
    rel_inds = torch.tensor([[0, 1], [1, 0], [2, 0], [4, 5], [6, 7], [7, 4], [5, 6]])
    vr = torch.randn(len(rel_inds), FU, generator=g, dtype=torch.float64)

    obj_dists = port.ggnn_obj_reason(obj_params, obj_fmaps, num_per_image, obj_matrix, STEPS)
    obj_preds = port.predicted_labels(obj_dists)
    rel_dists = port.ggnn_rel_reason(rel_params, obj_fmaps, vr, rel_inds, obj_preds, rel_matrix, STEPS)

    logits = obj_routing(obj_fmaps, num_per_image, cooccurrence)  # [N, C + 1], background last
    torch.testing.assert_close(logits[:, released_to_kern_order(C).argsort()], obj_dists, rtol=0, atol=1e-10)
    labels = logits[:, :C].argmax(1)  # KERNROIHeads' foreground labels
    assert torch.equal(labels + 1, obj_preds)
    edge = rel_prior[labels[rel_inds[:, 0]], labels[rel_inds[:, 1]]]
    ours = rel_routing(obj_fmaps[rel_inds[:, 0]], obj_fmaps[rel_inds[:, 1]], vr, edge)
    torch.testing.assert_close(ours, rel_dists, rtol=0, atol=1e-10)


def test_predcls_equals_released_port():
    g = torch.Generator().manual_seed(3)
    rel_params, rel_routing = make_relation_pair(g)
    _, rel_matrix, _, rel_prior = released_priors(g)
    gt_labels = torch.tensor([0, 4, 2, 2, 1])  # kern_d2's 0-based labels; the released code's are 1 higher
    obj_fmaps = torch.randn(5, FO, generator=g, dtype=torch.float64)
    rel_inds = torch.tensor([[0, 1], [1, 0], [2, 3], [3, 4], [4, 0]])
    vr = torch.randn(5, FU, generator=g, dtype=torch.float64)
    expected = port.ggnn_rel_reason(rel_params, obj_fmaps, vr, rel_inds, gt_labels + 1, rel_matrix, STEPS)
    edge = rel_prior[gt_labels[rel_inds[:, 0]], gt_labels[rel_inds[:, 1]]]
    for chunk in (None, 2):
        ours = rel_routing(obj_fmaps[rel_inds[:, 0]], obj_fmaps[rel_inds[:, 1]], vr, edge, chunk_size=chunk)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)


def same_weights_other_keys(seed, **keys):
    """(released routing, a routing built with ``keys`` overriding the variant, same weights, random pair inputs)."""
    _, released = make_relation_pair(torch.Generator().manual_seed(seed))
    other = RelationRouting(**RelationRouting.from_config(released_cfg(**keys), FO, FU)).double()
    other.load_state_dict(released.state_dict())
    n = 4
    args = (torch.randn(n, FO, dtype=torch.float64), torch.randn(n, FO, dtype=torch.float64),
            torch.randn(n, FU, dtype=torch.float64), torch.rand(n, P, dtype=torch.float64))
    return released, other, args


def test_fused_gates_follow_the_tied_message():
    # The fused gate kernels (kern_d2._C) take the same tied weights as the eager path.
    eager, fused, args = same_weights_other_keys(5, GATE_IMPL="fused")
    torch.testing.assert_close(fused(*args), eager(*args), rtol=0, atol=1e-10)


def test_untied_message_differs_from_the_released_port():
    # The kern_d2 reading ([m; 0] / [0; m]) is a different function: the port test can fail.
    tied, untied, args = same_weights_other_keys(4, RELATION_MESSAGE="untied")
    assert (tied(*args) - untied(*args)).abs().max() > 1e-3
