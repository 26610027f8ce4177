"""Model parts of kern_d2; importing this module registers them in Detectron2's registries."""
from .meta_arch import SceneGraphRCNN
from .priors import KnowledgePriors
from .relation_heads import ROI_RELATION_HEAD_REGISTRY, build_relation_head
from .roi_heads import KERNROIHeads
from .toy_backbone import build_toy_fpn_backbone

__all__ = [
    "SceneGraphRCNN",
    "KERNROIHeads",
    "KnowledgePriors",
    "ROI_RELATION_HEAD_REGISTRY",
    "build_relation_head",
    "build_toy_fpn_backbone",
]
