#!/usr/bin/env python
"""KERN SGDet inference against detector-only inference on the same images.

Models (random weights, no downloads): R50-FPN from configs/Base-KERN.yaml with VG-sized heads (150 classes,
51 predicates incl. "no relation"), random knowledge priors. The detector is Detectron2's GeneralizedRCNN with
StandardROIHeads, carrying the same weights as KERN's frozen detector and post-processing like KERN's detection
step (score > 0, per-class NMS at 0.3, 64 detections per image), so both see the same 64 boxes per image.
KERN scores every candidate pair: all 4,032 ordered pairs of the 64 detections with REQUIRE_OVERLAP False (the
worst case), or only the pairs whose boxes intersect with REQUIRE_OVERLAP True; INFERENCE_PAIR_CHUNK bounds the
pairs routed at once (per image). Both run under torch.no_grad() and autocast, batch 8 synthetic images
600 x 800-1000 already on the device, with post-processing (boxes rescaled; KERN's pairs sorted by triplet score).
Targets: KERN images/s >= 0.6 x the detector's, peak <= 16 GB.

    python benchmarks/bench_sgdet_inference.py                       # GPU, VG sizes, bf16
    python benchmarks/bench_sgdet_inference.py --chunks 2048,4096,8192 --profile
    python benchmarks/bench_sgdet_inference.py --device cpu --tiny   # quick CPU check of the code paths
"""
import argparse

import torch

from common import (
    Sizes,
    autocast,
    build_detector,
    build_kern_model,
    describe_batch,
    detector_config,
    environment_header,
    format_gb,
    format_table,
    kern_config,
    measure,
    profile_top_ops,
    release,
    resolve_device,
    set_cpu_threads,
    synthetic_batch,
    targets_met,
    without_annotations,
)

MIN_RATIO = 0.6  # KERN images/s over the detector's
MAX_PEAK_GB = 16.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--tiny", action="store_true", help="small images, widths and budgets (CPU check)")
    parser.add_argument("--images", type=int, help="batch size (default 8; 2 with --tiny)")
    parser.add_argument("--chunks", default="4096,8192", help="INFERENCE_PAIR_CHUNK values to time (comma-separated)")
    parser.add_argument("--overlap", choices=["both", "off", "on"], default="both",
                        help="REQUIRE_OVERLAP settings to time: off = all pairs (worst case), on = overlapping only")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int,
                        help="untimed calls first, the checked first call included (default 3; 1 with --tiny)")
    parser.add_argument("--repeats", type=int, help="timed calls (default 10; 2 with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="CPU intra-op threads (default: 1 with --tiny on CPU, else torch's)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top 15 ops of KERN's first (worst-case) setting")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides (KEY VALUE ...) applied to both models")
    args = parser.parse_args(argv)
    try:
        args.chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--chunks: expected comma-separated integers, got {args.chunks!r}")
    if not args.chunks or min(args.chunks) <= 0:
        parser.error("--chunks: give at least one positive chunk size")
    args.overlaps = {"both": [False, True], "off": [False], "on": [True]}[args.overlap]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.tiny else 10)
    return args


def make_inference(model, inputs, device, amp: str):
    model.eval()

    def infer():
        with torch.no_grad(), autocast(device, amp):
            return model(inputs)

    return infer


def timed_case(infer, device, args):
    """(first call's outputs, Measurement): the first call is the first warm-up call."""
    outputs = infer()
    result = measure(infer, device, max(args.warmup - 1, 0), args.repeats)
    return outputs, result


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    set_cpu_threads(device, args.tiny, args.threads)
    sizes = Sizes.create(args.tiny, args.images)
    cfg = kern_config("sgdet", device, args.tiny, args.opts)
    rel = cfg.MODEL.ROI_RELATION_HEAD
    num_classes, num_predicates = cfg.MODEL.ROI_HEADS.NUM_CLASSES, rel.NUM_PREDICATES
    print(environment_header("KERN SGDet inference vs detector-only inference", device))
    print(
        f"R{cfg.MODEL.RESNETS.DEPTH}-FPN, {num_classes} classes, {num_predicates} predicates, D={rel.HIDDEN_DIM}, "
        f"T={rel.NUM_STEPS}, {rel.MAX_DETECTIONS} detections/image (NMS {rel.DETECTION_NMS_THRESH}, score > "
        f"{rel.DETECTION_SCORE_THRESH}); autocast {args.amp}; no_grad; median of {args.repeats} calls after "
        f"{args.warmup} warm-up calls" + (" [--tiny: reduced sizes, figures not comparable to VG]" if args.tiny else "")
    )
    batch = synthetic_batch(sizes, num_classes, num_predicates, device, args.seed)
    print(f"inputs: {describe_batch(without_annotations(batch))}")
    inputs = without_annotations(batch)

    # Detector alone; its weights (FrozenBN statistics included) then go into KERN's frozen detector.
    detector = build_detector(detector_config(cfg), batch, args.seed)
    outputs, det = timed_case(make_inference(detector, inputs, device, args.amp), device, args)
    det_counts = [len(o["instances"]) for o in outputs]
    det_boxes = [o["instances"].pred_boxes.tensor.float().cpu() for o in outputs]
    detector_state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    del detector, outputs
    release(device)
    det_ips = sizes.images / (det.median_ms / 1e3)
    table = [["detector only (Faster R-CNN R50-FPN)", "-", "-", "-", f"{det.median_ms:.1f}", f"{det_ips:.1f}",
              format_gb(det.peak_gb), "1.00 (ref)", "-"]]

    model = build_kern_model(cfg, batch, args.seed)
    incompatible = model.load_state_dict(detector_state, strict=False)
    if incompatible.unexpected_keys:
        raise RuntimeError(f"detector weights without a place in KERN: {incompatible.unexpected_keys[:5]}")
    infer = make_inference(model, inputs, device, args.amp)
    heads = model.roi_heads
    notes, profile = [f"detector: detections/image {min(det_counts)}-{max(det_counts)}"], None
    for require_overlap in args.overlaps:
        for chunk in args.chunks:
            # The two settings are read at every call (the config keys REQUIRE_OVERLAP, INFERENCE_PAIR_CHUNK).
            heads.require_overlap, heads.inference_pair_chunk = require_overlap, chunk
            outputs, res = timed_case(infer, device, args)
            pairs = [len(o["instances"].rel_pair_idxs) for o in outputs]
            kern_counts = [len(o["instances"]) for o in outputs]
            same_boxes = all(
                a.shape == b.shape and torch.allclose(a, b, atol=1e-2)
                for a, b in zip(det_boxes, (o["instances"].pred_boxes.tensor.float().cpu() for o in outputs))
            )
            ips = sizes.images / (res.median_ms / 1e3)
            ratio = ips / det_ips
            met = targets_met([
                (f"ratio < {MIN_RATIO:g}", ratio >= MIN_RATIO),
                (f"peak > {MAX_PEAK_GB:g} GB", None if res.peak_gb is None else res.peak_gb <= MAX_PEAK_GB),
            ])
            table.append(["KERN SGDet", "on" if require_overlap else "off", str(chunk),
                          f"{sum(pairs) / len(pairs):.0f}", f"{res.median_ms:.1f}", f"{ips:.1f}",
                          format_gb(res.peak_gb), f"{ratio:.2f}", met])
            notes.append(
                f"KERN overlap {'on' if require_overlap else 'off'}, chunk {chunk}: detections/image "
                f"{min(kern_counts)}-{max(kern_counts)} (same boxes as the detector: {'yes' if same_boxes else 'NO'}), "
                f"pairs/image {min(pairs)}-{max(pairs)}"
            )
            if args.profile and profile is None:
                profile = (require_overlap, chunk, profile_top_ops(infer, device))
            del outputs
    print()
    print(format_table(
        ["case", "overlap", "chunk", "pairs/img", "ms/batch", "images/s", "peak GB", "ratio KERN/det", "target met?"],
        table,
    ))
    print(f"targets: images/s KERN/detector >= {MIN_RATIO:g}, peak <= {MAX_PEAK_GB:g} GB"
          + ("" if device.type == "cuda" else " (peak memory: CUDA only)"))
    print("peak: the CUDA allocator's peak over the timed calls, weights and inputs included")
    for note in notes:
        print(f"  {note}")
    if profile:
        require_overlap, chunk, text = profile
        print(f"\n--- profile: KERN SGDet inference, overlap {'on' if require_overlap else 'off'}, chunk {chunk} ---")
        print(text)


if __name__ == "__main__":
    main()
