"""Trainable fc heads of the relation part that start from the detector's box head (``ROI_BOX_HEAD`` 2-fc).

KERN's released code fine-tunes copies of VGG's fc6/fc7 for its object and union features, with dropout after each
ReLU; Detectron2's counterpart of fc6/fc7 is the box head's fc1/fc2 (``FastRCNNConvFCHead``). The layers keep the
box head's names (``fc1``, ``fc2``, ...), so the detector's weights copy over by name.
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from torch import nn

from detectron2.layers import ShapeSpec

__all__ = ["DropoutFCHead", "box_head_fc_dims"]


def box_head_fc_dims(cfg) -> List[int]:
    """The fc sizes of the config's box head (``NUM_FC`` x ``FC_DIM``); conv layers are not supported."""
    head = cfg.MODEL.ROI_BOX_HEAD
    if head.NUM_CONV:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.NUM_CONV is {head.NUM_CONV}: the fine-tuned fc heads of the relation part "
            "(MODEL.ROI_RELATION_HEAD.OBJECT_FEATURES 'finetuned', UNION_FEATURE 'released') copy an fc-only box head"
        )
    if not head.NUM_FC:
        raise ValueError("MODEL.ROI_BOX_HEAD.NUM_FC is 0: there are no fc layers to fine-tune")
    return [head.FC_DIM] * head.NUM_FC


class DropoutFCHead(nn.Module):
    """[M, C, H, W] pooled features -> [M, fc_dims[-1]]: flatten, then fc -> ReLU -> dropout per layer.

    Args:
        input_shape: the pooled feature's channels, height and width.
        fc_dims: output size of each fc layer.
        dropout: dropout probability after each ReLU.
        final_relu: False leaves the last fc linear, without its ReLU and dropout (the released union head:
            fc6 -> ReLU -> dropout -> fc7).
    """

    def __init__(self, input_shape: ShapeSpec, fc_dims: List[int], dropout: float = 0.5, final_relu: bool = True):
        super().__init__()
        size = int(np.prod((input_shape.channels, input_shape.height or 1, input_shape.width or 1)))
        self.num_fc = len(fc_dims)
        self.final_relu = final_relu
        self.dropout = nn.Dropout(dropout)
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(size, dim)
            weight_init.c2_xavier_fill(fc)  # as Detectron2's box head; the detector's weights replace it at load
            self.add_module(f"fc{k + 1}", fc)
            size = dim
        self._output_size = size

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, start_dim=1)
        for k in range(1, self.num_fc + 1):
            x = getattr(self, f"fc{k}")(x)
            if k < self.num_fc or self.final_relu:
                x = self.dropout(torch.relu(x))
        return x
