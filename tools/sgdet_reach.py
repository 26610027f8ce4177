#!/usr/bin/env python
"""How much of the gt an SGDet model's boxes, labels and scored pairs can reach at all (the ceiling of its ng-R@K
for every K; kern_d2/evaluation/pair_reach.py), and how many gt relations join overlapping gt boxes.

    KERN_DATASETS=output/demo/datasets python tools/sgdet_reach.py --config-file configs/synth/Base-Synth-KERN.yaml \\
        --num-images 60 MODEL.WEIGHTS .pilot/study_detector.pth MODEL.ROI_RELATION_HEAD.USE_OBJECT_ROUTING False \\
        MODEL.ROI_RELATION_HEAD.USE_GT_BOX False MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL False

The config must be an SGDet one (USE_GT_BOX False). Prints one JSON object (kern_d2.evaluation.pair_reach.
summarize_reach) and writes it to ``--output`` when given.
"""
import argparse
import json
import sys

from kern_d2.utils.cli import add_tool_arguments, one_line_errors, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, build_detection_test_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
import kern_d2.modeling  # noqa: E402,F401  (registers SceneGraphRCNN)
from kern_d2.config import sgg_mode_from_cfg  # noqa: E402
from kern_d2.config_check import unregistered_dataset_error  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.engine import load_cfg  # noqa: E402
from kern_d2.evaluation import gt_from_dataset_dict  # noqa: E402
from kern_d2.evaluation.pair_reach import image_reach, summarize_reach  # noqa: E402
from kern_d2.evaluation.sgg_evaluator import prediction_from_output  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="registered dataset (default: cfg.DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=0, help="the first N images (default: all)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    add_tool_arguments(parser)
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    register_user_datasets(args.register)
    cfg = load_cfg(args)
    if sgg_mode_from_cfg(cfg) != "sgdet":
        raise ValueError(f"{args.config_file}: not an SGDet config (set MODEL.ROI_RELATION_HEAD.USE_GT_BOX False and "
                         "USE_GT_OBJECT_LABEL False)")
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    if dataset not in DatasetCatalog.list():
        raise unregistered_dataset_error(dataset, "--dataset")
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset)}
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    reach = []
    with torch.no_grad():
        for batch in build_detection_test_loader(cfg, dataset):
            for inputs, output in zip(batch, model(batch)):
                gt = gt_from_dataset_dict(records[inputs["image_id"]], dataset)
                reach.append(image_reach(gt, prediction_from_output(output, inputs["image_id"]),
                                         cfg.TEST.SGG.IOU_THRESH, cfg.TEST.SGG.LEGACY_IOU))
            if args.num_images and len(reach) >= args.num_images:
                break
    summary = dict(summarize_reach(reach), dataset=dataset)
    print(json.dumps(summary, indent=1))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    with one_line_errors("sgdet_reach.py", "--debug" in sys.argv, (KeyError, ValueError, OSError)):
        main(sys.argv[1:])
