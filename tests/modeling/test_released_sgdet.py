"""The released SGDet pipeline (MODEL.ROI_RELATION_HEAD.SGDET_PIPELINE "released", kern_d2/modeling/released_sgdet.py)
against the independent float64 reference of the released code (tests/helpers/released_port_sgdet.py): detections and
the test-time re-labelling exactly, the training pair assignment by its seed-free properties (the released code draws
at random); hand-made cases; and SGDet models on the toy and synth configs that train two steps and infer on CPU."""
import itertools
import os

import numpy as np
import pytest
import torch
import torchvision
from torch.testing import assert_close

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from kern_d2.config import add_kern_config, resolve_variant
from kern_d2.data import register_toy
from kern_d2.data.generators.synth import generate_synth_dataset
from kern_d2.modeling.priors import compute_predicate_counts, compute_priors, save_priors
from kern_d2.modeling.released_sgdet import (
    per_class_nms_mask, released_detections, released_object_targets, released_relabel,
    released_relation_assignments,
)

from tests.helpers import REPO_ROOT
from tests.helpers import released_port_sgdet as ref
from tests.helpers.toy_models import build, infer, map_dicts, register_toy_with_priors, train_losses

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RELEASED = {"MODEL.ROI_RELATION_HEAD.SGDET_PIPELINE": "released"}


def clustered_boxes(rng, num, centres=4, spread=6.0, size=100.0):
    """float64 [num, 4] boxes around a few centres, so that many overlap (and NMS has work)."""
    anchor = rng.uniform(10, size - 30, size=(centres, 2))[rng.integers(0, centres, size=num)]
    lo = anchor + rng.normal(0, spread, size=(num, 2))
    wh = rng.uniform(8, 30, size=(num, 2))
    return np.concatenate([lo, lo + wh], axis=1)


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ test time
def test_per_class_nms_mask_is_torchvisions_nms_per_class():
    rng = np.random.default_rng(0)
    for n, c in [(0, 3), (1, 2), (7, 1), (25, 6), (40, 3)]:
        scores = torch.from_numpy(rng.uniform(size=(n, c)))
        boxes = torch.from_numpy(np.stack([clustered_boxes(rng, n) for _ in range(c)], axis=1).reshape(n, c, 4))
        mask = per_class_nms_mask(scores, boxes, 0.3)
        assert mask.shape == (n, c) and mask.dtype == torch.bool
        for k in range(c):
            expected = torch.zeros(n, dtype=torch.bool)
            expected[torchvision.ops.nms(boxes[:, k], scores[:, k], 0.3)] = True
            assert torch.equal(mask[:, k], expected)


@pytest.mark.parametrize("seed", range(6))
def test_relabel_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, c = [(0, 4), (1, 3), (12, 5), (30, 8), (20, 1), (45, 12)][seed]
    probs = softmax(rng.normal(0, 2, size=(n, c + 1)))
    boxes = np.stack([clustered_boxes(rng, n, spread=3.0) for _ in range(c)], axis=1).reshape(n, c, 4)
    labels, scores, out_boxes = released_relabel(torch.from_numpy(probs), torch.from_numpy(boxes), 0.3)
    ref_labels, ref_scores, ref_boxes = ref.relabel(probs, boxes, 0.3)
    assert labels.dtype == torch.int64
    assert labels.tolist() == ref_labels.tolist()
    assert torch.equal(scores, torch.from_numpy(ref_scores))
    assert torch.equal(out_boxes, torch.from_numpy(ref_boxes))


def test_relabel_by_hand():
    # Two detections with the same box in every class; detection 1 is the weaker in every class, so it is suppressed
    # everywhere and gets class 0 with its own (unmasked) class-0 probability. Detection 2 is far away.
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([[box, box], [box, box], [[50.0, 50.0, 60.0, 60.0], [70.0, 70.0, 90.0, 90.0]]])
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]], dtype=torch.float64)
    labels, scores, out = released_relabel(probs, boxes, 0.3)
    assert labels.tolist() == [1, 0, 0]
    assert scores.tolist() == [0.7, 0.1, 0.5]  # detection 1 scores its class-0 probability, not a background one
    assert out.tolist() == [box, box, [50.0, 50.0, 60.0, 60.0]]
    # Without the overlap detection 1 keeps its best class (the background column is never a label).
    boxes[1] += 100.0
    labels, scores, out = released_relabel(probs, boxes, 0.3)
    assert labels.tolist() == [1, 1, 0] and out[1].tolist() == [100.0, 100.0, 110.0, 110.0]


def test_relabel_takes_the_best_kept_class():
    # Class 1 of detection 0 is suppressed by detection 1 (IoU 0.81 > 0.3) although it is detection 0's best.
    b0, b1 = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]
    boxes = torch.tensor([[[40.0, 40.0, 50.0, 50.0], b0], [[70.0, 70.0, 80.0, 80.0], b1]])
    probs = torch.tensor([[0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    labels, scores, out = released_relabel(probs, boxes, 0.3)
    assert labels.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.3, 0.8])
    assert out.tolist() == [[40.0, 40.0, 50.0, 50.0], b1]


# ------------------------------------------------------------------------------------------------ detections
def _random_detector_output(rng, num_proposals, num_classes, temperature=2.0):
    proposals = clustered_boxes(rng, num_proposals, centres=5, size=120.0)
    deltas = rng.normal(0, 3.0, size=(num_proposals, num_classes, 4))
    per_cls = proposals[:, None, :] + deltas
    per_cls[..., 2:] = np.maximum(per_cls[..., 2:], per_cls[..., :2] + 1.0)
    scores = softmax(rng.normal(0, temperature, size=(num_proposals, num_classes + 1)))
    return proposals, per_cls, scores


@pytest.mark.parametrize("seed,per_class_max,max_detections", [(0, 300, 64), (1, 300, 64), (2, 3, 64), (3, 300, 5),
                                                               (4, 2, 10)])
def test_detections_equal_the_reference(seed, per_class_max, max_detections):
    rng = np.random.default_rng(seed)
    num_proposals, num_classes, shape = 60, 7, (100, 110)
    proposals, per_cls, scores = _random_detector_output(rng, num_proposals, num_classes)
    [det] = released_detections(
        [torch.from_numpy(per_cls.reshape(num_proposals, -1))], [torch.from_numpy(scores)],
        [Boxes(torch.from_numpy(proposals))], [shape], 0.01, 0.3, max_detections, per_class_max,
    )
    clipped = per_cls.copy()
    clipped[..., 0::2] = clipped[..., 0::2].clip(0, shape[1])
    clipped[..., 1::2] = clipped[..., 1::2].clip(0, shape[0])
    index, ref_scores, ref_labels = ref.filter_det(scores, clipped, 0.01, max_detections, 0.3,
                                                   post_nms_topn=per_class_max)
    assert len(index) > 0
    assert det.proposal_index.tolist() == index.tolist()
    assert det.pred_classes.tolist() == ref_labels.tolist()
    assert torch.equal(det.scores, torch.from_numpy(ref_scores))
    assert torch.equal(det.pred_boxes.tensor, torch.from_numpy(proposals[index]).float())  # the proposal boxes
    assert torch.equal(det.boxes_per_cls, torch.from_numpy(clipped[index]))
    assert len(set(index.tolist())) == len(index)  # one detection per proposal


def test_detections_by_hand():
    # Proposals 0 and 1 overlap (IoU 0.9); class 0: proposal 0 wins, proposal 1 is suppressed and falls back to its
    # surviving class 1. Proposal 2 scores nothing above 0.01 and is no detection.
    p0, p1, p2 = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]
    proposals = torch.tensor([p0, p1, p2])
    boxes = proposals[:, None, :].repeat(1, 2, 1).reshape(3, 8)
    scores = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.005, 0.005, 0.99]])
    [det] = released_detections([boxes], [scores], [Boxes(proposals)], [(100, 100)])
    assert det.proposal_index.tolist() == [0, 1] and det.pred_classes.tolist() == [0, 1]
    assert det.scores.tolist() == pytest.approx([0.8, 0.3])
    assert det.boxes_per_cls.shape == (2, 2, 4)
    # No detections at all.
    [det] = released_detections([boxes], [torch.tensor([[0.0, 0.0, 1.0]] * 3)], [Boxes(proposals)], [(100, 100)])
    assert len(det) == 0 and det.boxes_per_cls.shape == (0, 2, 4)


# ------------------------------------------------------------------------------------------------ training targets
def test_object_targets_equal_the_reference():
    rng = np.random.default_rng(3)
    for n, g in [(0, 3), (5, 0), (30, 8)]:
        gt = clustered_boxes(rng, g, spread=3.0)
        boxes = clustered_boxes(rng, n, spread=3.0)
        if g:  # half of them near a gt box
            boxes[: n // 2] = gt[rng.integers(0, g, size=n // 2)] + rng.normal(0, 1.5, size=(n // 2, 4))
        gt_classes = rng.integers(0, 6, size=g)
        out = released_object_targets(Boxes(torch.from_numpy(boxes)), Boxes(torch.from_numpy(gt)),
                                      torch.from_numpy(gt_classes), 6)
        assert out.tolist() == ref.object_targets(boxes, gt, gt_classes, 6).tolist()
    assert (out == 6).any() and (out < 6).any()


def _has_assignment(fg_rows, candidates, gt_rels):
    """Whether each foreground row (i, j, p) can be given its own gt relation of predicate p among whose candidates
    (i, j) is (a bipartite matching of rows into relations, by augmenting paths)."""
    owner = {}

    def place(row, seen):
        for r, (cands, (_, _, predicate)) in enumerate(zip(candidates, gt_rels)):
            if r in seen or predicate != fg_rows[row][2] or fg_rows[row][:2] not in cands:
                continue
            seen.add(r)
            if r not in owner or place(owner[r], seen):
                owner[r] = row
                return True
        return False

    return all(place(k, set()) for k in range(len(fg_rows)))


def _check_assignment(pairs, predicates, boxes, labels, gt_boxes, gt_classes, gt_rels, background, pairs_per_image=64,
                      fg_per_image=16):
    """The seed-free properties of one draw of the released assignment, against the reference's structure."""
    candidates, bg_pool = ref.rel_assignment_structure(boxes, labels, gt_boxes, gt_classes, gt_rels, background)
    rows = [tuple(p) + (q,) for p, q in zip(pairs.tolist(), predicates.tolist())]
    assert rows == sorted(rows, key=lambda r: (r[0], r[1]))
    fg = [r for r in rows if r[2] > 0]
    bg = [r[:2] for r in rows if r[2] == 0]
    num_fg = min(sum(1 for c in candidates if c), fg_per_image)
    num_bg = min(pairs_per_image - num_fg, len(bg_pool))
    if num_fg + num_bg == 0:
        assert rows == [(0, 0, 0)]  # the released placeholder
        return fg, bg
    assert len(fg) == num_fg and len(bg) == num_bg and len(rows) <= pairs_per_image
    assert _has_assignment(fg, candidates, gt_rels)
    assert set(bg) <= bg_pool and len(set(bg)) == len(bg)
    return fg, bg


def _random_image(rng, num_gt, num_det, num_classes, num_rels):
    gt_boxes = clustered_boxes(rng, num_gt, centres=3, spread=8.0)
    gt_classes = rng.integers(0, num_classes, size=num_gt)
    # Detections: jittered gt boxes (some matched, some of the wrong class) and random boxes.
    pick = rng.integers(0, num_gt, size=num_det)
    boxes = np.concatenate([gt_boxes[pick[: num_det // 2]] + rng.normal(0, 1.5, size=(num_det // 2, 4)),
                            clustered_boxes(rng, num_det - num_det // 2, centres=3, spread=8.0)])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
    labels = ref.object_targets(boxes, gt_boxes, gt_classes, num_classes)
    flip = rng.uniform(size=num_det) < 0.15
    labels[flip] = rng.integers(0, num_classes + 1, size=int(flip.sum()))  # any label, background included
    subj = rng.integers(0, num_gt, size=num_rels)
    obj = (subj + rng.integers(1, num_gt, size=num_rels)) % num_gt
    gt_rels = np.stack([subj, obj, rng.integers(1, 5, size=num_rels)], axis=1)
    return boxes, labels, gt_boxes, gt_classes, gt_rels


def _assign(boxes, labels, gt_boxes, gt_classes, gt_rels, background, **kwargs):
    return released_relation_assignments(
        Boxes(torch.from_numpy(boxes)), torch.from_numpy(labels), Boxes(torch.from_numpy(gt_boxes)),
        torch.from_numpy(gt_classes), torch.from_numpy(gt_rels).reshape(-1, 3), background, **kwargs,
    )


@pytest.mark.parametrize("seed", range(8))
def test_relation_assignments_have_the_references_properties(seed):
    rng = np.random.default_rng(seed)
    num_gt, num_det, num_rels = [(4, 10, 3), (6, 30, 10), (8, 64, 40), (3, 5, 0), (5, 40, 25), (2, 1, 1),
                                 (6, 64, 12), (7, 20, 30)][seed]
    image = _random_image(rng, num_gt, num_det, 5, num_rels)
    torch.manual_seed(seed)
    for _ in range(3):  # several draws, each checked
        pairs, predicates = _assign(*image, 5)
        assert pairs.dtype == torch.int64 and predicates.dtype == torch.int64
        _check_assignment(pairs, predicates, *image, 5)
    # The reference's own draws pass the same checks (the checks are the code's structure, not this port's).
    ref_rows = ref.rel_assignments(*image, 5, np.random.default_rng(seed))
    _check_assignment(torch.tensor([r[:2] for r in ref_rows]), torch.tensor([r[2] for r in ref_rows]), *image, 5)


def test_relation_assignments_by_hand():
    # gt: 0 "A" at (0,0,10,10), 1 "B" at (8,0,18,10); relation (0, 1, predicate 3).
    gt_boxes = np.array([[0.0, 0, 10, 10], [8.0, 0, 18, 10]])
    gt_classes = np.array([0, 1])
    gt_rels = np.array([[0, 1, 3]])
    boxes = np.array([
        [0.0, 0, 10, 10],    # 0: A, matches gt 0
        [0.5, 0, 10, 10],    # 1: A, matches gt 0 too
        [8.0, 0, 18, 10],    # 2: B, matches gt 1
        [8.0, 0, 18, 10],    # 3: B, identical box to 2 (IoU 1: never background with 2)
        [9.0, 0, 18, 10],    # 4: labelled background
        [100.0, 100, 110, 110],  # 5: A, overlaps nothing
    ])
    labels = np.array([0, 0, 1, 1, 2, 0])
    torch.manual_seed(0)
    pairs, predicates = _assign(boxes, labels, gt_boxes, gt_classes, gt_rels, 2)
    rows = [tuple(p) + (q,) for p, q in zip(pairs.tolist(), predicates.tolist())]
    fg = [r for r in rows if r[2] > 0]
    assert len(fg) == 1 and fg[0][:2] in {(0, 2), (0, 3), (1, 2), (1, 3)} and fg[0][2] == 3
    # Background: overlapping pairs of foreground-labelled detections, no candidate, not identical boxes.
    candidates = {(0, 2), (0, 3), (1, 2), (1, 3)}
    expected_bg = {(i, j) for i, j in itertools.permutations([0, 1, 2, 3], 2)
                   if (i, j) not in candidates and {i, j} != {2, 3}}
    assert {r[:2] for r in rows if r[2] == 0} == expected_bg
    # A wrong label breaks the match: detection 2 labelled A matches no gt of class B.
    labels_wrong = np.array([0, 0, 0, 2, 2, 0])
    pairs, predicates = _assign(boxes, labels_wrong, gt_boxes, gt_classes, gt_rels, 2)
    assert (predicates == 0).all()
    # Nothing to draw: the released placeholder (0, 0) with no relation.
    pairs, predicates = _assign(boxes[[5]], labels[[5]], gt_boxes, gt_classes, gt_rels, 2)
    assert pairs.tolist() == [[0, 0]] and predicates.tolist() == [0]
    pairs, predicates = _assign(boxes[:0], labels[:0], gt_boxes, gt_classes, gt_rels, 2)
    assert pairs.shape == (0, 2) and predicates.shape == (0,)


def test_relation_assignments_respect_the_64_and_16_caps():
    rng = np.random.default_rng(11)
    # 64 detections that all overlap, 30 gt relations with candidates.
    gt_boxes = np.array([[0.0, 0, 40, 40], [20.0, 0, 60, 40], [0.0, 20, 40, 60], [20.0, 20, 60, 60]])
    gt_classes = np.array([0, 1, 2, 3])
    boxes = np.repeat(gt_boxes, 16, axis=0) + rng.uniform(0, 2.0, size=(64, 4))
    labels = np.repeat(gt_classes, 16)
    gt_rels = np.array([(s, o, 1 + (k % 4)) for k, (s, o) in enumerate(itertools.permutations(range(4), 2))] * 3)
    torch.manual_seed(0)
    pairs, predicates = _assign(boxes, labels, gt_boxes, gt_classes, gt_rels, 4)
    assert len(pairs) == 64 and int((predicates > 0).sum()) == 16
    _check_assignment(pairs, predicates, boxes, labels, gt_boxes, gt_classes, gt_rels, 4)
    # Other caps.
    pairs, predicates = _assign(boxes, labels, gt_boxes, gt_classes, gt_rels, 4, pairs_per_image=20, fg_per_image=5)
    assert len(pairs) == 20 and int((predicates > 0).sum()) == 5


def test_foreground_draw_is_proportional_to_the_iou_product():
    # One gt relation repeated 4000 times (each repeat draws independently); its candidates: (0, 2) and (1, 2) with
    # weights IoU(0, s) * 1 = 1 and IoU(1, s) * 1 = 0.6.
    gt_boxes = np.array([[0.0, 0, 10, 10], [20.0, 0, 30, 10]])
    gt_classes = np.array([0, 1])
    boxes = np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 6], [20.0, 0, 30, 10]])
    labels = np.array([0, 0, 1])
    gt_rels = np.array([[0, 1, 1]] * 4000)
    torch.manual_seed(0)
    pairs, predicates = _assign(boxes, labels, gt_boxes, gt_classes, gt_rels, 2, pairs_per_image=5000,
                                fg_per_image=5000)
    fg = pairs[predicates > 0].tolist()
    assert len(fg) == 4000 and set(map(tuple, fg)) == {(0, 2), (1, 2)}
    share = sum(1 for p in fg if p[0] == 0) / 4000
    assert abs(share - 1.0 / 1.6) < 0.03  # 0.625; the binomial's standard deviation is 0.008


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def toy(toy_dataset_root, tmp_path_factory):
    toy = register_toy_with_priors(toy_dataset_root, str(tmp_path_factory.mktemp("priors") / "priors.npz"))
    toy.batch_train = [d for d in toy.train if len(d["annotations"]) >= 3][:2]
    toy.batch_test = [d for d in toy.test if len(d["annotations"]) >= 3][:2]
    return toy


class _Recorder:
    """Records the detections of KERNROIHeads._detect and the released training targets."""

    def __init__(self, monkeypatch, heads):
        self.detections, self.targets = [], []
        detect, targets = heads._detect, heads._released_training_targets

        def spy_detect(features, proposals):
            out = detect(features, proposals)
            self.detections.append(out)
            return out

        def spy_targets(*args):
            out = targets(*args)
            self.targets.append(out)
            return out

        monkeypatch.setattr(heads, "_detect", spy_detect)
        monkeypatch.setattr(heads, "_released_training_targets", spy_targets)


def _train_two_steps_and_infer(cfg, model, train_dicts, test_dicts, monkeypatch):
    heads = model.roi_heads
    assert heads.released_sgdet and resolve_variant(cfg)["SGDET_PIPELINE"] == "released"
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    recorder = _Recorder(monkeypatch, heads)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01)
    before = [p.detach().clone() for p in params]
    train = map_dicts(cfg, train_dicts, is_train=True)
    for _ in range(2):
        losses = train_losses(model, train)
        assert set(losses) == {"loss_relation", "loss_object"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    for detections in recorder.detections:
        for det in detections:
            assert 0 < len(det) <= 64 and det.boxes_per_cls.shape == (len(det), num_classes, 4)
            assert len(set(det.proposal_index.tolist())) == len(det)
    for obj_target, labels, pairs, pair_targets in recorder.targets:
        assert len(pairs) <= 64 and int((pair_targets > 0).sum()) <= 16 and (pair_targets >= 0).all()
        assert ((labels >= 0) & (labels < num_classes)).all()

    recorder.detections.clear()
    test = map_dicts(cfg, test_dicts, is_train=False)
    model.eval()
    with torch.no_grad():
        raw = model.inference(test, do_postprocess=False)
        outputs = infer(model, test)
    for inst, det, output, x in zip(raw, recorder.detections[0], outputs, test):
        n = len(det)
        assert len(inst) == n and 0 < n <= 64
        # Labels, scores and boxes: the re-labelling of the routed probabilities.
        rows = torch.arange(n)
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < num_classes)).all()
        assert torch.equal(inst.pred_boxes.tensor, det.boxes_per_cls[rows, inst.pred_classes])
        assert ((inst.scores > 0) & (inst.scores <= 1)).all()
        # Pairs: the ordered pairs whose proposal boxes overlap, sorted by triplet score.
        proposals = det.pred_boxes.tensor
        lt = torch.maximum(proposals[:, None, :2], proposals[None, :, :2])
        rb = torch.minimum(proposals[:, None, 2:], proposals[None, :, 2:])
        overlap = (rb - lt).clamp(min=0).prod(dim=2) > 0
        overlap.fill_diagonal_(False)
        assert {tuple(p) for p in inst.rel_pair_idxs.tolist()} == {tuple(p) for p in overlap.nonzero().tolist()}
        pairs = inst.rel_pair_idxs
        triplet = inst.rel_scores[:, 1:].max(dim=1).values * inst.scores[pairs[:, 0]] * inst.scores[pairs[:, 1]]
        assert (triplet[1:] <= triplet[:-1]).all()
        assert_close(inst.rel_scores.sum(dim=1), torch.ones(len(pairs)), rtol=0, atol=1e-5)
        assert output["instances"].image_size == (x["height"], x["width"])


def test_toy_sgdet_model_with_the_released_pipeline_trains_and_infers(toy, monkeypatch):
    cfg, model = build(toy, "sgdet", **RELEASED)
    _train_two_steps_and_infer(cfg, model, toy.batch_train, toy.batch_test, monkeypatch)


def _gt_like_released_detections(inputs, num_classes):
    """Per training input, released-style detections: the gt boxes shifted by one pixel (per-class boxes alike) plus
    a far-off box."""
    fake = []
    for x in inputs:
        gt = x["instances"]
        det = Instances(gt.image_size)
        boxes = torch.cat([gt.gt_boxes.tensor + 1.0, torch.tensor([[0.0, 0.0, 2.0, 2.0]])])
        det.pred_boxes = Boxes(boxes)
        det.boxes_per_cls = boxes[:, None, :].repeat(1, num_classes, 1)
        det.pred_classes = torch.cat([gt.gt_classes, torch.tensor([0])])
        det.scores = torch.ones(len(boxes))
        det.proposal_index = torch.arange(len(boxes))
        fake.append(det)
    return fake


def test_released_training_targets_on_gt_like_detections(toy, monkeypatch):
    """Detections that are the gt boxes (shifted by one pixel) plus a far-off box: the object targets are the gt
    classes and background for the far-off box (C with a background logit, else -1: ignored), and each gt relation
    gives its one foreground pair (the toy's gt boxes are distinct, so each relation has exactly one candidate)."""
    cfg, model = build(toy, "sgdet", **RELEASED)
    heads = model.roi_heads
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    inputs = map_dicts(cfg, toy.batch_train, is_train=True)
    fake = _gt_like_released_detections(inputs, num_classes)
    monkeypatch.setattr(heads, "_detect", lambda features, proposals: fake)
    recorder = _Recorder(monkeypatch, heads)
    logits = []
    heads.object_routing.register_forward_hook(lambda module, args, out: logits.append(out))
    losses = train_losses(model, inputs)
    assert losses["loss_object"] > 0 and losses["loss_relation"] > 0
    background = num_classes if logits[0].shape[1] == num_classes + 1 else -1
    for x, (obj_target, labels, pairs, pair_targets) in zip(inputs, recorder.targets):
        gt = x["instances"]
        assert obj_target.tolist() == gt.gt_classes.tolist() + [background]
        assert labels[:-1].tolist() == gt.gt_classes.tolist()
        rows = {(s, o, p) for (s, o), p in zip(pairs.tolist(), pair_targets.tolist()) if p > 0}
        assert rows == {tuple(r) for r in gt.gt_relations.tensor.tolist()}
        assert len(pairs) <= 64 and not (pairs == len(gt)).any()  # the far-off box is in no pair


def test_kern_d2_pipeline_is_the_default(toy):
    cfg, model = build(toy, "sgdet")
    assert resolve_variant(cfg)["SGDET_PIPELINE"] == "kern_d2" and not model.roi_heads.released_sgdet
    _, model = build(toy, "sgcls", **RELEASED)  # the switch concerns SGDet only
    assert not model.roi_heads.released_sgdet


def test_synth_sgdet_model_with_the_released_pipeline_trains_and_infers(tmp_path, monkeypatch):
    root = str(tmp_path / "synth")
    generate_synth_dataset(root, num_train=4, num_test=2, num_val=1, seed=3, workers=1)
    prefix = "pytest_released_sgdet_synth"
    register_toy(root, prefix=prefix)
    try:
        train, test = DatasetCatalog.get(f"{prefix}_train"), DatasetCatalog.get(f"{prefix}_test")
        meta = MetadataCatalog.get(f"{prefix}_train")
        things, predicates = list(meta.thing_classes), list(meta.predicate_classes)
        priors = str(tmp_path / "priors.npz")
        save_priors(priors, *compute_priors(train, len(things), len(predicates)), things, predicates,
                    compute_predicate_counts(train, len(things), len(predicates)))
        cfg = get_cfg()
        add_kern_config(cfg)
        cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "synth", "Base-Synth-KERN.yaml"))
        cfg.merge_from_list([
            "DATASETS.TRAIN", (f"{prefix}_train",), "DATASETS.TEST", (f"{prefix}_test",), "MODEL.WEIGHTS", "",
            "MODEL.UNTRAINED_DETECTOR", "allow", "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", priors,
            "MODEL.ROI_RELATION_HEAD.USE_GT_BOX", False, "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", False,
            "MODEL.ROI_RELATION_HEAD.HIDDEN_DIM", 32, "MODEL.ROI_RELATION_HEAD.OUTPUT_DIM", 32,
            "MODEL.ROI_RELATION_HEAD.SGDET_PIPELINE", "released",
            # the released pair rule, which the checks below expect (the synth configs score every pair)
            "MODEL.ROI_RELATION_HEAD.REQUIRE_OVERLAP", True,
            "INPUT.MIN_SIZE_TRAIN", (160,), "INPUT.MAX_SIZE_TRAIN", 256, "INPUT.MIN_SIZE_TEST", 160,
            "INPUT.MAX_SIZE_TEST", 256,
        ])
        torch.manual_seed(0)
        model = build_model(cfg)
        with_rels = [d for d in train if len(d.get("relations", [])) > 0][:2]
        _train_two_steps_and_infer(cfg, model, with_rels, test[:2], monkeypatch)
    finally:
        for split in ("train", "val", "test"):
            DatasetCatalog.remove(f"{prefix}_{split}")
            MetadataCatalog.remove(f"{prefix}_{split}")
