"""``KERNROIHeads``: Detectron2's StandardROIHeads plus the KERN relation part, in PredCls, SGCls and SGDet."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import build_box_head
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou

from kern_d2.layers import PairUnionPooler
from kern_d2.structures import SceneGraphInstances, set_relation_predictions

from .object_routing import ObjectRouting
from .pair_sampling import all_ordered_pairs, detected_pair_labels, gt_pair_labels, overlapping, sample_pairs
from .priors import KnowledgePriors
from .relation_heads import build_relation_head
from .union_feature import UnionFeatureExtractor

logger = logging.getLogger(__name__)


def sgg_mode(use_gt_box: bool, use_gt_object_label: bool) -> str:
    """The task name of a (USE_GT_BOX, USE_GT_OBJECT_LABEL) setting."""
    if use_gt_box:
        return "predcls" if use_gt_object_label else "sgcls"
    if use_gt_object_label:
        raise ValueError("MODEL.ROI_RELATION_HEAD: USE_GT_OBJECT_LABEL=True needs USE_GT_BOX=True (no such mode)")
    return "sgdet"


def _class_names(cfg) -> Tuple[Optional[list], Optional[list]]:
    """thing_classes and predicate_classes of the first training (else test) dataset, when registered."""
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(name)
        things, predicates = meta.get("thing_classes", None), meta.get("predicate_classes", None)
        if things is not None and predicates is not None:
            return list(things), list(predicates)
    return None, None


def build_priors(cfg) -> KnowledgePriors:
    """Priors from ``PRIORS_FILE`` (checked against the dataset's classes), uniform ones when ``USE_PRIORS`` is
    off, or empty buffers that a checkpoint must fill (checked at the first forward)."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    num_classes, num_predicates = cfg.MODEL.ROI_HEADS.NUM_CLASSES, rel.NUM_PREDICATES
    if not rel.USE_PRIORS:
        return KnowledgePriors.uniform(num_classes, num_predicates)
    if rel.PRIORS_FILE:
        things, predicates = _class_names(cfg)
        priors = KnowledgePriors.from_file(rel.PRIORS_FILE, things, predicates)
        if priors.rel_prior.shape != (num_classes, num_classes, num_predicates):
            raise ValueError(
                f"priors file {rel.PRIORS_FILE}: rel_prior has shape {tuple(priors.rel_prior.shape)} but the config "
                f"asks for {num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES) and {num_predicates} predicates "
                "(MODEL.ROI_RELATION_HEAD.NUM_PREDICATES)"
            )
        return priors
    return KnowledgePriors.empty(num_classes, num_predicates)


@ROI_HEADS_REGISTRY.register()
class KERNROIHeads(StandardROIHeads):
    """Box head of the (frozen) detector + union feature + object routing + relation head.

    Inputs as StandardROIHeads. In PredCls/SGCls the gt boxes of ``targets`` are the objects (also at test);
    in SGDet the detector's boxes after per-class NMS. Output per image: ``Instances`` with ``pred_boxes,
    pred_classes, scores`` and relation fields ``rel_pair_idxs`` [M, 2], ``rel_scores`` [M, P], sorted by
    triplet score (see :func:`kern_d2.structures.set_relation_predictions`).
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
        **kwargs,
    ):
        super().__init__(**kwargs)
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
        if freeze_detector:
            for module in (self.box_head, self.box_predictor):
                for param in module.parameters():
                    param.requires_grad_(False)

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
        # The union fc head has the box head's architecture; it starts from the detector's box-head weights.
        fc_head = build_box_head(cfg, ShapeSpec(channels=in_channels, height=resolution, width=resolution))
        union_feature = UnionFeatureExtractor(pooler, rel.MASK_SIZE, in_channels, resolution, fc_head)
        object_dim = ret["box_head"].output_shape.channels
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        object_routing = None
        if mode != "predcls" and rel.USE_OBJECT_ROUTING:
            object_routing = ObjectRouting(
                num_classes=num_classes,
                input_dim=object_dim,
                hidden_dim=rel.HIDDEN_DIM,
                output_dim=rel.OUTPUT_DIM,
                num_steps=rel.NUM_STEPS,
                released_code_gate=rel.RELEASED_CODE_GATE,
            )
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
        )
        return ret

    # ---------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A detector checkpoint has no union fc head yet: start it from the detector's box head.
        union_prefix, box_prefix = prefix + "union_feature.fc_head.", prefix + "box_head."
        if not any(k.startswith(union_prefix) for k in state_dict):
            copied = [k for k in list(state_dict) if k.startswith(box_prefix)]
            for key in copied:
                state_dict[union_prefix + key[len(box_prefix):]] = state_dict[key].clone()
            if copied:
                logger.info("Initialised the union-feature fc head from the detector's box head.")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- objects
    def _object_features(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]):
        """Box-head features [N, Fo] and detector class logits [N, C+1] of the given boxes."""
        feats = self.box_pooler([features[f] for f in self.box_in_features], boxes)
        feats = self.box_head(feats)
        class_logits, _ = self.box_predictor(feats)
        return feats, class_logits

    def _detect(self, features: Dict[str, torch.Tensor], proposals: List[Instances]) -> List[Instances]:
        """SGDet objects: the detector's boxes after per-class NMS, at most ``max_detections`` per image."""
        predictions = self.box_predictor(self.box_head(self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )))
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        scores = self.box_predictor.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        detections, _ = fast_rcnn_inference(
            boxes, scores, image_shapes, self.detection_score_thresh, self.detection_nms_thresh, self.max_detections
        )
        return detections

    def _classify_objects(self, obj_feats, detector_logits, num_per_image):
        """Object logits [N, C] from object routing, or from the detector (background column dropped)."""
        if self.object_routing is None:
            return detector_logits[:, :-1]
        return self.object_routing(obj_feats, list(num_per_image), self.priors.obj_cooccurrence)

    # ---------------------------------------------------------------- forward
    def forward(self, images, features, proposals, targets=None):
        del images
        self.priors.check_loaded()
        if self.mode == "sgdet":
            with torch.no_grad():
                objects = self._detect(features, proposals)
            boxes = [d.pred_boxes for d in objects]
        else:
            if targets is None:
                raise ValueError(f"{self.mode}: the gt boxes of each image ('instances' in the inputs) are required")
            boxes = [t.gt_boxes for t in targets]
        num_per_image = [len(b) for b in boxes]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detector):
            obj_feats, detector_logits = self._object_features(features, boxes)
        obj_logits = None
        if self.mode != "predcls":
            obj_logits = self._classify_objects(obj_feats, detector_logits, num_per_image)

        if self.training:
            return [], self._losses(features, boxes, objects if self.mode == "sgdet" else None, targets,
                                    obj_feats, obj_logits)
        image_sizes = [x.image_size for x in (objects if self.mode == "sgdet" else targets)]
        return self._inference(features, boxes, image_sizes, targets, obj_feats, obj_logits), {}

    def _object_labels_and_scores(self, obj_logits, targets, sizes):
        """Per image (labels [Ni], scores [Ni]) used for the relation prior and the triplet scores."""
        if self.mode == "predcls":
            return [(t.gt_classes, torch.ones(len(t), device=t.gt_classes.device)) for t in targets]
        scores, labels = F.softmax(obj_logits.float(), dim=1).max(dim=1)
        return list(zip(labels.split(sizes), scores.split(sizes)))

    def _losses(self, features, boxes, objects, targets, obj_feats, obj_logits):
        sizes = [len(b) for b in boxes]
        obj_feats_per_image = obj_feats.split(sizes)
        losses = {}
        pair_list, label_list, obj_labels_list = [], [], []
        object_targets = []
        pred_labels = (
            obj_logits.argmax(dim=1).split(sizes) if obj_logits is not None else [None] * len(boxes)
        )
        for i, target in enumerate(targets):
            gt_relations = target.gt_relations.tensor
            if self.mode == "sgdet":
                det = objects[i]
                best_iou, best_gt = _best_gt_match(det.pred_boxes, target.gt_boxes)
                matched = best_iou >= self.fg_iou_threshold
                obj_target = torch.where(matched, target.gt_classes[best_gt], torch.full_like(best_gt, -1))
                # Relation prior labels: the matched gt label, else the predicted one.
                labels = torch.where(matched, obj_target, pred_labels[i])
                pair_labels = detected_pair_labels(
                    det.pred_boxes, det.pred_classes, target.gt_boxes, target.gt_classes, gt_relations,
                    self.fg_iou_threshold,
                )
            else:
                obj_target = target.gt_classes
                labels = target.gt_classes
                pair_labels = gt_pair_labels(len(target), gt_relations)
            object_targets.append(obj_target)
            pairs = all_ordered_pairs(len(boxes[i]), obj_feats.device)
            pairs, pair_targets = sample_pairs(
                pairs, pair_labels[pairs[:, 0], pairs[:, 1]], self.pairs_per_image, self.pair_positive_fraction
            )
            pair_list.append(pairs)
            label_list.append(pair_targets)
            obj_labels_list.append(labels)

        rel_logits = self._relation_logits(features, boxes, pair_list, obj_feats_per_image, obj_labels_list)
        rel_targets = torch.cat(label_list)
        if rel_targets.numel():
            losses["loss_relation"] = self.relation_loss_weight * F.cross_entropy(rel_logits, rel_targets)
        else:
            losses["loss_relation"] = rel_logits.sum() * 0.0
        if obj_logits is not None and self.object_routing is not None:
            object_targets = torch.cat(object_targets)
            valid = object_targets >= 0
            losses["loss_object"] = self.object_loss_weight * (
                F.cross_entropy(obj_logits[valid], object_targets[valid]) if valid.any() else obj_logits.sum() * 0.0
            )
        return losses

    def _relation_logits(self, features, boxes, pair_idxs, obj_feats_per_image, obj_labels):
        """Predicate logits [sum Mi, P] of the given pairs (per image lists)."""
        level_features = [features[f] for f in self.relation_in_features]
        union = self.union_feature(level_features, boxes, pair_idxs)
        subj = torch.cat([f[p[:, 0]] for f, p in zip(obj_feats_per_image, pair_idxs)])
        obj = torch.cat([f[p[:, 1]] for f, p in zip(obj_feats_per_image, pair_idxs)])
        subj_labels = torch.cat([l[p[:, 0]] for l, p in zip(obj_labels, pair_idxs)])
        obj_labels_cat = torch.cat([l[p[:, 1]] for l, p in zip(obj_labels, pair_idxs)])
        prior = self.priors.pair_prior(subj_labels, obj_labels_cat)
        return self.relation_head(union, subj.to(union.dtype), obj.to(union.dtype), prior.to(union.dtype))

    def _inference(self, features, boxes, image_sizes, targets, obj_feats, obj_logits):
        sizes = [len(b) for b in boxes]
        obj_feats_per_image = obj_feats.split(sizes)
        labels_scores = self._object_labels_and_scores(obj_logits, targets, sizes)
        num_predicates = self.priors.rel_prior.shape[-1]
        results = []
        for i, image_boxes in enumerate(boxes):
            labels, scores = labels_scores[i]
            pairs = all_ordered_pairs(len(image_boxes), obj_feats.device)
            if self.mode == "sgdet" and self.require_overlap:
                pairs = pairs[overlapping(image_boxes, pairs)]
            image_features = {name: value[i : i + 1] for name, value in features.items()}
            rel_scores = [obj_feats.new_zeros(0, num_predicates)]
            for start in range(0, pairs.shape[0], self.inference_pair_chunk):
                chunk = pairs[start : start + self.inference_pair_chunk]
                logits = self._relation_logits(
                    image_features, [image_boxes], [chunk], [obj_feats_per_image[i]], [labels]
                )
                rel_scores.append(F.softmax(logits.float(), dim=1))
            rel_scores = torch.cat(rel_scores)
            triplet = rel_scores[:, 1:].max(dim=1).values * scores[pairs[:, 0]] * scores[pairs[:, 1]]
            order = torch.argsort(triplet, descending=True, stable=True)
            result = SceneGraphInstances(image_sizes[i])
            result.pred_boxes = Boxes(image_boxes.tensor.clone())
            result.pred_classes = labels
            result.scores = scores
            set_relation_predictions(result, pairs[order], rel_scores[order])
            results.append(result)
        return results


def _best_gt_match(boxes: Boxes, gt_boxes: Boxes) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each box, (IoU [N], index [N]) of its best-overlapping gt box (IoU 0 when there is no gt box)."""
    if len(gt_boxes) == 0:
        zeros = torch.zeros(len(boxes), device=boxes.device)
        return zeros, zeros.long()
    return pairwise_iou(boxes, gt_boxes).max(dim=1)
