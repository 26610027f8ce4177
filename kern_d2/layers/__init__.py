"""Layers of kern_d2: the compiled pair-union ops (kern_d2._C) and the modules built on them."""
from .cuda_graphs import GraphedRowFunction
from .pair_union import box_pair_masks, box_pair_masks_reference, pair_union_roi_align, union_boxes
from .pair_union_pooler import PairUnionPooler

__all__ = [
    "GraphedRowFunction",
    "PairUnionPooler",
    "box_pair_masks",
    "box_pair_masks_reference",
    "pair_union_roi_align",
    "union_boxes",
]
