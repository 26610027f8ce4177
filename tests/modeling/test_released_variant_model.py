"""VARIANT "released" in the whole model: the fine-tuned object fc head, the background node of the object routing,
the optimizer's fc learning-rate factor and Adam eps, and training and inference in every mode (toy data)."""
import pytest
import torch

from kern_d2.solver import build_sgg_optimizer

from tests.helpers.toy_models import build, infer, map_dicts, train_losses

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODES = ("predcls", "sgcls", "sgdet")
# The toy priors are of kern_d2's construction: the released variant would refuse them (tested with the priors).
RELEASED = {"MODEL.ROI_RELATION_HEAD.VARIANT": "released", "MODEL.ROI_RELATION_HEAD.PRIOR_CONSTRUCTION": "kern_d2",
            "MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 12}


@pytest.mark.parametrize("mode", MODES)
def test_released_variant_trains_and_infers(toy, mode):  # noqa: F811
    cfg, model = build(toy, mode, **RELEASED)
    heads = model.roi_heads
    assert heads.object_fc_head is not None
    if mode != "predcls":
        assert heads.object_routing.background_node
    losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # The fine-tuned copy learns, the detector's box head it was copied from does not.
    assert all(p.grad is not None for p in heads.object_fc_head.parameters())
    assert all(p.grad is None for p in heads.box_head.parameters())
    outputs = infer(model, map_dicts(cfg, toy.batch_test, is_train=False))
    for out in outputs:
        inst = out["instances"]
        assert inst.pred_classes.max() < cfg.MODEL.ROI_HEADS.NUM_CLASSES  # background is never a label
        assert torch.isfinite(inst.rel_scores).all()


def test_object_fc_head_starts_from_the_detector_box_head(toy):  # noqa: F811
    _, model = build(toy, "sgcls", **RELEASED)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.object_fc_head.")
             and not k.startswith("roi_heads.union_feature.fc_head.")}
    with torch.no_grad():
        state["roi_heads.box_head.fc1.weight"] = torch.full_like(state["roi_heads.box_head.fc1.weight"], 0.25)
    model.load_state_dict(state, strict=False)
    assert torch.all(model.roi_heads.object_fc_head.fc1.weight == 0.25)


def test_fc_copies_train_at_the_fc_factor_with_released_adam_eps(toy):  # noqa: F811
    cfg, model = build(toy, "sgcls", **RELEASED)
    cfg.defrost()
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.BIAS_LR_FACTOR = "ADAM", 0.01, 1.0
    optimizer = build_sgg_optimizer(cfg, model)
    assert all(group["eps"] == 1e-3 for group in optimizer.param_groups)
    lr_of = {id(p): round(group["lr"], 12) for group in optimizer.param_groups for p in group["params"]}
    heads = model.roi_heads
    for module in (heads.object_fc_head, heads.union_feature.fc_head):
        assert {lr_of[id(p)] for p in module.parameters()} == {0.001}
    assert {lr_of[id(p)] for p in heads.relation_head.parameters()} == {0.01}

    cfg.MODEL.ROI_RELATION_HEAD.VARIANT = "kern_d2"
    cfg.SOLVER.FC_LR_FACTOR = 0.5  # an explicit key wins over the variant
    optimizer = build_sgg_optimizer(cfg, model)
    assert all(group["eps"] == 1e-8 for group in optimizer.param_groups)
    lr_of = {id(p): round(group["lr"], 12) for group in optimizer.param_groups for p in group["params"]}
    assert {lr_of[id(p)] for p in heads.union_feature.fc_head.parameters()} == {0.005}
