"""The relation (union-box) feature of a subject-object pair.

RoIAlign over the pair's union box (fused op, FPN level by union size) plus a spatial map: the two boxes'
rectangle masks inside the union box through a small conv stack to the same C x R x R, added; then an fc head.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import Boxes

from kern_d2.layers import PairUnionPooler, box_pair_masks


class SpatialMaskEncoder(nn.Module):
    """[M, 2, S, S] subject/object masks -> [M, C, R, R] (conv 7x7/2, max-pool 3x3/2, conv 3x3)."""

    def __init__(self, out_channels: int, resolution: int):
        super().__init__()
        hidden = max(out_channels // 2, 8)
        self.conv1 = nn.Conv2d(2, hidden, 7, stride=2, padding=3)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.resolution = resolution

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        # channels_last: cuDNN's NHWC kernels without NCHW's layout transposes (H100, 32k masks, bf16: 19 -> 15 ms).
        x = F.conv2d(masks.contiguous(memory_format=torch.channels_last), self.conv1.weight, stride=2, padding=3)
        # The max-pool commutes with conv1's per-channel bias and with the ReLU: both run on the 4x smaller map.
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = x.add_(self.conv1.bias.to(x.dtype)[:, None, None]).relu_()
        x = self.conv2(x).relu_()
        if x.shape[-1] != self.resolution:
            x = F.adaptive_max_pool2d(x, self.resolution)
        return x


class UnionFeatureExtractor(nn.Module):
    """Features of image pairs -> [M, fc_head.output_size]."""

    def __init__(self, pooler: PairUnionPooler, mask_size: int, in_channels: int, resolution: int, fc_head: nn.Module):
        super().__init__()
        self.pooler = pooler
        self.mask_size = mask_size
        self.spatial = SpatialMaskEncoder(in_channels, resolution)
        self.fc_head = fc_head

    @property
    def output_size(self) -> int:
        return self.fc_head.output_shape.channels

    def forward(self, features: List[torch.Tensor], boxes: List[Boxes], pair_idxs: List[torch.Tensor]) -> torch.Tensor:
        """features: per level [B, C, H, W]; boxes: per image (``Boxes`` or [Ki, 4] XYXY); pair_idxs: per image
        int64 [Mi, 2] -> [sum Mi, F]."""
        union = self.pooler(features, boxes, pair_idxs)
        offsets = [0]
        for b in boxes[:-1]:
            offsets.append(offsets[-1] + len(b))
        all_boxes = torch.cat([b.tensor if isinstance(b, Boxes) else b for b in boxes])
        all_pairs = torch.cat([p + offset for p, offset in zip(pair_idxs, offsets)])
        masks = box_pair_masks(all_boxes, all_pairs, self.mask_size).to(union.dtype)
        return self.fc_head(union + self.spatial(masks))
