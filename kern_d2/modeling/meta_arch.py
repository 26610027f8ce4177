"""``SceneGraphRCNN``: Detectron2's GeneralizedRCNN for scene graphs (``MODEL.META_ARCHITECTURE: SceneGraphRCNN``).

Differences from GeneralizedRCNN: the gt boxes reach the ROI heads at test time too (PredCls/SGCls score
relations between given boxes), the RPN is skipped when the gt boxes are the objects, the frozen detector
stays in eval mode and out of autograd, and post-processing rescales boxes without dropping any (the
relation fields index the boxes).
"""
from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from kern_d2.config import sgg_mode
from kern_d2.structures import SceneGraphInstances


@META_ARCH_REGISTRY.register()
class SceneGraphRCNN(GeneralizedRCNN):
    """GeneralizedRCNN whose ROI heads (:class:`KERNROIHeads`) predict scene graphs; see the module docstring."""

    @configurable
    def __init__(self, *, sgg_mode: str, freeze_detector: bool, **kwargs):
        """
        Args:
            sgg_mode: "predcls", "sgcls" or "sgdet" (:func:`kern_d2.config.sgg_mode`).
            freeze_detector: the detector (backbone, RPN, box head and box predictor) gets no gradients and stays
                in eval mode (the paper's setting). The one place that freezes it.

        Other arguments are the same as :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.sgg_mode = sgg_mode
        self.freeze_detector = freeze_detector
        if freeze_detector:
            for module in self._detector_modules():
                module.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        rel = cfg.MODEL.ROI_RELATION_HEAD
        ret.update(
            sgg_mode=sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL),
            freeze_detector=rel.FREEZE_DETECTOR,
        )
        return ret

    def _detector_modules(self) -> List[nn.Module]:
        """The parts ``freeze_detector`` freezes."""
        modules = [self.backbone, self.roi_heads.box_head, self.roi_heads.box_predictor]
        if self.proposal_generator is not None:
            modules.append(self.proposal_generator)
        return modules

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_detector:
            for module in self._detector_modules():
                module.eval()
        return self

    def _gt_instances(self, batched_inputs) -> List[Instances]:
        missing = [x.get("file_name", x.get("image_id", "?")) for x in batched_inputs if "instances" not in x]
        if missing:
            raise ValueError(
                f"{self.sgg_mode} needs gt boxes ('instances') for every image; missing for: {missing[:5]}"
            )
        return [x["instances"].to(self.device) for x in batched_inputs]

    def _features_and_proposals(self, batched_inputs, gt_instances=None):
        """(images, features, proposals, proposal losses); proposals only in SGDet. A detector that is not frozen
        trains its RPN on the gt boxes, as in GeneralizedRCNN."""
        images = self.preprocess_image(batched_inputs)
        proposal_losses = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_detector):
            features = self.backbone(images.tensor)
            proposals = None
            if self.sgg_mode == "sgdet":
                if self.proposal_generator is None:
                    raise ValueError("SGDet needs a proposal generator (MODEL.PROPOSAL_GENERATOR)")
                rpn_targets = gt_instances if self.proposal_generator.training else None
                proposals, proposal_losses = self.proposal_generator(images, features, rpn_targets)
        return images, features, proposals, proposal_losses

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        gt_instances = self._gt_instances(batched_inputs)
        images, features, proposals, proposal_losses = self._features_and_proposals(batched_inputs, gt_instances)
        _, losses = self.roi_heads(images, features, proposals, gt_instances)
        losses.update(proposal_losses)
        return losses

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        """Scene graphs of the images; ``detected_instances`` is not supported (SGDet detects, the other modes use
        the gt boxes of the inputs)."""
        assert not self.training
        if detected_instances is not None:
            raise ValueError("SceneGraphRCNN.inference: detected_instances is not supported")
        gt_instances = self._gt_instances(batched_inputs) if self.sgg_mode != "sgdet" else None
        images, features, proposals, _ = self._features_and_proposals(batched_inputs)
        results, _ = self.roi_heads(images, features, proposals, gt_instances)
        if not do_postprocess:
            return results
        return [
            {"instances": rescale_predictions(r, x.get("height", size[0]), x.get("width", size[1]))}
            for r, x, size in zip(results, batched_inputs, images.image_sizes)
        ]


def rescale_predictions(instances: Instances, height: int, width: int) -> SceneGraphInstances:
    """A copy with ``pred_boxes`` scaled from the network's input size to (height, width) and clipped; keeps every
    box (the relation fields index them)."""
    scale_x, scale_y = width / instances.image_size[1], height / instances.image_size[0]
    result = SceneGraphInstances((height, width))
    for name, value in instances.get_fields().items():
        result.set(name, value)
    boxes = Boxes(instances.pred_boxes.tensor.clone())
    boxes.scale(scale_x, scale_y)
    boxes.clip(result.image_size)
    result.pred_boxes = boxes
    return result
