#!/usr/bin/env python
"""Train or evaluate kern_d2 models (and the detectors they build on) with Detectron2's launcher.

  python tools/train_net.py --config-file configs/VG-KERN/kern_predcls.yaml --num-gpus 8
  python tools/train_net.py --config-file configs/VG-KERN/kern_predcls.yaml --eval-only MODEL.WEIGHTS model.pth
  python tools/train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint

Without a GPU, ``--num-gpus N`` runs N CPU processes that talk through gloo (``--dist-url auto`` picks a free
port).
"""
import sys

import kern_d2.data  # noqa: F401  (registers the builtin datasets)
import kern_d2.modeling  # noqa: F401  (registers SceneGraphRCNN, KERNROIHeads, the toy backbone)
from detectron2.engine import default_argument_parser, launch

from kern_d2.checkpoint import SGGCheckpointer
from kern_d2.engine import SGGTrainer, check_training_config, close_process_group, load_cfg, setup_cfg


def run(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = SGGTrainer.build_model(cfg)
        SGGCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return SGGTrainer.test(cfg, model)
    trainer = SGGTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    results = run(args)
    close_process_group()
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    if not args.eval_only:
        # Refuse a config that cannot train here, before any process is started.
        try:
            check_training_config(load_cfg(args))
        except ValueError as e:
            sys.exit(f"train_net.py: {args.config_file}: {e}")
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
