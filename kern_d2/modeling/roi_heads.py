"""``KERNROIHeads``: Detectron2's StandardROIHeads plus the KERN relation part, in PredCls, SGCls and SGDet."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import build_box_head
from detectron2.structures import Boxes, Instances, pairwise_iou

from kern_d2.config import resolve_variant, sgg_mode  # noqa: F401 (sgg_mode: also imported from here)
from kern_d2.layers import PairUnionPooler
from kern_d2.structures import SceneGraphInstances, set_relation_predictions
from kern_d2.utils.foreground_monitor import record_foreground_counts

from .detections import top_candidate_detections
from .fc_heads import DropoutFCHead, box_head_fc_dims
from .long_tail import LongTailSwitches
from .long_tail import mean_cross_entropy as _mean_cross_entropy
from .object_routing import ObjectRouting
from . import released_sgdet
from .pair_sampling import all_ordered_pairs, detected_pair_labels, gt_pair_labels, overlapping, sample_pairs
from .priors import KnowledgePriors, build_priors
from .relation_heads import build_relation_head
from .union_feature import ReleasedUnionFCHead, UnionFeatureExtractor

logger = logging.getLogger(__name__)


@ROI_HEADS_REGISTRY.register()
class KERNROIHeads(StandardROIHeads):
    """Box head of the (frozen) detector + union feature + object routing + relation head.

    Inputs as StandardROIHeads. In PredCls/SGCls the gt boxes of ``targets`` are the objects (also at test);
    in SGDet the detector's boxes after per-class NMS. Output per image: ``Instances`` with ``pred_boxes,
    pred_classes, scores`` and relation fields ``rel_pair_idxs`` [M, 2], ``rel_scores`` [M, P], sorted by
    triplet score (see :func:`kern_d2.structures.set_relation_predictions`).

    Args (besides StandardROIHeads'; ``from_config`` fills them from ``MODEL.ROI_RELATION_HEAD``):
        union_feature: the pair (union-box) feature extractor.
        relation_head: predicate logits from union, subject and object features and the pair prior (KERN, VRFC,
            FREQ: :mod:`kern_d2.modeling.relation_heads`).
        object_routing: object logits in SGCls/SGDet; None = the detector's logits (and always in PredCls).
        priors: the knowledge priors (buffers, saved in checkpoints).
        mode: "predcls", "sgcls" or "sgdet" (:func:`kern_d2.config.sgg_mode`).
        relation_in_features: feature maps the union feature pools from.
        pairs_per_image, pair_positive_fraction: training pair sampling (pairs per image, largest foreground share).
        fg_iou_threshold: SGDet, IoU of a detected box with a gt box for a foreground pair (and object target).
        max_detections, detection_nms_thresh, detection_score_thresh: SGDet detections per image, their per-class
            NMS threshold and score floor.
        require_overlap: SGDet test, only pairs whose boxes overlap are candidates.
        inference_pair_chunk: pairs routed at once at inference (bounds memory).
        object_loss_weight, relation_loss_weight: loss weights.
        freeze_detector: the box head and predictor run without autograd; :class:`SceneGraphRCNN` freezes them
            with the rest of the detector (the paper's setting).
        long_tail: the long-tail switches (:mod:`kern_d2.modeling.long_tail`).
        object_fc_head: ``OBJECT_FEATURES`` "finetuned": the trainable box-head copy that gives object features.
        sgdet_pipeline: ``SGDET_PIPELINE``, "kern_d2" or "released" (:mod:`kern_d2.modeling.released_sgdet`).
    """

    @configurable
    def __init__(
        self,
        *,
        union_feature: UnionFeatureExtractor,
        relation_head: nn.Module,
        object_routing: Optional[ObjectRouting],
        priors: KnowledgePriors,
        mode: str,
        relation_in_features: List[str],
        pairs_per_image: int,
        pair_positive_fraction: float,
        fg_iou_threshold: float,
        max_detections: int,
        detection_nms_thresh: float,
        detection_score_thresh: float,
        require_overlap: bool,
        inference_pair_chunk: int,
        object_loss_weight: float,
        relation_loss_weight: float,
        freeze_detector: bool,
        long_tail: LongTailSwitches,
        object_fc_head: Optional[nn.Module] = None,
        sgdet_pipeline: str = "kern_d2",
        **kwargs,
    ):
        super().__init__(**kwargs)
        # OBJECT_FEATURES "finetuned": a trainable copy of the box head gives the object features (else the box head).
        self.object_fc_head = object_fc_head
        self.union_feature = union_feature
        self.relation_head = relation_head
        self.object_routing = object_routing
        self.priors = priors
        self.mode = mode
        self.relation_in_features = relation_in_features
        self.pairs_per_image = pairs_per_image
        self.pair_positive_fraction = pair_positive_fraction
        self.fg_iou_threshold = fg_iou_threshold
        self.max_detections = max_detections
        self.detection_nms_thresh = detection_nms_thresh
        self.detection_score_thresh = detection_score_thresh
        self.require_overlap = require_overlap
        self.inference_pair_chunk = inference_pair_chunk
        self.object_loss_weight = object_loss_weight
        self.relation_loss_weight = relation_loss_weight
        self.freeze_detector = freeze_detector
        self.long_tail = long_tail
        # SGDET_PIPELINE "released": detections, training pairs and test-time labels as KERN's released code
        # (kern_d2/modeling/released_sgdet.py).
        self.released_sgdet = mode == "sgdet" and sgdet_pipeline == "released"

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        rel = cfg.MODEL.ROI_RELATION_HEAD
        mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
        in_features = list(rel.IN_FEATURES) or list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        in_channels = {input_shape[f].channels for f in in_features}
        if len(in_channels) != 1:
            raise ValueError(f"ROI_RELATION_HEAD.IN_FEATURES {in_features} have different channel counts {in_channels}")
        in_channels = in_channels.pop()
        resolution = rel.POOLER_RESOLUTION
        pooler = PairUnionPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=rel.POOLER_SAMPLING_RATIO,
        )
        # The union fc head has the box head's architecture (released: its fc layers with dropout, no final ReLU); it
        # starts from the detector's box-head weights.
        union_variant = resolve_variant(cfg)["UNION_FEATURE"]
        union_shape = ShapeSpec(channels=in_channels, height=resolution, width=resolution)
        if union_variant == "released":
            fc_head = ReleasedUnionFCHead(union_shape, box_head_fc_dims(cfg))
        else:
            fc_head = build_box_head(cfg, union_shape)
        union_feature = UnionFeatureExtractor(pooler, rel.MASK_SIZE, in_channels, resolution, fc_head,
                                              variant=union_variant)
        object_fc_head = None
        if resolve_variant(cfg)["OBJECT_FEATURES"] == "finetuned":
            box_resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
            object_fc_head = DropoutFCHead(
                ShapeSpec(channels=in_channels, height=box_resolution, width=box_resolution), box_head_fc_dims(cfg)
            )
        object_dim = (object_fc_head or ret["box_head"]).output_shape.channels
        object_routing = None
        if mode != "predcls" and rel.USE_OBJECT_ROUTING:
            object_routing = ObjectRouting(**ObjectRouting.from_config(cfg, object_dim))
        ret.update(
            union_feature=union_feature,
            relation_head=build_relation_head(cfg, union_feature.output_size, object_dim),
            object_routing=object_routing,
            priors=build_priors(cfg),
            mode=mode,
            relation_in_features=in_features,
            pairs_per_image=rel.BATCH_SIZE_PER_IMAGE,
            pair_positive_fraction=rel.POSITIVE_FRACTION,
            fg_iou_threshold=rel.FG_IOU_THRESHOLD,
            max_detections=rel.MAX_DETECTIONS,
            detection_nms_thresh=rel.DETECTION_NMS_THRESH,
            detection_score_thresh=rel.DETECTION_SCORE_THRESH,
            require_overlap=rel.REQUIRE_OVERLAP,
            inference_pair_chunk=rel.INFERENCE_PAIR_CHUNK,
            object_loss_weight=rel.OBJECT_LOSS_WEIGHT,
            relation_loss_weight=rel.RELATION_LOSS_WEIGHT,
            freeze_detector=rel.FREEZE_DETECTOR,
            long_tail=LongTailSwitches(**LongTailSwitches.from_config(cfg, union_feature.output_size, object_dim)),
            object_fc_head=object_fc_head,
            sgdet_pipeline=resolve_variant(cfg)["SGDET_PIPELINE"],
        )
        return ret

    # ---------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A detector checkpoint has no union fc head (nor fine-tuned object fc head) yet: start them from the
        # detector's box head (same layer names; tensors whose shapes differ, e.g. another POOLER_RESOLUTION, keep
        # their initialisation).
        copies = {"union_feature.fc_head.": self.union_feature.fc_head, "object_fc_head.": self.object_fc_head}
        box_prefix = prefix + "box_head."
        for copy_prefix, module in copies.items():
            copy_prefix = prefix + copy_prefix
            if module is None or any(k.startswith(copy_prefix) for k in state_dict):
                continue
            own = module.state_dict()
            copied = []
            for key in [k for k in state_dict if k.startswith(box_prefix)]:
                name = key[len(box_prefix):]
                if name in own and own[name].shape == state_dict[key].shape:
                    state_dict[copy_prefix + name] = state_dict[key].clone()
                    copied.append(name)
            if copied:
                logger.info(f"Initialised {copy_prefix[len(prefix):-1]} from the detector's box head ({len(copied)} "
                            "tensors).")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- objects
    def _object_features(self, features: Dict[str, torch.Tensor], boxes: List[Boxes], with_logits: bool):
        """Object features [N, Fo] of the given boxes (the box head's, or the fine-tuned copy's), and
        (``with_logits``) the detector's class logits [N, C+1] (else None)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detector):
            pooled = self.box_pooler([features[f] for f in self.box_in_features], boxes)
            box_feats = self.box_head(pooled) if self.object_fc_head is None or with_logits else None
            class_logits = self.box_predictor(box_feats)[0] if with_logits else None
        feats = box_feats if self.object_fc_head is None else self.object_fc_head(pooled)
        return feats, class_logits

    def _detect(self, features: Dict[str, torch.Tensor], proposals: List[Instances]) -> List[Instances]:
        """SGDet objects: the detector's boxes after per-class NMS, at most ``max_detections`` per image (released
        pipeline: one per proposal, the proposal boxes, with ``boxes_per_cls``; see released_sgdet)."""
        predictions = self.box_predictor(self.box_head(self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )))
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        scores = self.box_predictor.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        if self.released_sgdet:
            # One detection per proposal; its box is the proposal's, with the per-class boxes kept (boxes_per_cls).
            # The released code's score threshold 0.01 is the floor.
            return released_sgdet.released_detections(
                boxes, scores, [p.proposal_boxes for p in proposals], image_shapes,
                max(self.detection_score_thresh, released_sgdet.RELEASED_SCORE_THRESH), self.detection_nms_thresh,
                self.max_detections,
            )
        return top_candidate_detections(
            boxes, scores, image_shapes, self.detection_score_thresh, self.detection_nms_thresh, self.max_detections
        )

    def _classify_objects(self, obj_feats, detector_logits, num_per_image):
        """Object logits [N, C] (or [N, C+1], background last) from object routing, or from the detector
        (background column dropped, except in the released SGDet pipeline)."""
        if self.object_routing is None:
            # The released SGDet pipeline keeps the detector's background column (its softmax spans it).
            return detector_logits if self.released_sgdet else detector_logits[:, :-1]
        return self.object_routing(obj_feats, list(num_per_image), self.priors.obj_cooccurrence)

    # ---------------------------------------------------------------- forward
    def forward(self, images, features, proposals, targets=None):
        del images
        self.priors.check_loaded()
        objects = None
        if self.mode == "sgdet":
            with torch.no_grad():
                objects = self._detect(features, proposals)
            boxes = [d.pred_boxes for d in objects]
        else:
            if targets is None:
                raise ValueError(f"{self.mode}: the gt boxes of each image ('instances' in the inputs) are required")
            boxes = [t.gt_boxes for t in targets]
        if self.training and targets is None:
            raise ValueError(f"{self.mode} training needs the gt of each image ('instances' in the inputs)")
        num_per_image = [len(b) for b in boxes]
        classify = self.mode != "predcls"
        obj_feats, detector_logits = self._object_features(
            features, boxes, with_logits=classify and self.object_routing is None
        )
        obj_logits = self._classify_objects(obj_feats, detector_logits, num_per_image) if classify else None

        if self.training:
            return [], self._losses(features, boxes, objects, targets, obj_feats, obj_logits)
        image_sizes = [x.image_size for x in (objects if self.mode == "sgdet" else targets)]
        return self._inference(features, boxes, image_sizes, targets, obj_feats, obj_logits, objects), {}

    def _object_labels_and_scores(self, obj_logits, targets, sizes):
        """Per image (labels [Ni], scores [Ni]) used for the relation prior and the triplet scores."""
        if self.mode == "predcls":
            return [(t.gt_classes, torch.ones(len(t), device=t.gt_classes.device)) for t in targets]
        # With a background column (OBJECT_ROUTING_BACKGROUND), the softmax spans it but the label is foreground.
        scores, labels = F.softmax(obj_logits.float(), dim=1)[:, : self.num_classes].max(dim=1)
        return list(zip(labels.split(sizes), scores.split(sizes)))

    def _training_pairs(self, num_boxes: int, pair_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampled pairs [S, 2] of one image and their predicate targets [S] (-1 = ignore)."""
        pairs = all_ordered_pairs(num_boxes, pair_labels.device)
        return sample_pairs(
            pairs, pair_labels[pairs[:, 0], pairs[:, 1]], self.pairs_per_image, self.pair_positive_fraction
        )

    def _losses(self, features, boxes, objects, targets, obj_feats, obj_logits):
        sizes = [len(b) for b in boxes]
        pair_list, pair_target_list, prior_labels, object_targets = [], [], [], []
        pred_labels = (obj_logits[:, : self.num_classes].argmax(dim=1).split(sizes) if obj_logits is not None
                       else [None] * len(boxes))
        for i, target in enumerate(targets):
            gt_relations = target.gt_relations.tensor
            if self.released_sgdet:
                obj_target, labels, pairs, pair_targets = self._released_training_targets(
                    objects[i], target, pred_labels[i], obj_logits.shape[1] > self.num_classes
                )
            elif self.mode == "sgdet":
                det = objects[i]
                obj_target = _matched_gt_classes(det.pred_boxes, target.gt_boxes, target.gt_classes,
                                                 self.fg_iou_threshold)
                # Relation prior labels: the matched gt label, else the predicted one.
                labels = torch.where(obj_target >= 0, obj_target, pred_labels[i])
                pair_labels = detected_pair_labels(
                    det.pred_boxes, det.pred_classes, target.gt_boxes, target.gt_classes, gt_relations,
                    self.fg_iou_threshold,
                )
            else:
                obj_target = labels = target.gt_classes
                pair_labels = gt_pair_labels(len(target), gt_relations)
            if not self.released_sgdet:
                pairs, pair_targets = self._training_pairs(sizes[i], pair_labels)
            pair_list.append(pairs)
            pair_target_list.append(pair_targets)
            prior_labels.append(labels)
            object_targets.append(obj_target)

        record_foreground_counts(pair_target_list)  # an all-background run must not pass silently
        rel_logits = self._relation_logits(features, boxes, pair_list, obj_feats.split(sizes), prior_labels)
        rel_logits, rel_weight = self.long_tail.training_loss_inputs(rel_logits, self.priors)
        rel_loss = _mean_cross_entropy(rel_logits, torch.cat(pair_target_list), rel_weight)
        losses = {"loss_relation": self.relation_loss_weight * rel_loss}
        if obj_logits is not None and self.object_routing is not None:
            obj_loss = _mean_cross_entropy(obj_logits, torch.cat(object_targets))
            losses["loss_object"] = self.object_loss_weight * obj_loss
        return losses

    def _released_training_targets(self, det, target, pred_labels, has_background: bool):
        """Released SGDet training targets of one image: (object targets [N], relation prior labels [N], pairs [S, 2],
        predicate targets [S]). Object targets: the best gt's class at IoU >= FG_IOU_THRESHOLD, else background (C),
        or -1 (ignored) when the object logits have no background column. Prior labels: the assigned class, the
        predicted one for unmatched detections (which only the placeholder pair can include)."""
        background = self.num_classes
        assigned = released_sgdet.released_object_targets(
            det.pred_boxes, target.gt_boxes, target.gt_classes, background, self.fg_iou_threshold
        )
        pairs, pair_targets = released_sgdet.released_relation_assignments(
            det.pred_boxes, assigned, target.gt_boxes, target.gt_classes, target.gt_relations.tensor, background,
            self.fg_iou_threshold,
        )
        matched = assigned < background
        labels = torch.where(matched, assigned, pred_labels)
        obj_target = assigned if has_background else torch.where(matched, assigned, torch.full_like(assigned, -1))
        return obj_target, labels, pairs, pair_targets

    def _released_labels_and_boxes(self, obj_logits, objects, sizes):
        """Released SGDet test time, per image: (labels [Ni], scores [Ni]) and output boxes [Ni, 4] from a per-class
        NMS on the routed probabilities (:func:`released_sgdet.released_relabel`)."""
        probs = F.softmax(obj_logits.float(), dim=1).split(sizes)
        relabelled = [
            released_sgdet.released_relabel(p, det.boxes_per_cls, self.detection_nms_thresh)
            for p, det in zip(probs, objects)
        ]
        return [(labels, scores) for labels, scores, _ in relabelled], [b for _, _, b in relabelled]

    def _relation_logits(self, features, boxes, pair_idxs, obj_feats_per_image, obj_labels):
        """Predicate logits [sum Mi, P] of the given pairs (per image lists)."""
        subj = torch.cat([f[p[:, 0]] for f, p in zip(obj_feats_per_image, pair_idxs)])
        obj = torch.cat([f[p[:, 1]] for f, p in zip(obj_feats_per_image, pair_idxs)])
        union = None
        if getattr(self.relation_head, "uses_union_features", True):
            union = self.union_feature([features[f] for f in self.relation_in_features], boxes, pair_idxs)
            subj, obj = subj.to(union.dtype), obj.to(union.dtype)
        subj_labels = torch.cat([l[p[:, 0]] for l, p in zip(obj_labels, pair_idxs)])
        obj_labels_cat = torch.cat([l[p[:, 1]] for l, p in zip(obj_labels, pair_idxs)])
        prior = self.priors.pair_prior(subj_labels, obj_labels_cat)  # float32; the heads cast it as they need
        return self.long_tail.relation_logits(self.relation_head, union, subj, obj, prior, self.priors)

    def _relation_scores(self, features, boxes, pair_list, obj_feats_per_image, labels) -> List[torch.Tensor]:
        """Softmax predicate scores float32 [Mi, P] per image. The pairs of the whole batch go through the head in
        chunks of at most ``inference_pair_chunk`` (a chunk may span images, an image several chunks)."""
        counts = [p.shape[0] for p in pair_list]
        starts = [sum(counts[:i]) for i in range(len(counts))]
        total, step = sum(counts), self.inference_pair_chunk
        scores = [obj_feats_per_image[0].new_zeros((0, self.priors.num_predicates), dtype=torch.float32)]
        for lo in range(0, total, step):
            hi = min(lo + step, total)
            chunk = [
                p[min(max(lo - s, 0), c) : min(max(hi - s, 0), c)] for p, s, c in zip(pair_list, starts, counts)
            ]
            logits = self._relation_logits(features, boxes, chunk, obj_feats_per_image, labels)
            scores.append(F.softmax(logits.float(), dim=1))
        return list(torch.cat(scores).split(counts))

    def _inference(self, features, boxes, image_sizes, targets, obj_feats, obj_logits, objects=None):
        sizes = [len(b) for b in boxes]
        output_boxes = [b.tensor for b in boxes]
        if self.released_sgdet:  # labels, scores and boxes after a per-class NMS on the routed probabilities
            labels_scores, output_boxes = self._released_labels_and_boxes(obj_logits, objects, sizes)
        else:
            labels_scores = self._object_labels_and_scores(obj_logits, targets, sizes)
        pair_list = []
        for image_boxes in boxes:
            pairs = all_ordered_pairs(len(image_boxes), obj_feats.device)
            if self.mode == "sgdet" and self.require_overlap:
                pairs = pairs[overlapping(image_boxes, pairs)]
            pair_list.append(pairs)
        rel_scores = self._relation_scores(
            features, boxes, pair_list, obj_feats.split(sizes), [labels for labels, _ in labels_scores]
        )
        results = []
        for image_boxes, image_size, (labels, scores), pairs, image_rel_scores in zip(
            output_boxes, image_sizes, labels_scores, pair_list, rel_scores
        ):
            triplet = image_rel_scores[:, 1:].max(dim=1).values * scores[pairs[:, 0]] * scores[pairs[:, 1]]
            order = torch.argsort(triplet, descending=True, stable=True)
            result = SceneGraphInstances(image_size)
            result.pred_boxes = Boxes(image_boxes.clone())
            result.pred_classes = labels
            result.scores = scores
            set_relation_predictions(result, pairs[order], image_rel_scores[order])
            results.append(result)
        return results


def _matched_gt_classes(boxes: Boxes, gt_boxes: Boxes, gt_classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """int64 [N]: the class of each box's best-overlapping gt box when their IoU >= ``iou_threshold``, else -1."""
    if len(gt_boxes) == 0:
        return torch.full((len(boxes),), -1, dtype=torch.int64, device=gt_classes.device)
    best_iou, best_gt = pairwise_iou(boxes, gt_boxes).max(dim=1)
    return torch.where(best_iou >= iou_threshold, gt_classes[best_gt], torch.full_like(best_gt, -1))
