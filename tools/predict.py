#!/usr/bin/env python
"""Run a trained kern_d2 model on your own images: one scene graph JSON and one picture per image.

    python tools/predict.py --config-file configs/VG-KERN/kern_sgdet.yaml --input photos/ --output out/ \\
        --opts MODEL.WEIGHTS output/model_final.pth
    KERN_DATASETS=output/demo/datasets python tools/predict.py --config-file configs/synth/Base-Synth-KERN.yaml \\
        --dataset synth_test --num-images 6 --output out/ --opts \\
        MODEL.WEIGHTS output/demo/study/predcls/kern_seed0/model_final.pth \\
        MODEL.ROI_RELATION_HEAD.PRIORS_FILE output/demo/study/priors.npz

A command line over :class:`kern_d2.engine.SceneGraphPredictor` and :func:`kern_d2.engine.predict_files` (in
kern_d2/engine/predict_images.py). Config overrides follow ``--opts`` (or end the command as in Detectron2's tools,
after any option but ``--input``). ``--input`` takes folders (their image files, not recursive), image files and
globs ("photos/*.jpg"), in any mix; ``--dataset`` takes the images of a registered dataset instead (the first
``--num-images``), and gives PredCls / SGCls its gt boxes and labels. For each image ``<stem>`` the output folder
gets ``<stem>.json`` (``SceneGraph.to_dict()``: schema in kern_d2/engine/scene_graph.py) and ``<stem>.png`` (a stem
used twice gets a ``-2``, ``-3`` ... suffix), and the run ends with ``summary.json``: ``processed`` (file, json,
png, counts), ``failed`` (file, reason) and ``ignored`` (folder entries without an image extension). Unreadable
images are reported there and in the log; they never stop the run. The exit status is 0 when at least one image was
processed, 1 when none was, 2 for bad arguments.

PredCls / SGCls on your images: give the boxes (and, for PredCls, the labels) with ``--boxes-json`` (format in
kern_d2/engine/given_boxes.py) and a config with ``MODEL.ROI_RELATION_HEAD.USE_GT_BOX True`` (PredCls: and
``USE_GT_OBJECT_LABEL True``); images without an entry are reported as failed.

Class names come from the metadata of ``--dataset``, else of ``DATASETS.TEST[0]`` when registered, else from the
model, the checkpoint, or the priors file (``MODEL.ROI_RELATION_HEAD.PRIORS_FILE``).
"""
import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from kern_d2.utils.cli import add_tool_arguments, debug_enabled, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

from detectron2.utils.logger import setup_logger  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets and their metadata)
from kern_d2.checkpoint import CheckpointError  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.engine import (  # noqa: E402
    SUMMARY_NAME,
    ImageFiles,
    InputError,
    SceneGraphPredictor,
    load_cfg,
    predict_files,
    prediction_mode,
    select_images,
)

logger = logging.getLogger("kern_d2.predict")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the model's config file")
    sources = parser.add_mutually_exclusive_group(required=True)
    sources.add_argument("--input", nargs="+", help="image folders, image files or globs")
    sources.add_argument("--dataset", help="a registered dataset: its images (PredCls/SGCls: with its gt boxes)")
    parser.add_argument("--num-images", type=int, default=0, help="with --dataset: its first N images (0: all)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the JSON files and pictures")
    parser.add_argument("--top-k", type=int, default=20, help="triplets kept per image (0: all)")
    parser.add_argument("--draw-k", type=int, default=20, help="triplets drawn per picture (at most --top-k)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="image reading processes (0: main process)")
    parser.add_argument("--boxes-json", metavar="FILE", help="given boxes (and labels) per image: PredCls/SGCls")
    parser.add_argument(
        "--show-all-boxes",
        action="store_true",
        help="draw every box, not only those in a drawn triplet (always on with --boxes-json)",
    )
    parser.add_argument("--no-pictures", action="store_true", help="write the JSON files only")
    parser.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode image files larger than INPUT.MAX_SIZE_TEST at a reduced scale: faster for big photos, but the "
        "scores differ slightly from those of the full decode (which training, evaluation and arrays use)",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )
    add_tool_arguments(parser)
    parser.add_argument("extra_opts", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The arguments; ``opts`` holds every config override (after ``--opts`` and at the end)."""
    args = get_parser().parse_args(argv)
    args.opts = list(args.opts) + list(args.extra_opts)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="kern_d2")
    try:
        register_user_datasets(args.register)
        cfg = load_cfg(args)
        mode = prediction_mode(cfg, args.boxes_json, from_dataset=args.dataset is not None)
        files, ignored, boxes_spec = select_images(mode, args.input, args.dataset, args.num_images, args.boxes_json)
        predictor = SceneGraphPredictor(cfg, top_k=args.top_k, batch_size=args.batch_size, dataset=args.dataset,
                                        reduced_decode=args.fast_decode)
    except (InputError, ValueError, FileNotFoundError, CheckpointError) as e:  # ConfigError is a ValueError
        if debug_enabled(args):
            logger.exception(str(e))
        else:
            logger.error(str(e))
        return 2
    logger.info(f"{len(files)} images -> {args.output}")
    summary = predict_files(
        predictor, ImageFiles(files, predictor.prepare, boxes_spec), args.output, batch_size=args.batch_size,
        num_workers=args.num_workers, draw_k=min(args.draw_k, args.top_k) if args.top_k > 0 else args.draw_k,
        show_all_boxes=True if args.show_all_boxes else None, pictures=not args.no_pictures,
    )
    summary = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS, "mode": mode, **summary,
               "ignored": ignored}
    summary_path = os.path.join(args.output, SUMMARY_NAME + ".json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    for entry in summary["failed"]:
        logger.warning(f"FAILED {entry['file']}: {entry['reason']}")
    logger.info(f"{len(summary['processed'])} images processed, {len(summary['failed'])} failed; see {summary_path}")
    if not summary["processed"]:
        logger.error("no image could be processed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
