"""Relation predictors, chosen by ``MODEL.ROI_RELATION_HEAD.NAME``: KERN, VRFC, FREQ.

Each maps per-pair inputs to predicate logits [M, P] (column 0 = no relation):
``forward(union_features [M, F], subj_features [M, Fo], obj_features [M, Fo], prior [M, P])``,
where ``prior`` (float32) holds p(predicate | subject class, object class) for each pair. A head whose
``uses_union_features`` is False gets ``union_features=None`` (the union feature is then not computed).
"""
import torch
from torch import nn

from detectron2.utils.registry import Registry

from .relation_routing import RelationRouting

ROI_RELATION_HEAD_REGISTRY = Registry("ROI_RELATION_HEAD")
ROI_RELATION_HEAD_REGISTRY.__doc__ = "Relation predictors of KERNROIHeads: union/object features + prior -> logits."


@ROI_RELATION_HEAD_REGISTRY.register()
class KERN(nn.Module):
    """Knowledge-embedded relation routing (gated graph over subject, object and P predicate nodes)."""

    uses_union_features = True

    def __init__(self, cfg, union_dim: int, object_dim: int):
        super().__init__()
        self.routing = RelationRouting(**RelationRouting.from_config(cfg, object_dim, union_dim))

    def forward(self, union_features, subj_features, obj_features, prior):
        return self.routing(subj_features, obj_features, union_features, prior)


@ROI_RELATION_HEAD_REGISTRY.register()
class VRFC(nn.Module):
    """The paper's baseline: a linear classifier on the union feature alone."""

    uses_union_features = True

    def __init__(self, cfg, union_dim: int, object_dim: int):
        super().__init__()
        self.classifier = nn.Linear(union_dim, cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES)

    def forward(self, union_features, subj_features, obj_features, prior):
        return self.classifier(union_features)


@ROI_RELATION_HEAD_REGISTRY.register()
class FREQ(nn.Module):
    """Predicate from the class-pair prior alone (no learned parameters): logits = log prior."""

    uses_union_features = False

    def __init__(self, cfg, union_dim: int, object_dim: int):
        super().__init__()

    def forward(self, union_features, subj_features, obj_features, prior):
        return torch.log(prior.float().clamp_min(1e-12))


def build_relation_head(cfg, union_dim: int, object_dim: int) -> nn.Module:
    return ROI_RELATION_HEAD_REGISTRY.get(cfg.MODEL.ROI_RELATION_HEAD.NAME)(cfg, union_dim, object_dim)
