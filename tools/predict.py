#!/usr/bin/env python
"""Run a trained kern_d2 model on your own images: one scene graph JSON and one picture per image.

    python tools/predict.py --config-file configs/VG-KERN/kern_sgdet.yaml --input photos/ --output out/ \\
        --opts MODEL.WEIGHTS output/model_final.pth
    KERN_DATASETS=output/demo/datasets python tools/predict.py --config-file configs/synth/Base-Synth-KERN.yaml \\
        --dataset synth_test --num-images 6 --output out/ --opts \\
        MODEL.WEIGHTS output/demo/study/predcls/kern_seed0/model_final.pth \\
        MODEL.ROI_RELATION_HEAD.PRIORS_FILE output/demo/study/priors.npz

A command line over :class:`kern_d2.engine.SceneGraphPredictor`. Config overrides follow ``--opts`` (or end the
command as in Detectron2's tools, after any option but ``--input``). ``--input`` takes folders (their image files,
not recursive), image files and globs ("photos/*.jpg"), in any mix; ``--dataset`` takes the images of a registered
dataset instead (the first ``--num-images``), and gives PredCls / SGCls its gt boxes and labels. For each image
``<stem>`` the output folder gets ``<stem>.json`` (``SceneGraph.to_dict()``: schema in
kern_d2/engine/scene_graph.py) and ``<stem>.png`` (a stem used twice gets a ``-2``, ``-3`` ... suffix), and the run
ends with ``summary.json``: ``processed`` (file, json, png, counts), ``failed`` (file, reason) and ``ignored``
(folder entries without an image extension). Unreadable images are reported there and in the log; they never stop
the run. The exit status is 0 when at least one image was processed, 1 when none was, 2 for bad arguments.

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
from typing import Dict, List, Optional, Sequence

from kern_d2.utils.cli import add_tool_arguments, debug_enabled, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets and their metadata)
from kern_d2.checkpoint import CheckpointError  # noqa: E402
from kern_d2.config_check import load_config  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.engine import (  # noqa: E402
    ImagePreparer,
    SceneGraphPredictor,
    dataset_given_boxes,
    find_given_boxes,
    load_given_boxes,
)
from kern_d2.modeling.roi_heads import sgg_mode  # noqa: E402
from kern_d2.utils.image_io import ImageReadError, collect_image_files  # noqa: E402
from kern_d2.utils.visualizer import draw_predicted_scene_graph, save_image  # noqa: E402

logger = logging.getLogger("kern_d2.predict")

SUMMARY_NAME = "summary"


class InputError(Exception):
    """Bad command line input (no images, a PredCls config without boxes, ...): the run stops."""


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


def setup_cfg(config_file: str, opts: Sequence[str]):
    """The frozen config; a ConfigError (one line: "did you mean ..." for an unknown key) otherwise."""
    return load_config(config_file, list(opts))


def check_mode(cfg, boxes_json: Optional[str], from_dataset: bool = False) -> str:
    """The task of the config, checked against --boxes-json (``from_dataset``: boxes come from --dataset)."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
    if rel.USE_GT_BOX and not boxes_json and not from_dataset:
        raise InputError(
            "the config is PredCls/SGCls (MODEL.ROI_RELATION_HEAD.USE_GT_BOX True), which scores relations between "
            "given boxes: pass --boxes-json (or --dataset), or run SGDet with --opts MODEL.ROI_RELATION_HEAD.USE_GT_BOX "
            "False MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL False"
        )
    if boxes_json and not rel.USE_GT_BOX:
        raise InputError(
            "--boxes-json needs a PredCls/SGCls config: add --opts MODEL.ROI_RELATION_HEAD.USE_GT_BOX True "
            "(and MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL True for PredCls with labels)"
        )
    return mode


def output_stems(files: Sequence[str]) -> Dict[str, str]:
    """A distinct output stem per input file, in input order (``a.jpg`` and ``a.png`` -> ``a``, ``a-2``)."""
    used, stems = {SUMMARY_NAME}, {}
    for path in files:
        base = os.path.splitext(os.path.basename(path))[0] or "image"
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem)
        stems[path] = stem
    return stems


class ImageFiles(Dataset):
    """Prepares each file for the model (in loader workers); an item is {"file", "prepared"} or {"file", "error"}."""

    def __init__(self, files: Sequence[str], prepare: ImagePreparer, boxes_spec: Optional[dict] = None):
        self.files, self.prepare, self.boxes_spec = list(files), prepare, boxes_spec

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        try:
            entry = {}
            if self.boxes_spec is not None:
                entry = find_given_boxes(self.boxes_spec, path)
                if entry is None:
                    return {"file": path, "error": f"{path}: no entry in --boxes-json (keys are file paths or names)"}
            return {"file": path, "prepared": self.prepare(path, entry.get("boxes"), entry.get("labels"))}
        except (ImageReadError, ValueError) as e:
            return {"file": path, "error": str(e)}


def run_batch(predictor: SceneGraphPredictor, items: List[dict]) -> List[tuple]:
    """Per item, (SceneGraph, None) or (None, reason). A failing batch is retried image by image, so that one bad
    image (e.g. out of memory) costs only its own result."""
    try:
        outputs = predictor.forward([item["prepared"] for item in items])
    except Exception as e:  # noqa: BLE001 -- reported per image in summary.json
        if len(items) > 1:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [result for item in items for result in run_batch(predictor, [item])]
        logger.exception(f"model failed on {items[0]['file']}")
        return [(None, f"model failed: {type(e).__name__}: {e}")]
    results = []
    for instances, item in zip(outputs, items):
        try:
            results.append((predictor.to_scene_graph(instances, item["prepared"]), None))
        except ValueError as e:  # output that does not fit the class names
            results.append((None, str(e)))
    return results


def write_outputs(graph, rgb, path: str, output_dir: str, stem: str, draw_k: int, show_all_boxes: Optional[bool],
                  pictures: bool) -> dict:
    """Writes ``<stem>.json`` (and ``<stem>.png``); returns the summary entry of the image."""
    entry = {"file": path, "json": os.path.join(output_dir, stem + ".json"), "num_boxes": len(graph.boxes),
             "num_triplets": len(graph.triplets)}
    with open(entry["json"], "w") as f:
        f.write(graph.to_json())
    if pictures:
        entry["png"] = os.path.join(output_dir, stem + ".png")
        save_image(entry["png"], draw_predicted_scene_graph(graph, rgb, draw_k, show_all_boxes))
    return entry


def predict_files(predictor: SceneGraphPredictor, images: ImageFiles, output_dir: str, *, batch_size: int = 4,
                  num_workers: int = 0, draw_k: int = 20, show_all_boxes: Optional[bool] = None,
                  pictures: bool = True) -> dict:
    """Runs ``predictor`` over ``images`` in batches and writes each result; returns the summary
    {"processed": [write_outputs entries], "failed": [{"file", "reason"}]}. Bad images never stop the run."""
    os.makedirs(output_dir, exist_ok=True)
    stems = output_stems(images.files)
    loader = DataLoader(images, batch_size=max(1, batch_size), num_workers=num_workers, collate_fn=list)
    processed, failed = [], []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None) as progress:
        for batch in loader:
            for item in batch:
                if "error" in item:
                    logger.warning(f"skipped: {item['error']}")
                    failed.append({"file": item["file"], "reason": item["error"]})
            ready = [item for item in batch if "error" not in item]
            for item, (graph, error) in zip(ready, run_batch(predictor, ready) if ready else []):
                path = item["file"]
                if error is None:
                    processed.append(write_outputs(graph, item["prepared"].rgb, path, output_dir, stems[path],
                                                   draw_k, show_all_boxes, pictures))
                else:
                    logger.warning(f"failed: {path}: {error}")
                    failed.append({"file": path, "reason": error})
            progress.update(len(batch))
    return {"processed": processed, "failed": failed}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="kern_d2")
    try:
        register_user_datasets(args.register)
        cfg = setup_cfg(args.config_file, list(args.opts) + list(args.extra_opts))
        mode = check_mode(cfg, args.boxes_json, from_dataset=args.dataset is not None)
        ignored, boxes_spec = [], None
        if args.dataset:
            files, gt_spec = dataset_given_boxes(args.dataset, args.num_images)
            boxes_spec = gt_spec if mode != "sgdet" else None
            if not files:
                raise InputError(f"--dataset {args.dataset}: no images")
        else:
            files, ignored = collect_image_files(args.input)
            for path in ignored:
                logger.info(f"ignored (not an image file name): {path}")
            if not files:
                raise InputError(f"--input {' '.join(args.input)}: no image files found")
        if args.boxes_json:
            boxes_spec = load_given_boxes(args.boxes_json)
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
