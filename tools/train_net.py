#!/usr/bin/env python
"""Train or evaluate kern_d2 models (and the detectors they build on) with Detectron2's launcher.

  python tools/train_net.py --config-file configs/VG-KERN/kern_predcls.yaml --num-gpus 8
  python tools/train_net.py --config-file configs/VG-KERN/kern_predcls.yaml --eval-only MODEL.WEIGHTS model.pth
  python tools/train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint
  python tools/train_net.py --register my_datasets.py --config-file my_kern.yaml   # your own datasets

Without a GPU, ``--num-gpus N`` runs N CPU processes that talk through gloo (``--dist-url auto`` picks a free
port). ``--dist-timeout-s S`` bounds how long a process waits for the others (a rank that stalls, or dies on another
machine); a rank that dies is named on one line with the checkpoint to ``--resume`` from (kern_d2.engine.distributed).
The config is checked before anything is built or launched (kern_d2.config_check): a bad key, an unregistered
dataset or a missing file is one line on stderr and exit status 2 (the traceback with --debug or KERN_DEBUG=1).
"""
from kern_d2.utils.cli import add_tool_arguments, debug_enabled, one_line_errors, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports; the launcher's workers import this file again

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
import kern_d2.modeling  # noqa: E402,F401  (registers SceneGraphRCNN, KERNROIHeads, the toy backbone)
from detectron2.engine import default_argument_parser  # noqa: E402

from kern_d2.checkpoint import SGGCheckpointer  # noqa: E402
from kern_d2.config_check import cfg_for_weights, check_config, weights_to_load  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.engine import SGGTrainer, close_process_group, load_cfg, setup_cfg  # noqa: E402
from kern_d2.engine.distributed import add_distributed_arguments, launch_job  # noqa: E402


def run(args):
    cfg = setup_cfg(args)
    # The weights' priors win (kern_d2.config_check): an absent PRIORS_FILE is not read when the weights carry priors.
    cfg = cfg_for_weights(cfg, weights_to_load(cfg, args.resume))
    if args.eval_only:
        model = SGGTrainer.build_model(cfg)
        SGGCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return SGGTrainer.test(cfg, model)
    trainer = SGGTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(args):
    register_user_datasets(args.register)  # again in each launched worker (once per process)
    results = run(args)
    close_process_group()
    return results


def get_parser():
    return add_distributed_arguments(add_tool_arguments(default_argument_parser()))


def check(args):
    """Register the user's datasets and check the config, before any process is started: one line and exit 2
    on a problem."""
    with one_line_errors("train_net.py", debug_enabled(args)):
        register_user_datasets(args.register)
        cfg = load_cfg(args)
        check_config(cfg, "eval" if args.eval_only else "train", resume=args.resume)
    return cfg


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    cfg = check(args)
    launch_job(main, args, output_dir=cfg.OUTPUT_DIR, eval_only=args.eval_only)
