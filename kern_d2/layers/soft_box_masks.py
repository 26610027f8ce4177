"""Soft rectangle masks of box pairs inside their union box: the spatial input of KERN's released union feature.

The released code (neural-motifs' ``draw_union_boxes``, used by KERN) draws, for each pair, the subject's and the
object's box on an S x S grid laid over the pair's union box. Its cell value is separable,
``x_part(k) * y_part(j)``, and each part is a product of two clamps rather than an interval overlap:

    u = (x - x1_union) * S / w_union            (box edges in cell units: the union spans [0, S])
    x_part(k) = clamp(k + 1 - u1, 0, 1) * clamp(u2 - k, 0, 1)        for column k = 0 .. S-1

(rows ``j`` likewise from y). This is the fraction of the cell's extent covered by the box whenever the box's two
edges lie in different cells (or outside the cell); a box edge pair inside one cell gives ``(k+1-u1) * (u2-k)``,
more than its coverage ``u2 - u1`` (e.g. [0.2, 0.6] -> 0.48, not 0.4). Reproduced as released.
"""
from typing import Union

import torch

from detectron2.structures import Boxes


def soft_box_pair_masks(boxes: Union[torch.Tensor, Boxes], pair_idx: torch.Tensor, size: int) -> torch.Tensor:
    """Soft subject/object masks of each pair on a ``size`` x ``size`` grid over the pair's union box.

    Args:
        boxes: [N, 4] XYXY boxes (a ``Boxes`` or a tensor), any device.
        pair_idx: int64 [M, 2] (subject, object) indices into ``boxes``.
        size: S, the grid's cells per side (the released code uses 4 * 7 - 1 = 27).

    Returns:
        [M, 2, S, S] on ``boxes``' device, float64 for float64 boxes, else float32; channel 0 the subject, 1 the
        object; element [m, c, j, k] is row j (y) and column k (x) of the union box, in [0, 1]. The released model
        feeds ``masks - 0.5`` to its conv stack. A union box of zero width (height) gives all-zero masks (the
        released code divides by zero there). No gradient (the released code draws them in numpy).
    """
    boxes = boxes.tensor if isinstance(boxes, Boxes) else boxes
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        pair_boxes = boxes.to(dtype)[pair_idx.to(boxes.device).long()]  # [M, 2, 4]
        low = pair_boxes[:, :, :2].amin(dim=1, keepdim=True)  # union (x1, y1): [M, 1, 2]
        high = pair_boxes[:, :, 2:].amax(dim=1, keepdim=True)  # union (x2, y2)
        extent = (high - low).clamp_min(torch.finfo(dtype).tiny)
        # Edges in cell units, in the released order of operations ((edge - low) * S / extent): [M, 2, 2] each.
        start = (pair_boxes[:, :, :2] - low) * size / extent
        end = (pair_boxes[:, :, 2:] - low) * size / extent
        cells = torch.arange(size, dtype=dtype, device=boxes.device)  # [S]
        # [M, 2 boxes, 2 axes (x, y), S]
        part = (cells + 1 - start[..., None]).clamp_(0, 1) * (end[..., None] - cells).clamp_(0, 1)
        return part[:, :, 1, :, None] * part[:, :, 0, None, :]  # y rows x x columns: [M, 2, S, S]
