#!/usr/bin/env python
"""The union features of SGDet inference over all pairs, each part as kern_d2 runs it against the form it replaced,
bf16 autocast, no_grad, side by side:

(a) PairUnionPooler on all ordered pairs: each unordered pair's union box pooled once and gathered (what inference
    does) vs every ordered pair pooled (what training does);
(b) the spatial mask encoder: channels_last, conv1's bias and the ReLU after the max-pool (the module) vs the
    definition's order in NCHW (conv1 + bias, ReLU, max-pool, conv2 + bias, ReLU) with the same weights.

    python benchmarks/bench_union_features.py        # CUDA: 8 images ~600x1000, 64 boxes, 4,032 pairs each
    python benchmarks/bench_union_features.py --cpu  # small sizes (checks the code paths)
"""

import torch
import torch.nn.functional as F

from common import environment_header, format_table, measure, parse_cpu_or_cuda_arguments
from kern_d2.layers import PairUnionPooler
from kern_d2.modeling.union_feature import SpatialMaskEncoder

STRIDES = (4, 8, 16, 32)  # p2..p5


def encoder_definition(encoder: SpatialMaskEncoder, masks: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(encoder.conv1(masks)), 3, stride=2, padding=1)
    return F.relu(encoder.conv2(x))


def main():
    args, device = parse_cpu_or_cuda_arguments(__doc__, repeats=10)
    cuda = device.type == "cuda"
    images, height, width, channels, boxes_per_image = (8, 600, 1000, 256, 64) if cuda else (2, 200, 320, 16, 12)
    print(environment_header("Union features of all-pairs SGDet inference, as run vs as replaced", device))
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(images, channels, height // s, width // s, generator=g).to(device) for s in STRIDES]
    boxes, pairs = [], []
    for _ in range(images):
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
        wh = 16 + torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
        boxes.append(torch.cat([xy, xy + wh], dim=1).to(device))
        index = torch.arange(boxes_per_image)
        grid = torch.cartesian_prod(index, index)
        pairs.append(grid[grid[:, 0] != grid[:, 1]].to(device))
    num_pairs = sum(p.shape[0] for p in pairs)
    pooler = PairUnionPooler(7, [1.0 / s for s in STRIDES], sampling_ratio=2)
    encoder = SpatialMaskEncoder(channels, 7).to(device)
    masks = (torch.rand(num_pairs, 2, 27, 27, generator=g) > 0.5).float().to(device)
    print(f"{images} images {height}x{width}, FPN p2-p5 with {channels} channels, {boxes_per_image} boxes and "
          f"{num_pairs // images} ordered pairs per image; median of {args.repeats} calls after 3 warm-up calls")

    rois, all_pairs = pooler._pooler_format(boxes, pairs, device)
    cases = [
        ("(a) pooler, each unordered pair once (inference)", lambda: pooler(features, boxes, pairs)),
        ("(a) pooler, every ordered pair", lambda: pooler._pool_levels(features, rois, all_pairs)),
        ("(b) mask encoder as run (channels_last, bias + ReLU after pool)", lambda: encoder(masks)),
        ("(b) mask encoder, definition's order, NCHW", lambda: encoder_definition(encoder, masks)),
    ]
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        errors = [(cases[0][1]().float() - cases[1][1]().float()).abs().max().item(),
                  (cases[2][1]().float() - cases[3][1]().float()).abs().max().item()]
        for name, call in cases:
            rows.append((name, f"{measure(call, device, warmup=3, repeats=args.repeats).median_ms:.2f}"))
    print(format_table(("case", "ms"), rows))
    print(f"max |as run - replaced|: (a) {errors[0]:.1e}, (b) {errors[1]:.1e}")


if __name__ == "__main__":
    main()
