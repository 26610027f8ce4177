"""Independent float64 reference of KERN's released union feature (neural-motifs' ``UnionBoxesAndFeats`` with
``draw_union_boxes``, KERN's ``roi_fmap``), written from the released code's structure with plain numpy/torch and no
kern_d2 import, for tests/modeling/test_union_feature_released.py.

- :func:`draw_union_boxes`: the per-cell loops of ``draw_rectangles.pyx`` (union frame scaled to [0, S], cell value
  clamp(k+1-x1) clamp(x2-k) times the same in y), in float64.
- :func:`released_union_forward`: pooled union + conv stack(rects), then fc6 -> ReLU -> dropout -> fc7, from a
  dict of weights with the released module's layout (``conv.0`` conv, ``conv.2`` BN, ``conv.4`` conv, ``conv.6`` BN,
  ``fc6``, ``fc7``).
"""
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

BATCHNORM_MOMENTUM = 0.01  # neural-motifs / KERN config.py
BATCHNORM_EPS = 1e-5  # torch's BatchNorm2d default, as the released module leaves it


def _clip01(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def draw_union_boxes(box_pairs: np.ndarray, pooling_size: int) -> np.ndarray:
    """box_pairs [N, 8] (subject x1 y1 x2 y2, object x1 y1 x2 y2) -> [N, 2, S, S] float64, rows y, columns x."""
    box_pairs = np.asarray(box_pairs, dtype=np.float64)
    out = np.zeros((box_pairs.shape[0], 2, pooling_size, pooling_size), dtype=np.float64)
    for n in range(box_pairs.shape[0]):
        ux1 = min(box_pairs[n, 0], box_pairs[n, 4])
        uy1 = min(box_pairs[n, 1], box_pairs[n, 5])
        ux2 = max(box_pairs[n, 2], box_pairs[n, 6])
        uy2 = max(box_pairs[n, 3], box_pairs[n, 7])
        width, height = ux2 - ux1, uy2 - uy1
        for b in range(2):
            x1 = (box_pairs[n, 4 * b + 0] - ux1) * pooling_size / width
            y1 = (box_pairs[n, 4 * b + 1] - uy1) * pooling_size / height
            x2 = (box_pairs[n, 4 * b + 2] - ux1) * pooling_size / width
            y2 = (box_pairs[n, 4 * b + 3] - uy1) * pooling_size / height
            for row in range(pooling_size):
                y_part = _clip01(row + 1 - y1) * _clip01(y2 - row)
                for col in range(pooling_size):
                    out[n, b, row, col] = _clip01(col + 1 - x1) * _clip01(x2 - col) * y_part
    return out


def released_rects(boxes: np.ndarray, pairs: np.ndarray, pooling_size: int = 7) -> np.ndarray:
    """The masks the released module feeds its conv stack: draw_union_boxes(pairs, 4 * pooling - 1) - 0.5."""
    boxes, pairs = np.asarray(boxes, dtype=np.float64), np.asarray(pairs)
    pair_rois = np.concatenate([boxes[pairs[:, 0]], boxes[pairs[:, 1]]], axis=1)
    return draw_union_boxes(pair_rois, pooling_size * 4 - 1) - 0.5


def _batch_norm(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str, training: bool) -> torch.Tensor:
    if training:  # batch statistics, running statistics updated in place (torch's momentum convention)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        count = x.numel() // x.shape[1]
        w[name + ".running_mean"].mul_(1 - BATCHNORM_MOMENTUM).add_(BATCHNORM_MOMENTUM * mean)
        w[name + ".running_var"].mul_(1 - BATCHNORM_MOMENTUM).add_(BATCHNORM_MOMENTUM * var * count / (count - 1))
    else:
        mean, var = w[name + ".running_mean"], w[name + ".running_var"]
    shape = (1, -1, 1, 1)
    normalised = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + BATCHNORM_EPS)
    return normalised * w[name + ".weight"].view(shape) + w[name + ".bias"].view(shape)


def released_spatial(rects: torch.Tensor, w: Dict[str, torch.Tensor], training: bool = False) -> torch.Tensor:
    """The released ``self.conv`` Sequential: conv(7, s2, p3) ReLU BN maxpool(3, s2, p1) conv(3, p1) ReLU BN."""
    x = F.conv2d(rects, w["conv.0.weight"], w["conv.0.bias"], stride=2, padding=3)
    x = _batch_norm(torch.relu(x), w, "conv.2", training)
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    x = F.conv2d(x, w["conv.4.weight"], w["conv.4.bias"], stride=1, padding=1)
    return _batch_norm(torch.relu(x), w, "conv.6", training)


def released_roi_fmap(x: torch.Tensor, w: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Flattener + VGG classifier with use_dropout=False, use_relu=False, at eval: fc6 -> ReLU -> (dropout) -> fc7."""
    x = x.reshape(x.shape[0], -1)
    x = torch.relu(x @ w["fc6.weight"].T + w["fc6.bias"])
    return x @ w["fc7.weight"].T + w["fc7.bias"]


def released_union_forward(union_pools: torch.Tensor, rects: torch.Tensor, w: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Eval-mode relation feature: roi_fmap(union_pools + conv(rects))."""
    return released_roi_fmap(union_pools + released_spatial(rects, w), w)
