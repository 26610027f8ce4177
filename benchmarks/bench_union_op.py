"""Benchmark of the fused pair-union ops against the composite they replace.

(a) fused: PairUnionPooler (kern_d2::pair_union_roi_align once per FPN level, union boxes computed in the kernel)
    + kern_d2::box_pair_masks;
(b) composite: union boxes materialised, detectron2's ROIPooler (torchvision roi_align per FPN level) and the
    masks drawn with plain PyTorch ops (kern_d2.layers.box_pair_masks_reference).

Forward and forward+backward (gradient w.r.t. the FPN features) of both, in fp32 and bf16. torchvision has no
bf16 CUDA roi_align kernel, so in bf16 the composite casts the features to fp32, pools, and casts the result back;
the fused path runs in bf16 with fp32 accumulation. Reports the median of --repeats timed runs after --warmup
runs (benchmarks/common.py: synchronised around each), the peak extra memory of a forward+backward (the CUDA
allocator's peak above the memory in use before the calls), the largest differences between the two paths, and
target (1): composite / fused >= 2x forward+backward with the fp32 outputs within 1e-5.

    python benchmarks/bench_union_op.py                 # CUDA if available, else a smaller CPU run
    python benchmarks/bench_union_op.py --pairs 8192 --repeats 50
"""
import argparse
import math

import torch

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from common import environment_header, format_table, measure, resolve_device, targets_met
from kern_d2.layers import PairUnionPooler, box_pair_masks, box_pair_masks_reference, union_boxes

STRIDES = (4, 8, 16, 32)  # p2..p5
MIN_RATIO = 2.0  # composite / fused, forward+backward
MAX_ERROR = 1e-5  # max |fused - composite| of the pooled output in fp32


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--images", type=int, help="batch size (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--height", type=int, help="image height (default 600 on CUDA, 300 on CPU)")
    parser.add_argument("--width", type=int, help="image width (default 1000 on CUDA, 500 on CPU)")
    parser.add_argument("--channels", type=int, help="FPN channels (default 256 on CUDA, 32 on CPU)")
    parser.add_argument("--pairs", type=int, help="pairs in the batch (default 4096 on CUDA, 512 on CPU)")
    parser.add_argument("--boxes-per-image", type=int, default=64)
    parser.add_argument("--output-size", type=int, default=7)
    parser.add_argument("--mask-size", type=int, default=27)
    parser.add_argument("--sampling-ratio", type=int, default=0)
    parser.add_argument("--repeats", type=int, help="timed runs (default 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    defaults = dict(images=(8, 2), height=(600, 300), width=(1000, 500), channels=(256, 32), pairs=(4096, 512),
                    repeats=(20, 5))
    for name, (on_cuda, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    return args


def make_inputs(args):
    """FPN features (p2..p5 of images padded to a multiple of 32), boxes and pairs per image."""
    g = torch.Generator().manual_seed(args.seed)
    pad_h = math.ceil(args.height / 32) * 32
    pad_w = math.ceil(args.width / 32) * 32
    features = [torch.randn(args.images, args.channels, pad_h // s, pad_w // s, generator=g) for s in STRIDES]
    boxes, pair_idxs = [], []
    k = args.boxes_per_image
    for i in range(args.images):
        # Sides log-uniform in [16, image side], aspect ratio in [1/2, 2]: unions fall on every level.
        side = torch.exp(torch.empty(k).uniform_(math.log(16), math.log(max(args.height, args.width)), generator=g))
        aspect = torch.exp(torch.empty(k).uniform_(-math.log(2), math.log(2), generator=g))
        w, h = side * aspect.sqrt(), side / aspect.sqrt()
        cx = torch.rand(k, generator=g) * args.width
        cy = torch.rand(k, generator=g) * args.height
        b = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
        b[:, 0::2] = b[:, 0::2].clamp(0, args.width)
        b[:, 1::2] = b[:, 1::2].clamp(0, args.height)
        boxes.append(b)
        m = args.pairs // args.images + (1 if i < args.pairs % args.images else 0)
        subject = torch.randint(0, k, (m,), generator=g)
        object_ = (subject + torch.randint(1, k, (m,), generator=g)) % k
        pair_idxs.append(torch.stack([subject, object_], dim=1))
    return features, boxes, pair_idxs


class Paths:
    """The two ways of computing (union features [M, C, n, n], masks [M, 2, s, s]) for a batch."""

    def __init__(self, args, boxes, pair_idxs):
        scales = [1.0 / s for s in STRIDES]
        self.fused_pooler = PairUnionPooler(args.output_size, scales, args.sampling_ratio, aligned=True)
        self.roi_pooler = ROIPooler(args.output_size, scales, args.sampling_ratio, "ROIAlignV2")
        self.mask_size = args.mask_size
        self.boxes, self.pair_idxs = boxes, pair_idxs
        # The masks take all pairs of the batch as rows into all boxes (same input for both paths).
        offsets = torch.tensor([0] + [len(b) for b in boxes[:-1]]).cumsum(0).tolist()
        self.all_boxes = torch.cat(boxes)
        self.all_pairs = torch.cat([p + o for p, o in zip(pair_idxs, offsets)])

    def fused(self, features):
        pooled = self.fused_pooler(features, self.boxes, self.pair_idxs)
        return pooled, box_pair_masks(self.all_boxes, self.all_pairs, self.mask_size)

    def composite(self, features):
        unions = [Boxes(union_boxes(b, p)) for b, p in zip(self.boxes, self.pair_idxs)]
        dtype = features[0].dtype
        if dtype == torch.bfloat16:  # torchvision's roi_align has no bf16 kernel
            pooled = self.roi_pooler([x.float() for x in features], unions).to(dtype)
        else:
            pooled = self.roi_pooler(features, unions)
        return pooled, box_pair_masks_reference(self.all_boxes, self.all_pairs, self.mask_size)


def clear_grads(features):
    for x in features:
        x.grad = None


def run_once(path, features, grad_out, backward):
    clear_grads(features)
    pooled, masks = path(features)
    if backward:
        pooled.backward(grad_out)
    return pooled, masks


def time_path(path, features, grad_out, backward, args):
    """Measurement (median ms, peak above the memory in use before) of one call: forward, or forward+backward.
    The gradients are dropped after each call, so that the peak counts the ones the call allocates."""
    def call():
        run_once(path, features, grad_out, backward)
        clear_grads(features)

    return measure(call, args.device, args.warmup, args.repeats)


def bench_dtype(dtype, paths, features, args):
    features = [x.detach().to(args.device, dtype).requires_grad_(True) for x in features]
    num_pairs = paths.all_pairs.shape[0]
    grad_out = torch.randn(
        num_pairs, features[0].shape[1], args.output_size, args.output_size,
        generator=torch.Generator().manual_seed(args.seed + 1),
    ).to(args.device, dtype)
    rows, results = {}, {}
    for name in ("fused", "composite"):
        path = getattr(paths, name)
        forward = time_path(path, features, grad_out, False, args)
        total = time_path(path, features, grad_out, True, args)
        pooled, masks = run_once(path, features, grad_out, backward=True)
        results[name] = (pooled.detach().float(), masks, [x.grad.float() for x in features])
        rows[name] = (forward.median_ms, total.median_ms, total.extra_bytes)
    (out_a, masks_a, grads_a), (out_b, masks_b, grads_b) = results["fused"], results["composite"]
    errors = dict(
        out=(out_a - out_b).abs().max().item() if out_a.numel() else 0.0,
        grad=max((a - b).abs().max().item() for a, b in zip(grads_a, grads_b)),
        masks_equal=torch.equal(masks_a, masks_b),
    )
    return rows, errors


def mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def main():
    args = parse_args()
    title = "Fused pair-union ops (PairUnionPooler + box_pair_masks) vs the composite they replace"
    print(environment_header(title, args.device))
    if args.device.type == "cpu":
        print("CPU run: smaller default sizes; timings are not comparable to GPU numbers.")
    print(
        f"{args.images} images {args.height}x{args.width}, FPN p2-p5 with {args.channels} channels, "
        f"{args.boxes_per_image} boxes/image, {args.pairs} pairs, output {args.output_size}x{args.output_size}, "
        f"masks {args.mask_size}x{args.mask_size}, sampling_ratio {args.sampling_ratio}; "
        f"median of {args.repeats} runs after {args.warmup} warm-up runs; peak: the allocator's peak of a "
        "forward+backward above the memory in use before it (CUDA only)"
    )
    features, boxes, pair_idxs = make_inputs(args)
    boxes = [b.to(args.device) for b in boxes]
    pair_idxs = [p.to(args.device) for p in pair_idxs]
    paths = Paths(args, boxes, pair_idxs)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    table, summary, checks = [], [], []
    for key in args.dtypes.split(","):
        rows, errors = bench_dtype(dtypes[key], paths, features, args)
        for name, (forward_ms, total_ms, extra) in rows.items():
            table.append([key, name, f"{forward_ms:.3f}", f"{total_ms:.3f}", mib(extra)])
        (fused_fwd, fused_total, _), (comp_fwd, comp_total, _) = rows["fused"], rows["composite"]
        summary.append(
            f"{key}: composite / fused = {comp_fwd / fused_fwd:.2f}x forward, {comp_total / fused_total:.2f}x "
            f"forward+backward; max |fused - composite| = {errors['out']:.3g} (output), {errors['grad']:.3g} "
            f"(feature grads); masks identical: {errors['masks_equal']}"
        )
        checks.append((f"{key} fwd+bwd < {MIN_RATIO:g}x", comp_total / fused_total >= MIN_RATIO))
        if key == "fp32":
            checks.append((f"fp32 output err > {MAX_ERROR:g}", errors["out"] <= MAX_ERROR))
            checks.append(("masks differ", errors["masks_equal"]))
    print(format_table(["dtype", "path", "forward ms", "fwd+bwd ms", "peak MiB"], table))
    if "bf16" in args.dtypes:
        summary.append("bf16 composite: features cast to fp32 for torchvision's roi_align, result cast back to bf16")
    print("\n".join(summary))
    print(f"target (1): composite / fused forward+backward >= {MIN_RATIO:g}x, fp32 max output error <= {MAX_ERROR:g}, "
          f"identical masks: {targets_met(checks)}")


if __name__ == "__main__":
    main()
