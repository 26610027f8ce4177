#!/usr/bin/env python
"""The cost of the long-tail switches at inference: the KERN relation head's logits of R pairs, plain, with TDE
(one extra pass of the head over the pairs' "blank" inputs) and with TDE plus logit adjustment.

  python benchmarks/bench_tde.py          # CUDA when available (R = 4,032, D = 512, P = 51, bf16 autocast)
  python benchmarks/bench_tde.py --cpu    # small sizes on the CPU (R = 256, D = 64), fp32, one thread

Target (issue 18): TDE at most 2x the plain relation head. Times are medians of repeats after warm-up,
synchronised around each call.
"""
import torch

from common import (
    autocast,
    environment_header,
    format_table,
    measure,
    parse_cpu_or_cuda_arguments,
    set_cpu_threads,
    targets_met,
)
from detectron2.config import get_cfg

from kern_d2.config import add_kern_config
from kern_d2.modeling.long_tail import LongTailSwitches
from kern_d2.modeling.priors import KnowledgePriors
from kern_d2.modeling.relation_heads import build_relation_head

GPU_SIZES = dict(pairs=4032, hidden=512, feature=1024)
CPU_SIZES = dict(pairs=256, hidden=64, feature=128)
NUM_PREDICATES = 51
TARGET_TDE_RATIO = 2.0
SETTINGS = {"plain": {}, "TDE": {"TDE_INFERENCE": True},
            "TDE + logit adjustment": {"TDE_INFERENCE": True, "LOGIT_ADJUSTMENT_TAU": 1.0}}


def main(argv=None) -> None:
    args, device = parse_cpu_or_cuda_arguments(__doc__, repeats=20, argv=argv)
    set_cpu_threads(device, tiny=True, threads=None)  # one thread on the CPU
    sizes = CPU_SIZES if device.type == "cpu" else GPU_SIZES
    torch.manual_seed(0)
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.MODEL.ROI_RELATION_HEAD.HIDDEN_DIM = cfg.MODEL.ROI_RELATION_HEAD.OUTPUT_DIM = sizes["hidden"]
    r, f = sizes["pairs"], sizes["feature"]
    head = build_relation_head(cfg, f, f).to(device).eval()
    union, subj, obj = (torch.randn(r, f, device=device) for _ in range(3))
    prior = torch.softmax(torch.randn(r, NUM_PREDICATES, device=device), dim=1)
    counts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.randint(1, 10_000, (NUM_PREDICATES - 1,))])
    priors = KnowledgePriors(torch.eye(2), torch.full((2, 2, NUM_PREDICATES), 1.0 / NUM_PREDICATES),
                             predicate_counts=counts).to(device)
    amp = "none" if device.type == "cpu" else "bf16"
    rows, medians = [], {}
    for name, overrides in SETTINGS.items():
        for key, value in overrides.items():
            cfg.MODEL.ROI_RELATION_HEAD[key] = value
        switches = LongTailSwitches(**LongTailSwitches.from_config(cfg, f, f)).to(device)
        switches.train()
        switches.feature_means.update(union, subj, obj)
        switches.eval()

        def run():
            with torch.no_grad(), autocast(device, amp):
                switches.relation_logits(head, union, subj, obj, prior, priors)

        medians[name] = measure(run, device, warmup=3, repeats=args.repeats).median_ms
        rows.append([name, f"{medians[name]:.2f}", f"{medians[name] / medians['plain']:.2f}x"])
    print(environment_header(f"Relation head, R = {r} pairs, D = {sizes['hidden']}, P = {NUM_PREDICATES}, "
                             f"autocast {amp}", device))
    print(format_table(["setting", "ms", "vs plain"], rows))
    ratio = medians["TDE"] / medians["plain"]
    print(f"targets met (TDE <= {TARGET_TDE_RATIO}x the plain head): "
          f"{targets_met([('TDE / plain relation head', ratio <= TARGET_TDE_RATIO)])}")


if __name__ == "__main__":
    main()
