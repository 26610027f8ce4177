"""SceneGraphRCNN + KERNROIHeads in PredCls, SGCls and SGDet on a tiny toy batch (untrained toy detector).

The model helpers (``build``, ``toy_kern_cfg``, ``map_dicts``, ...) are in tests/helpers/toy_models.py, the ``toy``
fixture in tests/modeling/conftest.py.
"""
import copy
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from kern_d2.data import register_toy
from kern_d2.modeling import SceneGraphRCNN
from kern_d2.modeling.pair_sampling import all_ordered_pairs
from kern_d2.modeling.priors import KnowledgePriors, compute_priors, save_priors
from kern_d2.modeling import roi_heads as roi_heads_module  # also registers the model parts
from kern_d2.structures import Relations, SceneGraphInstances

from tests.helpers.toy_models import (
    MODES,
    build,
    gt_like_detections,
    infer,
    map_dicts,
    toy_detector_cfg,
    toy_kern_cfg,
    train_losses,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------------------ helpers
def triplet_scores(instances) -> torch.Tensor:
    pairs = instances.rel_pair_idxs
    return instances.rel_scores[:, 1:].max(dim=1).values * instances.scores[pairs[:, 0]] * instances.scores[pairs[:, 1]]


def positive_overlap_pairs(boxes: torch.Tensor):
    """Set of ordered pairs (i != j) whose boxes intersect with positive area."""
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2) > 0
    inter.fill_diagonal_(False)
    return {tuple(p) for p in inter.nonzero().tolist()}


def check_scene_graphs(outputs, inputs, mode: str, num_predicates: int):
    """The output contract: SceneGraphInstances at the original size, M pairs as the mode defines, rows summing
    to 1, sorted by triplet score."""
    assert len(outputs) == len(inputs)
    for output, x in zip(outputs, inputs):
        inst = output["instances"]
        assert isinstance(inst, SceneGraphInstances)
        inst = inst.to("cpu")
        assert inst.image_size == (x["height"], x["width"])
        n = len(inst)
        pairs, scores = inst.rel_pair_idxs, inst.rel_scores
        assert pairs.dtype == torch.int64 and pairs.shape[1] == 2
        assert scores.shape == (pairs.shape[0], num_predicates) and scores.dtype == torch.float32
        pair_set = {tuple(p) for p in pairs.tolist()}
        assert len(pair_set) == pairs.shape[0]
        if mode == "sgdet":
            assert pair_set == positive_overlap_pairs(inst.pred_boxes.tensor)
        else:
            assert pairs.shape[0] == n * (n - 1)
            assert pair_set == {tuple(p) for p in all_ordered_pairs(n, torch.device("cpu")).tolist()}
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(pairs.shape[0]), rtol=0, atol=1e-5)
        triplets = triplet_scores(inst)
        assert (triplets[1:] <= triplets[:-1]).all()
        assert inst.pred_classes.dtype == torch.int64
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 10)).all()
        assert ((inst.scores > 0) & (inst.scores <= 1)).all()
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= x["width"]).all() and (boxes[:, 3] <= x["height"]).all()
        if mode != "sgdet":  # the gt boxes, back at the original size
            gt = torch.tensor([a["bbox"] for a in x["annotations"]], dtype=torch.float32).reshape(-1, 4)
            torch.testing.assert_close(boxes, gt, rtol=0, atol=1e-3)
        if mode == "predcls":
            assert inst.pred_classes.tolist() == [a["category_id"] for a in x["annotations"]]
            assert torch.equal(inst.scores, torch.ones(n))


# ------------------------------------------------------------------------------------------------ the three modes
@pytest.mark.parametrize("mode", MODES)
def test_training_losses_and_gradients(toy, mode):
    cfg, model = build(toy, mode, **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 12})
    losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    expected = {"loss_relation"} if mode == "predcls" else {"loss_relation", "loss_object"}
    assert set(losses) == expected
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    assert losses["loss_relation"] > 0
    if mode == "sgcls":
        assert losses["loss_object"] > 0
    sum(losses.values()).backward()
    heads = model.roi_heads
    trained = [heads.relation_head, heads.union_feature] + ([heads.object_routing] if mode != "predcls" else [])
    for module in trained:
        assert all(p.grad is not None for p in module.parameters())
    detector = [model.backbone, model.proposal_generator, heads.box_head, heads.box_predictor]
    for module in detector:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


def _record_training_targets(monkeypatch, heads) -> list:
    """Spy on KERNROIHeads._training_pairs: the list gets (pairs, targets) of each image."""
    records, original = [], heads._training_pairs

    def spy(num_boxes, pair_labels):
        pairs, targets = original(num_boxes, pair_labels)
        records.append((pairs, targets))
        return pairs, targets

    monkeypatch.setattr(heads, "_training_pairs", spy)
    return records


def _foreground(pairs, targets) -> set:
    return {(s, o, p) for (s, o), p in zip(pairs.tolist(), targets.tolist()) if p > 0}


def test_predcls_training_targets_are_the_gt_relations(toy, monkeypatch):
    cfg, model = build(toy, "predcls")
    records = _record_training_targets(monkeypatch, model.roi_heads)
    inputs = map_dicts(cfg, toy.batch_train, is_train=True)
    train_losses(model, inputs)
    for x, (pairs, targets) in zip(inputs, records):
        n = len(x["instances"])
        assert pairs.shape[0] == min(n * (n - 1), cfg.MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE)
        assert _foreground(pairs, targets) == {tuple(r) for r in x["instances"].gt_relations.tensor.tolist()}


def test_sgdet_training_matches_detections_to_the_gt(toy, monkeypatch):
    """With detections that are the gt boxes (shifted by one pixel) plus a far-off box, the object targets are the
    gt classes (-1 for the far-off box) and the foreground pairs are the gt relations."""
    cfg, model = build(toy, "sgdet")
    heads = model.roi_heads
    inputs = map_dicts(cfg, toy.batch_train, is_train=True)
    fake = gt_like_detections(inputs)
    monkeypatch.setattr(heads, "_detect", lambda features, proposals: fake)
    records = _record_training_targets(monkeypatch, heads)
    object_targets = []
    original_ce = roi_heads_module._mean_cross_entropy
    monkeypatch.setattr(roi_heads_module, "_mean_cross_entropy",
                        lambda logits, targets, *weight: object_targets.append(targets)
                        or original_ce(logits, targets, *weight))
    losses = train_losses(model, inputs)
    assert losses["loss_object"] > 0
    expected_targets = torch.cat([torch.cat([x["instances"].gt_classes, torch.tensor([-1])]) for x in inputs])
    assert torch.equal(object_targets[1], expected_targets)  # the relation loss comes first, then the object loss
    for x, (pairs, targets) in zip(inputs, records):
        assert _foreground(pairs, targets) == {tuple(r) for r in x["instances"].gt_relations.tensor.tolist()}


@pytest.mark.parametrize("mode", MODES)
def test_inference_output_contract(toy, mode):
    cfg, model = build(toy, mode, **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 12})
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    outputs = infer(model, inputs)
    check_scene_graphs(outputs, inputs, mode, len(toy.predicate_classes))
    if mode == "sgdet":
        assert all(0 < len(o["instances"]) <= 12 for o in outputs)
        assert sum(len(o["instances"].rel_pair_idxs) for o in outputs) > 0
        # Rescaled boxes are the network-size boxes times the size ratio.
        raw = model.inference(inputs, do_postprocess=False)
        for r, o, x in zip(raw, outputs, inputs):
            scale = torch.tensor([x["width"] / r.image_size[1], x["height"] / r.image_size[0]] * 2)
            torch.testing.assert_close(o["instances"].pred_boxes.tensor, r.pred_boxes.tensor * scale)


def test_inference_in_chunks_equals_one_pass(toy):
    cfg, model = build(toy, "sgcls")
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    whole = infer(model, inputs)
    model.roi_heads.inference_pair_chunk = 7  # chunks span images and split them
    chunked = infer(model, inputs)
    for a, b in zip(whole, chunked):
        a, b = a["instances"], b["instances"]
        rows_a = {tuple(p): s for p, s in zip(a.rel_pair_idxs.tolist(), a.rel_scores)}
        rows_b = {tuple(p): s for p, s in zip(b.rel_pair_idxs.tolist(), b.rel_scores)}
        assert rows_a.keys() == rows_b.keys()
        for pair, scores in rows_a.items():
            torch.testing.assert_close(rows_b[pair], scores, rtol=1e-5, atol=1e-6)


def test_detector_is_frozen_and_stays_in_eval_mode(toy):
    cfg, model = build(toy, "sgcls")
    model.train()
    heads = model.roi_heads
    detector = [model.backbone, model.proposal_generator, heads.box_head, heads.box_predictor]
    assert all(not m.training for d in detector for m in d.modules())
    assert heads.training and heads.union_feature.training and heads.relation_head.training
    assert heads.object_routing.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    losses = model(map_dicts(cfg, toy.batch_train, is_train=True))
    sum(losses.values()).backward()
    optimizer.step()
    after = model.state_dict()
    detector_prefixes = ("backbone.", "proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor.")
    for key, value in before.items():
        if key.startswith(detector_prefixes):  # weights and batch-norm statistics alike
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["roi_heads.relation_head.routing.classifier.weight"],
                           before["roi_heads.relation_head.routing.classifier.weight"])


def test_scene_graph_rcnn_is_configurable(toy):
    cfg = toy_kern_cfg(toy, "sgcls")
    kwargs = SceneGraphRCNN.from_config(cfg)
    assert kwargs["sgg_mode"] == "sgcls" and kwargs["freeze_detector"] is True
    from_cfg = SceneGraphRCNN(cfg)  # what build_model does
    assert from_cfg.sgg_mode == "sgcls" and not any(p.requires_grad for p in from_cfg.backbone.parameters())
    unfrozen = SceneGraphRCNN(**dict(kwargs, freeze_detector=False))
    assert all(p.requires_grad for p in unfrozen.backbone.parameters())
    assert unfrozen.train().backbone.training


def test_unfrozen_detector_trains_its_rpn_in_sgdet(toy):
    cfg, model = build(toy, "sgdet", **{"MODEL.ROI_RELATION_HEAD.FREEZE_DETECTOR": False,
                                        "MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 8})
    with EventStorage(0):  # the RPN logs its training statistics
        losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    assert {"loss_relation", "loss_object", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert model.backbone.stages[0][0].weight.grad is not None


# ------------------------------------------------------------------------------------------------ heads, ablations
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head", ["vrfc", "freq"])
def test_other_heads_build_and_run(toy, head, mode):
    cfg, model = build(toy, mode, head, **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 8})
    if head == "vrfc":
        losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
        assert "loss_relation" in losses
        sum(losses.values()).backward()
        assert model.roi_heads.relation_head.classifier.weight.grad is not None
    else:
        assert not list(model.roi_heads.relation_head.parameters())
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    check_scene_graphs(infer(model, inputs), inputs, mode, len(toy.predicate_classes))


def test_freq_scores_are_the_prior_and_skip_the_union_feature(toy):
    cfg, model = build(toy, "predcls", "freq")
    calls = []
    model.roi_heads.union_feature.register_forward_hook(lambda *args: calls.append(1))
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    rel_prior = model.roi_heads.priors.rel_prior
    for output in infer(model, inputs):
        inst = output["instances"]
        labels = inst.pred_classes
        expected = rel_prior[labels[inst.rel_pair_idxs[:, 0]], labels[inst.rel_pair_idxs[:, 1]]]
        torch.testing.assert_close(inst.rel_scores, expected, rtol=1e-5, atol=1e-7)
    assert not calls


def test_no_priors_ablation_is_uniform(toy):
    cfg, model = build(toy, "predcls", "freq", **{"MODEL.ROI_RELATION_HEAD.USE_PRIORS": False,
                                                  "MODEL.ROI_RELATION_HEAD.PRIORS_FILE": ""})
    priors = model.roi_heads.priors
    assert torch.equal(priors.obj_cooccurrence, torch.full((10, 10), 0.1))
    assert torch.equal(priors.rel_prior, torch.full((10, 10, 10), 0.1))
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    for output in infer(model, inputs):
        torch.testing.assert_close(output["instances"].rel_scores, torch.full_like(output["instances"].rel_scores, 0.1))
    # KERN without priors trains and runs too.
    cfg, model = build(toy, "sgcls", **{"MODEL.ROI_RELATION_HEAD.USE_PRIORS": False})
    losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    assert set(losses) == {"loss_relation", "loss_object"}
    check_scene_graphs(infer(model, inputs), inputs, "sgcls", len(toy.predicate_classes))


def test_no_object_routing_ablation_uses_the_detector_classes(toy):
    cfg, model = build(toy, "sgcls", **{"MODEL.ROI_RELATION_HEAD.USE_OBJECT_ROUTING": False})
    assert model.roi_heads.object_routing is None
    losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    assert set(losses) == {"loss_relation"}  # the frozen detector's classifier has nothing to learn
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    outputs = infer(model, inputs)
    check_scene_graphs(outputs, inputs, "sgcls", len(toy.predicate_classes))
    # The object labels and scores are the detector's, background dropped.
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        heads = model.roi_heads
        boxes = [x["instances"].gt_boxes for x in inputs]
        logits = heads.box_predictor(heads.box_head(heads.box_pooler([features[f] for f in heads.box_in_features],
                                                                       boxes)))[0][:, :-1]
    scores, labels = torch.softmax(logits, dim=1).max(dim=1)
    assert torch.equal(torch.cat([o["instances"].pred_classes for o in outputs]), labels)
    torch.testing.assert_close(torch.cat([o["instances"].scores for o in outputs]), scores)


# ------------------------------------------------------------------------------------------------ edge cases
def _keep_boxes(x: dict, num: int, drop_relations: bool = False) -> dict:
    """A copy of a mapped input with only its first ``num`` boxes (their relations kept, or none)."""
    x = copy.copy(x)
    instances = x["instances"][torch.arange(len(x["instances"])) < num]
    if drop_relations:
        instances.gt_relations = Relations(torch.zeros(0, 3, dtype=torch.int64), len(instances))
    x["instances"] = instances
    if "annotations" in x:
        x["annotations"] = x["annotations"][:num]
    return x


@pytest.mark.parametrize("mode", MODES)
def test_images_with_no_pairs_or_no_relations(toy, mode):
    cfg, model = build(toy, mode, **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 8})
    train = map_dicts(cfg, toy.batch_train, is_train=True)
    test = map_dicts(cfg, toy.batch_test, is_train=False)
    cases = {
        "no boxes": ([_keep_boxes(x, 0) for x in train], [_keep_boxes(x, 0) for x in test]),
        "one box": ([_keep_boxes(x, 1) for x in train], [_keep_boxes(test[0], 1), _keep_boxes(test[1], 0)]),
        "mixed": ([_keep_boxes(train[0], 0), train[1]], [_keep_boxes(test[0], 1), test[1]]),
        "no relations": ([_keep_boxes(x, 3, True) for x in train], [_keep_boxes(x, 3, True) for x in test]),
    }
    for name, (train_inputs, test_inputs) in cases.items():
        losses = train_losses(model, train_inputs)
        total = sum(losses.values())
        assert torch.isfinite(total), name
        total.backward()  # a batch without pairs still gives a (zero) loss in the graph
        if mode != "sgdet" and name in ("no boxes", "one box"):
            assert losses["loss_relation"] == 0, name
        outputs = infer(model, test_inputs)
        check_scene_graphs(outputs, test_inputs, mode, len(toy.predicate_classes))
        if mode != "sgdet":
            assert [len(o["instances"].rel_pair_idxs) for o in outputs] == [
                len(x["instances"]) * (len(x["instances"]) - 1) for x in test_inputs]


def test_sgdet_without_detections(toy):
    cfg, model = build(toy, "sgdet", **{"MODEL.ROI_RELATION_HEAD.DETECTION_SCORE_THRESH": 1.0})
    losses = train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    assert losses["loss_relation"] == 0 and losses["loss_object"] == 0
    sum(losses.values()).backward()
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    for output in infer(model, inputs):
        inst = output["instances"]
        assert len(inst) == 0 and inst.rel_pair_idxs.shape == (0, 2) and inst.rel_scores.shape == (0, 10)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_forward(toy, mode):
    cfg, model = build(toy, mode, **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 8})
    dtypes = []
    model.roi_heads.union_feature.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    train = map_dicts(cfg, toy.batch_train, is_train=True)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(train)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert dtypes == [torch.bfloat16]
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(inputs)
    check_scene_graphs(outputs, inputs, mode, len(toy.predicate_classes))


# ------------------------------------------------------------------------------------------------ checkpoints, priors
def test_checkpoint_round_trip_keeps_the_priors(toy, tmp_path):
    cfg, model = build(toy, "sgcls", seed=1)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("kern")
    # A fresh model without a priors file: its priors come from the checkpoint.
    fresh_cfg, fresh = build(toy, "sgcls", seed=2, **{"MODEL.ROI_RELATION_HEAD.PRIORS_FILE": ""})
    assert not torch.equal(fresh.roi_heads.priors.rel_prior, model.roi_heads.priors.rel_prior)
    DetectionCheckpointer(fresh).load(str(tmp_path / "kern.pth"))
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    for a, b in zip(infer(model, inputs), infer(fresh, inputs)):
        assert torch.equal(a["instances"].rel_pair_idxs, b["instances"].rel_pair_idxs)
        torch.testing.assert_close(a["instances"].rel_scores, b["instances"].rel_scores)


@pytest.mark.parametrize("union_resolution", [7, 5])
def test_detector_checkpoint_initialises_the_union_head_from_the_box_head(toy, tmp_path, union_resolution):
    torch.manual_seed(3)
    detector = build_model(toy_detector_cfg(toy))
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    _, model = build(toy, "sgdet", **{"MODEL.ROI_RELATION_HEAD.POOLER_RESOLUTION": union_resolution})
    initial_fc1 = model.roi_heads.union_feature.fc_head.fc1.weight.clone()
    DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    box_head = detector.roi_heads.box_head.state_dict()
    union_head = model.roi_heads.union_feature.fc_head.state_dict()
    for key, value in box_head.items():
        assert torch.equal(model.roi_heads.box_head.state_dict()[key], value)
        if union_resolution == 7 or not key.startswith("fc1."):
            assert torch.equal(union_head[key], value), key
    if union_resolution != 7:  # another input size: fc1 keeps its initialisation, the rest is copied
        assert torch.equal(union_head["fc1.weight"], initial_fc1)
    backbone = detector.backbone.state_dict()
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in backbone.items())


def test_priors_file_of_other_classes_is_an_error_at_build(toy, tmp_path):
    cooccurrence, rel_prior = compute_priors(toy.train, 10, 10)
    renamed = str(tmp_path / "renamed.npz")
    save_priors(renamed, cooccurrence, rel_prior, toy.thing_classes[::-1], toy.predicate_classes)
    with pytest.raises(ValueError, match=r"thing_classes\[0\] is 'bird' but the dataset's is 'person'"):
        build(toy, **{"MODEL.ROI_RELATION_HEAD.PRIORS_FILE": renamed})
    fewer = str(tmp_path / "fewer.npz")
    save_priors(fewer, cooccurrence[:9, :9], rel_prior[:9, :9], toy.thing_classes[:9], toy.predicate_classes)
    with pytest.raises(ValueError, match="9 thing_classes but the dataset has 10"):
        build(toy, **{"MODEL.ROI_RELATION_HEAD.PRIORS_FILE": fewer})


def test_config_class_counts_must_match_the_dataset(toy):
    with pytest.raises(ValueError, match="has 10 object classes but MODEL.ROI_HEADS.NUM_CLASSES is 9"):
        build(toy, **{"MODEL.ROI_HEADS.NUM_CLASSES": 9, "MODEL.ROI_RELATION_HEAD.USE_PRIORS": False})
    with pytest.raises(ValueError, match="MODEL.ROI_RELATION_HEAD.NUM_PREDICATES is 12"):
        build(toy, **{"MODEL.ROI_RELATION_HEAD.NUM_PREDICATES": 12})


def test_checkpoint_priors_of_another_size_are_an_error(toy, tmp_path):
    _, model = build(toy, "predcls")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = KnowledgePriors.uniform(9, 10)
    for name, value in other.state_dict().items():
        state[f"roi_heads.priors.{name}"] = value
    path = str(tmp_path / "other_priors.pth")
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="9 classes and 10 predicates, but the model has 10 classes"):
        DetectionCheckpointer(model).load(path)


def test_missing_priors_are_an_error_at_forward(toy):
    cfg, model = build(toy, "predcls", **{"MODEL.ROI_RELATION_HEAD.PRIORS_FILE": ""})
    with pytest.raises(RuntimeError, match="PRIORS_FILE"):
        infer(model, map_dicts(cfg, toy.batch_test, is_train=False))
    with pytest.raises(RuntimeError, match="PRIORS_FILE"):
        train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))


def test_priors_file_from_the_dataset_metadata(toy, toy_dataset_root):
    prefix = f"kern_test_meta_{uuid.uuid4().hex[:8]}"
    register_toy(toy_dataset_root, prefix=prefix, priors_file=toy.priors_file)
    meta_toy = SimpleNamespace(prefix=prefix, priors_file="")
    cfg = toy_kern_cfg(meta_toy, "predcls")
    model = build_model(cfg)
    expected = np.load(toy.priors_file)["rel_prior"]
    assert np.array_equal(model.roi_heads.priors.rel_prior.numpy(), expected)


def test_gt_boxes_are_required_outside_sgdet(toy):
    cfg, model = build(toy, "predcls")
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    del inputs[1]["instances"]
    with pytest.raises(ValueError, match="needs gt boxes"):
        infer(model, inputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_training_and_inference(toy, mode):
    cfg, model = build(toy, mode, **{"MODEL.DEVICE": "cuda", "MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 12})
    train = map_dicts(cfg, toy.batch_train, is_train=True)
    for dtype in (torch.float32, torch.bfloat16):
        model.train()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            losses = model(train)
        assert all(v.device.type == "cuda" and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        inputs = map_dicts(cfg, toy.batch_test, is_train=False)
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            outputs = model(inputs)
        assert all(o["instances"].rel_scores.device.type == "cuda" for o in outputs)
        check_scene_graphs(outputs, inputs, mode, len(toy.predicate_classes))
