#!/usr/bin/env python
"""KERN SGDet inference against detector-only inference on the same images.

Models (random weights, no downloads): R50-FPN from configs/Base-KERN.yaml with VG-sized heads (150 classes,
51 predicates incl. "no relation"), random knowledge priors. Detector-only baselines, both with the weights of
KERN's frozen detector and its detection settings (score > 0, per-class NMS at 0.3, 64 detections per image):
- reference: KERN's own detector part (backbone, RPN, box head) with KERN's detection post-processing
  (``KERNROIHeads._detect``: per-class NMS on the top-scoring candidates only, kern_d2/modeling/detections.py),
  boxes rescaled as Detectron2's GeneralizedRCNN does. KERN SGDet = this + relation scoring, so the ratio
  measures what the relation part costs;
- extra row: Detectron2's GeneralizedRCNN + StandardROIHeads with its default post-processing
  (``fast_rcnn_inference``). With a score threshold of 0 all 1,000 x 150 candidates go into per-class NMS, where
  torchvision loops over the classes: this post-processing, not the network, dominates its time.
KERN scores every candidate pair: all 4,032 ordered pairs of the 64 detections with REQUIRE_OVERLAP False (the
worst case), or only the pairs whose boxes intersect with REQUIRE_OVERLAP True; INFERENCE_PAIR_CHUNK bounds the
pairs routed at once (per image). All run under torch.no_grad() and autocast, batch 8 synthetic images
600 x 800-1000 already on the device, with post-processing (boxes rescaled; KERN's pairs sorted by triplet score).
Targets: KERN images/s >= 0.6 x the reference detector's, peak <= 16 GB.

    python benchmarks/bench_sgdet_inference.py                       # GPU, VG sizes, bf16
    python benchmarks/bench_sgdet_inference.py --chunks 2048,4096,8192 --profile
    python benchmarks/bench_sgdet_inference.py --device cpu --tiny   # quick CPU check of the code paths
"""
import argparse
import itertools

import torch

from detectron2.modeling import GeneralizedRCNN

from common import (
    Sizes,
    add_run_arguments,
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
    resolve_run_arguments,
    synthetic_batch,
    targets_met,
    without_annotations,
)

MIN_RATIO = 0.6  # KERN images/s over the reference detector's
MAX_PEAK_GB = 16.0
REFERENCE = "detector only, KERN's detection post-processing"
D2_DEFAULT = "detector only, Detectron2 default post-processing (extra)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "calls", "small images, widths and budgets (CPU check)")
    parser.add_argument("--chunks", default="4096,8192", help="INFERENCE_PAIR_CHUNK values to time (comma-separated)")
    parser.add_argument("--overlap", choices=["both", "off", "on"], default="both",
                        help="REQUIRE_OVERLAP settings to time: off = all pairs (worst case), on = overlapping only")
    parser.add_argument("--cuda-graphs", choices=["both", "off", "on"], default="both",
                        help="INFERENCE_CUDA_GRAPHS settings to time (on: CUDA only)")
    parser.add_argument("--no-d2-default", action="store_true",
                        help="skip the extra row (Detectron2's default post-processing: slow, see above)")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top 15 ops of the reference detector and of KERN's first "
                             "(worst-case) setting")
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
    args.graphs = {"both": [False, True], "off": [False], "on": [True]}[args.cuda_graphs]
    return args


def make_inference(forward, inputs, device, amp: str):
    """A closure running ``forward(inputs)`` under no_grad and autocast (``forward``'s model in eval mode)."""
    def infer():
        with torch.no_grad(), autocast(device, amp):
            return forward(inputs)

    return infer


def kern_detector_part(model):
    """Detector-only inference with KERN's model (eval mode): its frozen backbone, RPN and box head and its SGDet
    detection step ``roi_heads._detect``, boxes rescaled to the input sizes as GeneralizedRCNN.inference does."""
    def detect(inputs):
        images, features, proposals, _ = model._features_and_proposals(inputs)
        detections = model.roi_heads._detect(features, proposals)
        return GeneralizedRCNN._postprocess(detections, inputs, images.image_sizes)

    return detect


def timed_case(infer, device, args):
    """(first call's outputs, Measurement): the first call is the first warm-up call."""
    outputs = infer()
    result = measure(infer, device, max(args.warmup - 1, 0), args.repeats)
    return outputs, result


def boxes_of(outputs):
    return [o["instances"].pred_boxes.tensor.float().cpu() for o in outputs]


def same_boxes(a, b) -> str:
    same = len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-2) for x, y in zip(a, b))
    return "yes" if same else "NO"


def detection_counts(outputs) -> str:
    counts = [len(o["instances"]) for o in outputs]
    return f"{min(counts)}-{max(counts)}"


def images_per_s(images: int, ms: float) -> float:
    return images / (ms / 1e3)


def d2_default_detector(cfg, batch, inputs, device, args):
    """Detectron2's own detector and post-processing: (table row, note, its boxes, its weights for KERN)."""
    detector = build_detector(detector_config(cfg), batch, args.seed)
    detector.eval()
    outputs, res = timed_case(make_inference(detector, inputs, device, args.amp), device, args)
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    boxes, counts = boxes_of(outputs), detection_counts(outputs)
    del detector, outputs
    release(device)
    row = [D2_DEFAULT, "-", "-", "-", "-", f"{res.median_ms:.1f}", f"{images_per_s(len(inputs), res.median_ms):.1f}",
           format_gb(res.peak_gb), "-", "-"]
    return row, f"{D2_DEFAULT}: detections/image {counts}", boxes, state


def main(argv=None):
    args = parse_args(argv)
    device = resolve_run_arguments(args)
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
    inputs = without_annotations(batch)
    print(f"inputs: {describe_batch(inputs)}")

    table, notes, profiles = [], [], []
    d2_boxes = None
    if not args.no_d2_default:
        # Detectron2's detector first; its weights (FrozenBN statistics included) then go into KERN's detector.
        row, note, d2_boxes, detector_state = d2_default_detector(cfg, batch, inputs, device, args)
        table.append(row)
        notes.append(note)
    model = build_kern_model(cfg, batch, args.seed)
    if d2_boxes is not None:
        incompatible = model.load_state_dict(detector_state, strict=False)
        if incompatible.unexpected_keys:
            raise RuntimeError(f"detector weights without a place in KERN: {incompatible.unexpected_keys[:5]}")
        del detector_state
    model.eval()

    detect = make_inference(kern_detector_part(model), inputs, device, args.amp)
    outputs, ref = timed_case(detect, device, args)
    ref_ips = images_per_s(sizes.images, ref.median_ms)
    ref_boxes = boxes_of(outputs)
    table.append([REFERENCE, "-", "-", "-", "-", f"{ref.median_ms:.1f}", f"{ref_ips:.1f}", format_gb(ref.peak_gb),
                  "1.00 (ref)", "-"])
    notes.append(f"{REFERENCE}: detections/image {detection_counts(outputs)}"
                 + ("" if d2_boxes is None else f" (same boxes as Detectron2's: {same_boxes(ref_boxes, d2_boxes)})"))
    if args.profile:
        profiles.append((REFERENCE, profile_top_ops(detect, device)))
    del outputs

    infer = make_inference(model, inputs, device, args.amp)
    heads = model.roi_heads
    graphs_settings = args.graphs if device.type == "cuda" else [False]
    for graphs, require_overlap, chunk in itertools.product(graphs_settings, args.overlaps, args.chunks):
        # The settings are read at every call (REQUIRE_OVERLAP, INFERENCE_PAIR_CHUNK, INFERENCE_CUDA_GRAPHS).
        heads.require_overlap, heads.inference_pair_chunk = require_overlap, chunk
        heads.relation_head.routing.inference_cuda_graphs = graphs
        outputs, res = timed_case(infer, device, args)
        pairs = [len(o["instances"].rel_pair_idxs) for o in outputs]
        ips = images_per_s(sizes.images, res.median_ms)
        ratio = ips / ref_ips
        met = targets_met([
            (f"ratio < {MIN_RATIO:g}", ratio >= MIN_RATIO),
            (f"peak > {MAX_PEAK_GB:g} GB", None if res.peak_gb is None else res.peak_gb <= MAX_PEAK_GB),
        ])
        overlap, graphed = ("on" if require_overlap else "off"), ("on" if graphs else "off")
        table.append(["KERN SGDet", graphed, overlap, str(chunk), f"{sum(pairs) / len(pairs):.0f}",
                      f"{res.median_ms:.1f}", f"{ips:.1f}", format_gb(res.peak_gb), f"{ratio:.2f}", met])
        notes.append(
            f"KERN CUDA graphs {graphed}, overlap {overlap}, chunk {chunk}: detections/image "
            f"{detection_counts(outputs)} (same boxes as the reference detector: "
            f"{same_boxes(boxes_of(outputs), ref_boxes)}), pairs/image {min(pairs)}-{max(pairs)}"
        )
        if args.profile and len(profiles) < 2:
            profiles.append((f"KERN SGDet inference, CUDA graphs {graphed}, overlap {overlap}, chunk {chunk}",
                             profile_top_ops(infer, device)))
        del outputs
    print()
    print(format_table(
        ["case", "CUDA graphs", "overlap", "chunk", "pairs/img", "ms/batch", "images/s", "peak GB", "ratio KERN/ref",
         "target met?"],
        table,
    ))
    print(f"targets: images/s KERN / reference detector (KERN's detection post-processing) >= {MIN_RATIO:g}, "
          f"peak <= {MAX_PEAK_GB:g} GB" + ("" if device.type == "cuda" else " (peak memory: CUDA only)"))
    print("peak: the CUDA allocator's peak over the timed calls, weights and inputs included (the reference detector "
          "runs inside KERN's model: its peak includes KERN's relation weights)")
    for note in notes:
        print(f"  {note}")
    for title, text in profiles:
        print(f"\n--- profile: {title} ---\n{text}")


if __name__ == "__main__":
    main()
