"""How often gradient clipping acts in the first steps of a relation training, under each clipping rule.

Trains ``--iters`` steps of a relation config with ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model`` and records, at
every step before clipping, the norm of all gradients together (what the released KERN code clips) and the largest
norm of one parameter tensor (what Detectron2's ``norm`` clips). Where both stay under ``CLIP_VALUE`` the two rules
train identically. STUDY.md "Recipe" used it on synth (CPU):

    python benchmarks/clip_activity.py --mode sgcls --iters 250 --output /tmp/clip_sgcls \\
        MODEL.WEIGHTS .pilot/study_detector.pth MODEL.ROI_RELATION_HEAD.PRIORS_FILE output/synth/priors.npz

Prints one JSON line (also written to ``<output>/clip_activity.json``).
"""
import argparse
import contextlib
import json
import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kern_d2.engine import SGGTrainer, load_cfg  # noqa: E402

MODES = {"predcls": ("True", "True"), "sgcls": ("True", "False"), "sgdet": ("False", "False")}


@contextlib.contextmanager
def recording_tensor_norms():
    """Within it, every ``torch.nn.utils.clip_grad_norm_`` call (the full_model clipper makes one a step) appends the
    largest norm of one gradient tensor to the list it yields."""
    clip, largest = torch.nn.utils.clip_grad_norm_, []

    def recording_clip(parameters, *args, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        largest.append(max(float(p.grad.norm()) for p in parameters))
        return clip(parameters, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        yield largest
    finally:
        torch.nn.utils.clip_grad_norm_ = clip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/synth/Base-Synth-KERN.yaml")
    parser.add_argument("--mode", choices=sorted(MODES), default="predcls")
    parser.add_argument("--iters", type=int, default=250)
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    gt_box, gt_label = MODES[args.mode]
    opts = ["MODEL.ROI_RELATION_HEAD.USE_GT_BOX", gt_box, "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", gt_label,
            "SOLVER.MAX_ITER", str(args.iters), "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model", "DATASETS.TEST", "()", "DATASETS.SGG.VAL", "()",
            "OUTPUT_DIR", args.output, *args.opts]
    cfg = load_cfg(SimpleNamespace(config_file=args.config_file, opts=opts))
    with recording_tensor_norms() as largest:
        trainer = SGGTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    total = [value for value, _ in trainer.storage.history("grad_norm").values()]
    limit = cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
    result = {
        "config": args.config_file, "mode": args.mode, "steps": len(total), "clip_value": limit,
        "steps_total_norm_above": sum(n > limit for n in total),
        "steps_a_tensor_norm_above": sum(n > limit for n in largest),
        "total_norm_median": sorted(total)[len(total) // 2], "total_norm_max": max(total),
        "last_step_total_norm_above": max((i for i, n in enumerate(total) if n > limit), default=None),
    }
    print(json.dumps(result))
    with open(os.path.join(args.output, "clip_activity.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
