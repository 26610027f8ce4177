"""PairUnionPooler: detectron2's ROIPooler for relation pairs, pooling the union box of each pair."""
import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.layers import nonzero_tuple
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.structures import Boxes

from .pair_union import _box_tensor, _square_size, pair_union_roi_align, union_boxes

__all__ = ["PairUnionPooler"]


class PairUnionPooler(nn.Module):
    """
    RoIAlign of the union box of every (subject, object) pair of a batch, over one feature map or an FPN pyramid.
    With several levels each pair goes to the level of its union box by detectron2's rule
    (:func:`assign_boxes_to_levels`); each level is then pooled by one call of the fused op. The result equals
    detectron2's ``ROIPooler`` (``ROIAlignV2`` when ``aligned``) run on the union boxes.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
        aligned: bool = True,
    ):
        """
        Args:
            output_size: side n of the pooled n x n region (or a square (n, n)).
            scales: 1 / stride of each feature map, finest first; strides must be powers of 2 forming a pyramid.
            sampling_ratio: RoIAlign samples per bin along each axis; 0 for ceil(bin size).
            canonical_box_size, canonical_level: a union box of sqrt(area) canonical_box_size is pooled from level
                canonical_level (FPN paper, Eqn. 1).
            aligned: RoIAlignV2 (True) or the legacy RoIAlign (False).
        """
        super().__init__()
        self.output_size = _square_size(output_size)
        if self.output_size <= 0:
            raise ValueError(f"PairUnionPooler: output_size must be positive, got {output_size}")
        self.scales = [float(s) for s in scales]
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"PairUnionPooler: scales must be a non-empty list of positive floats, got {scales}")
        min_level, max_level = -math.log2(self.scales[0]), -math.log2(self.scales[-1])
        if not (math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))):
            raise ValueError(f"PairUnionPooler: feature strides must be powers of 2, got scales {scales}")
        self.min_level, self.max_level = int(round(min_level)), int(round(max_level))
        if len(self.scales) != self.max_level - self.min_level + 1 or self.min_level < 0:
            raise ValueError(f"PairUnionPooler: scales {scales} do not form a pyramid of strides 2^k, k >= 0")
        if canonical_box_size <= 0:
            raise ValueError(f"PairUnionPooler: canonical_box_size must be positive, got {canonical_box_size}")
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.aligned = bool(aligned)

    def forward(
        self,
        features: List[torch.Tensor],
        boxes: List[Union[Boxes, torch.Tensor]],
        pair_idxs: List[torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            features: one [B, C, Hl, Wl] map per scale.
            boxes: per image, its boxes (``Boxes`` or [Ki, 4] XYXY tensor) in image coordinates.
            pair_idxs: per image, int64 [Mi, 2] (subject, object) indices into that image's boxes.

        Returns:
            [sum Mi, C, n, n]: the pairs of image 0, then those of image 1, ...
        """
        if not isinstance(features, (list, tuple)) or len(features) != len(self.scales):
            num = len(features) if isinstance(features, (list, tuple)) else type(features).__name__
            raise ValueError(f"PairUnionPooler: expected {len(self.scales)} feature maps (one per scale), got {num}")
        batch_size, channels = features[0].shape[:2]
        for level, x in enumerate(features):
            if x.dim() != 4 or x.shape[:2] != features[0].shape[:2]:
                raise ValueError(
                    f"PairUnionPooler: feature map {level} has shape {tuple(x.shape)}; all levels must be "
                    f"[{batch_size}, {channels}, H, W]"
                )
        if len(boxes) != batch_size or len(pair_idxs) != batch_size:
            raise ValueError(
                f"PairUnionPooler: features have batch size {batch_size} but got boxes for {len(boxes)} images "
                f"and pair_idxs for {len(pair_idxs)} images"
            )
        size = self.output_size
        if batch_size == 0:
            return features[0].new_zeros((0, channels, size, size))
        rois, pairs = self._pooler_format(boxes, pair_idxs, features[0].device)
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference: (s, o) and (o, s) share their union box, so pool it once (all-pairs SGDet has every pair
            # twice). Not in training, where few sampled pairs repeat and the extra device sync would cost more.
            unordered, inverse = _unordered_pairs(pairs, rois.shape[0])
            if unordered.shape[0] < pairs.shape[0]:
                return self._pool_levels(features, rois, unordered).index_select(0, inverse)
        return self._pool_levels(features, rois, pairs)

    def _pool_levels(self, features: List[torch.Tensor], rois: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """[M, C, n, n] for pairs [M, 2] into rois [K, 5], each pair from the level of its union box."""
        channels, size = features[0].shape[1], self.output_size
        if len(self.scales) == 1:
            return self._pool(features[0], self.scales[0], rois, pairs)
        levels = assign_boxes_to_levels(
            [Boxes(union_boxes(rois[:, 1:], pairs))],
            self.min_level,
            self.max_level,
            self.canonical_box_size,
            self.canonical_level,
        )
        if torch.compiler.is_compiling():  # data-dependent sizes: one nonzero per level traces best
            output = features[0].new_zeros((pairs.shape[0], channels, size, size))
            for level, (x, scale) in enumerate(zip(features, self.scales)):
                inds = nonzero_tuple(levels == level)[0]
                output.index_put_((inds,), self._pool(x, scale, rois, pairs[inds]))
            return output
        # Eager: the pairs grouped by level with a single device sync (the level sizes), every row written once.
        counts = torch.bincount(levels, minlength=len(self.scales)).tolist()
        order = torch.argsort(levels, stable=True)
        output = features[0].new_empty((pairs.shape[0], channels, size, size))
        start = 0
        for x, scale, count in zip(features, self.scales, counts):  # empty levels too: every map is in the graph
            inds = order[start : start + count]
            output.index_copy_(0, inds, self._pool(x, scale, rois, pairs[inds]))
            start += count
        return output

    def _pool(self, x: torch.Tensor, scale: float, rois: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return pair_union_roi_align(x, rois, pairs, self.output_size, scale, self.sampling_ratio, self.aligned)

    @staticmethod
    def _pooler_format(boxes, pair_idxs, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """All boxes as [K, 5] (batch index, x1, y1, x2, y2) and all pairs as int64 [M, 2] rows into them."""
        box_tensors, pair_tensors, offset = [], [], 0
        for i, (b, p) in enumerate(zip(boxes, pair_idxs)):
            b = _box_tensor(b)
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"PairUnionPooler: boxes of image {i} must be [K, 4] XYXY, got {tuple(b.shape)}")
            if p.dim() != 2 or p.shape[1] != 2:
                raise ValueError(f"PairUnionPooler: pair_idxs of image {i} must be [M, 2], got {tuple(p.shape)}")
            if p.dtype != torch.int64:
                raise ValueError(f"PairUnionPooler: pair_idxs of image {i} must be int64, got {p.dtype}")
            box_tensors.append(torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1))
            pair_tensors.append(p + offset)
            offset += b.shape[0]
        rois = torch.cat(box_tensors).to(device)
        pairs = torch.cat(pair_tensors).to(device)
        return rois, pairs


def _unordered_pairs(pairs: torch.Tensor, num_boxes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The distinct unordered pairs of ``pairs`` [M, 2] (rows into ``num_boxes`` boxes) as [U, 2] (smaller index
    first) and, per pair, the row of its unordered pair (int64 [M]). One device sync (the size U)."""
    lo, hi = pairs.min(dim=1).values, pairs.max(dim=1).values
    keys, inverse = torch.unique(lo * num_boxes + hi, return_inverse=True)
    return torch.stack([keys // num_boxes, keys % num_boxes], dim=1), inverse
