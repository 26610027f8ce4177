"""The relation (union-box) feature of a subject-object pair.

RoIAlign over the pair's union box (fused op, FPN level by union size) plus a spatial map: the two boxes'
rectangle masks inside the union box through a small conv stack to the same C x R x R, added; then an fc head.

Two variants (``MODEL.ROI_RELATION_HEAD.UNION_FEATURE``): "kern_d2" (binary masks, :class:`SpatialMaskEncoder`, the
box head's fc head) and "released", KERN's released code (soft masks - 0.5, :class:`ReleasedSpatialMaskEncoder`,
:class:`ReleasedUnionFCHead`).
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes

from kern_d2.layers import PairUnionPooler, box_pair_masks
from kern_d2.layers.soft_box_masks import soft_box_pair_masks

from .fc_heads import DropoutFCHead

UNION_FEATURE_VARIANTS = ("kern_d2", "released")
# BatchNorm momentum of the released spatial encoder (neural-motifs' config.BATCHNORM_MOMENTUM, torch's convention:
# running = (1 - momentum) * running + momentum * batch).
RELEASED_BN_MOMENTUM = 0.01


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


def _released_encoder_output_size(mask_size: int) -> int:
    """Side of the released encoder's output for S x S masks: conv 7x7/2 pad 3, then max-pool 3x3/2 pad 1."""
    after_conv = (mask_size - 1) // 2 + 1
    return (after_conv - 1) // 2 + 1


class ReleasedSpatialMaskEncoder(nn.Module):
    """The released code's spatial stack: [M, 2, S, S] masks (soft masks - 0.5) -> [M, C, R, R].

    conv1 (2 -> C/2, 7x7, stride 2, pad 3, bias) -> ReLU -> BatchNorm -> max-pool (3x3, stride 2, pad 1)
    -> conv2 (C/2 -> C, 3x3, pad 1, bias) -> ReLU -> BatchNorm; BatchNorm momentum 0.01, eps 1e-5, affine.
    R = ceil(ceil(S / 2) / 2) must equal ``resolution`` (the released code adds the result to the 7 x 7 union
    RoIAlign with S = 4 * 7 - 1 = 27).
    """

    def __init__(self, out_channels: int, resolution: int, mask_size: int = 27,
                 momentum: float = RELEASED_BN_MOMENTUM):
        super().__init__()
        if _released_encoder_output_size(mask_size) != resolution:
            raise ValueError(
                f"released union feature: {mask_size} x {mask_size} masks give "
                f"{_released_encoder_output_size(mask_size)} x {_released_encoder_output_size(mask_size)} maps, "
                f"not the union RoIAlign's {resolution} x {resolution} (MODEL.ROI_RELATION_HEAD.MASK_SIZE = "
                f"4 * POOLER_RESOLUTION - 1 = {4 * resolution - 1} fits)"
            )
        hidden = out_channels // 2
        self.conv1 = nn.Conv2d(2, hidden, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(hidden, momentum=momentum)
        self.conv2 = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=momentum)
        self.resolution = resolution

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.shape[0] == 0:  # BatchNorm's training statistics of an empty batch would be NaN
            side = _released_encoder_output_size(masks.shape[-1])
            # The parameters still join the graph (zero gradients): DistributedDataParallel fails the next step when
            # a rank's step left parameters without a gradient (SGDet: a batch without pairs on one GPU).
            unused = sum(p.sum() for p in self.parameters()) * 0.0
            return masks.new_zeros((0, self.conv2.out_channels, side, side)) + unused
        x = self.bn1(F.relu(self.conv1(masks)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        return self.bn2(F.relu(self.conv2(x)))


class ReleasedUnionFCHead(DropoutFCHead):
    """The released union fc head (VGG's classifier up to fc7, without its last ReLU and dropout): flatten -> fc1
    ("fc6") -> ReLU -> dropout(0.5) -> fc2 ("fc7"), no final ReLU. [M, C, R, R] -> [M, fc_dims[-1]].

    ``fc_dims``: the box head's fc sizes (:func:`kern_d2.modeling.fc_heads.box_head_fc_dims`; two, as fc6/fc7,
    for the released architecture). Layer names fc1, fc2 as Detectron2's ``FastRCNNConvFCHead``, so the detector's
    box-head weights load into it (``KERNROIHeads._load_from_state_dict``).
    """

    def __init__(self, input_shape: ShapeSpec, fc_dims: List[int], dropout: float = 0.5):
        super().__init__(input_shape, list(fc_dims), dropout=dropout, final_relu=False)


class UnionFeatureExtractor(nn.Module):
    """Features of image pairs -> [M, fc_head.output_size].

    ``variant`` "kern_d2": binary rectangle masks through :class:`SpatialMaskEncoder`; "released": soft masks
    (:func:`kern_d2.layers.soft_box_masks.soft_box_pair_masks`) - 0.5 through :class:`ReleasedSpatialMaskEncoder`
    (pair it with a :class:`ReleasedUnionFCHead`).
    """

    def __init__(self, pooler: PairUnionPooler, mask_size: int, in_channels: int, resolution: int, fc_head: nn.Module,
                 variant: str = "kern_d2"):
        super().__init__()
        if variant not in UNION_FEATURE_VARIANTS:
            raise ValueError(f"union feature variant must be one of {UNION_FEATURE_VARIANTS}, got {variant!r}")
        self.pooler = pooler
        self.mask_size = mask_size
        self.variant = variant
        if variant == "released":
            self.spatial = ReleasedSpatialMaskEncoder(in_channels, resolution, mask_size)
        else:
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
        if self.variant == "released":
            masks = (soft_box_pair_masks(all_boxes, all_pairs, self.mask_size) - 0.5).to(union.dtype)
        else:
            masks = box_pair_masks(all_boxes, all_pairs, self.mask_size).to(union.dtype)
        return self.fc_head(union + self.spatial(masks))
