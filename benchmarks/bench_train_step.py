#!/usr/bin/env python
"""One KERN training step against one Detectron2 Faster R-CNN training step on the same images.

Models (random weights, no downloads): R50-FPN from configs/Base-KERN.yaml with VG-sized heads (150 classes,
51 predicates incl. "no relation"), random knowledge priors.
- detector: GeneralizedRCNN + StandardROIHeads, everything trainable as in detector training (RPN + box losses);
- KERN SGDet / SGCls / PredCls: SceneGraphRCNN + KERNROIHeads with the detector frozen (the paper's setting). In
  SGDet the frozen detector keeps MAX_DETECTIONS (64) boxes per image (score threshold 0: the worst case), and
  BATCH_SIZE_PER_IMAGE (256) pairs per image are routed.
A step is forward under autocast, backward of the summed losses and an SGD (momentum 0.9) step over the trainable
parameters. Inputs: batch 8 synthetic images 600 x 800-1000 with 10-20 random gt boxes and 4-8 random relations
each, already on the device. Time: median of the timed steps after warm-up; peak: the CUDA allocator's peak over
the timed steps (weights, gradients, optimizer state and activations). Targets: KERN/detector <= 1.0,
peak <= 16 GB.

    python benchmarks/bench_train_step.py                       # GPU, VG sizes, bf16
    python benchmarks/bench_train_step.py --profile             # + top 15 ops of each KERN step
    python benchmarks/bench_train_step.py --device cpu --tiny   # quick CPU check of the code paths
"""
import argparse

import torch

from detectron2.utils.events import EventStorage

from common import (
    Sizes,
    add_run_arguments,
    autocast,
    build_detector,
    build_kern_model,
    count_parameters,
    describe_batch,
    detector_config,
    detector_inputs,
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
    trainable_parameters,
)

MAX_RATIO = 1.0  # KERN step time / detector step time
MAX_PEAK_GB = 16.0
TITLES = {"detector": "detector (Faster R-CNN R50-FPN)", "sgdet": "KERN SGDet", "sgcls": "KERN SGCls",
          "predcls": "KERN PredCls"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "steps", "small images, widths and budgets (CPU check)")
    parser.add_argument("--modes", default="sgdet,sgcls,predcls", help="KERN modes to time (comma-separated)")
    parser.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate (small: random weights)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top 15 ops of each KERN step")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides (KEY VALUE ...) applied to every model, e.g. "
                             "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE 128")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - {"sgdet", "sgcls", "predcls"})
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from sgdet, sgcls, predcls")
    return args


def make_train_step(model, batch, device, amp: str, lr: float):
    """A closure running one training step; returns the losses (detached floats)."""
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=lr, momentum=0.9)
    model.train()

    def step():
        with autocast(device, amp):
            losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    return step


def step_with_detection_counts(model, step):
    """Run ``step`` once; returns its losses and how many boxes the frozen detector handed to the relation part
    per image (SGDet)."""
    heads = model.roi_heads
    counts = []
    detect = heads._detect

    def recording_detect(*args, **kwargs):
        detections = detect(*args, **kwargs)
        counts.extend(len(d) for d in detections)
        return detections

    heads._detect = recording_detect
    try:
        losses = step()
    finally:
        del heads._detect  # back to the class's method
    return losses, counts


def run_case(name, args, device, sizes, batch):
    """(row data dict, profile text or None) of one case."""
    cfg = kern_config(name if name != "detector" else "sgdet", device, args.tiny, args.opts)
    if name == "detector":
        model = build_detector(detector_config(cfg), batch, args.seed)
        inputs = detector_inputs(batch)
    else:
        model = build_kern_model(cfg, batch, args.seed)
        inputs = batch
    step = make_train_step(model, inputs, device, args.amp, args.lr)
    notes = [f"trainable {count_parameters(trainable_parameters(model))} params"]
    # The first step (a warm-up step) is checked: finite losses, and in SGDet the detections per image.
    if name == "sgdet":
        losses, counts = step_with_detection_counts(model, step)
        notes.append(f"detections/image {min(counts)}-{max(counts)}")
        notes.append(f"pairs/image <= {cfg.MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE}")
    else:
        losses = step()
    notes.append("losses " + ", ".join(f"{k} {float(v):.3g}" for k, v in sorted(losses.items())))
    bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
    if bad:
        notes.append(f"NON-FINITE losses: {bad}")
    result = measure(step, device, max(args.warmup - 1, 0), args.repeats)
    profile = profile_top_ops(step, device) if args.profile and name != "detector" else None
    del step, model, inputs
    release(device)
    return {"name": name, "ms": result.median_ms, "peak_gb": result.peak_gb, "notes": notes,
            "images_per_s": sizes.images / (result.median_ms / 1e3)}, profile


def main(argv=None):
    args = parse_args(argv)
    device = resolve_run_arguments(args)
    sizes = Sizes.create(args.tiny, args.images)
    cfg = kern_config("sgdet", device, args.tiny, args.opts)
    num_classes, num_predicates = cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES
    print(environment_header("KERN training step vs Detectron2 Faster R-CNN training step", device))
    rel = cfg.MODEL.ROI_RELATION_HEAD
    print(
        f"R{cfg.MODEL.RESNETS.DEPTH}-FPN, {num_classes} classes, {num_predicates} predicates, D={rel.HIDDEN_DIM}, "
        f"T={rel.NUM_STEPS}; autocast {args.amp}; SGD momentum 0.9; median of {args.repeats} steps after "
        f"{args.warmup} warm-up steps" + (" [--tiny: reduced sizes, figures not comparable to VG]" if args.tiny else "")
    )
    batch = synthetic_batch(sizes, num_classes, num_predicates, device, args.seed)
    print(f"inputs: {describe_batch(batch)}")

    rows, profiles = [], []
    with EventStorage(0):  # Detectron2's losses log into the trainer's event storage
        for name in ["detector"] + args.modes:
            row, profile = run_case(name, args, device, sizes, batch)
            rows.append(row)
            if profile:
                profiles.append((name, profile))

    reference = rows[0]["ms"]
    table = []
    for row in rows:
        peak = row["peak_gb"]
        if row["name"] == "detector":
            ratio, met = "1.00 (ref)", "-"
        else:
            ratio_value = row["ms"] / reference
            ratio = f"{ratio_value:.2f}"
            met = targets_met([
                (f"ratio > {MAX_RATIO:g}", ratio_value <= MAX_RATIO),
                (f"peak > {MAX_PEAK_GB:g} GB", None if peak is None else peak <= MAX_PEAK_GB),
            ])
        table.append([TITLES[row["name"]], f"{row['ms']:.1f}", f"{row['images_per_s']:.1f}", format_gb(peak),
                      ratio, met])
    print()
    print(format_table(["case", "ms/step", "images/s", "peak GB", "ratio KERN/det", "target met?"], table))
    print(f"targets: ratio KERN/detector <= {MAX_RATIO:g}, peak <= {MAX_PEAK_GB:g} GB"
          + ("" if device.type == "cuda" else " (peak memory: CUDA only)"))
    for row in rows:
        print(f"  {TITLES[row['name']]}: " + "; ".join(row["notes"]))
    for name, profile in profiles:
        print(f"\n--- profile: {TITLES[name]} training step ---\n{profile}")


if __name__ == "__main__":
    main()
