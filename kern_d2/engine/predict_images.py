"""Prediction over many image files (``tools/predict.py``): one scene graph JSON and one picture per image.

    files, ignored, boxes_spec = select_images(prediction_mode(cfg), inputs=["photos/"])
    summary = predict_files(predictor, ImageFiles(files, predictor.prepare, boxes_spec), "out/")

Images are read and prepared in DataLoader workers (:class:`ImageFiles`); a batch the model fails on is retried
image by image (:func:`run_batch`); unreadable images and failures are reported in the summary, never stop the run.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kern_d2.modeling.roi_heads import sgg_mode
from kern_d2.utils.image_io import ImageReadError, collect_image_files
from kern_d2.utils.visualizer import draw_predicted_scene_graph, save_image

from .given_boxes import dataset_given_boxes, find_given_boxes, load_given_boxes
from .predictor import ImagePreparer, SceneGraphPredictor

__all__ = ["ImageFiles", "InputError", "SUMMARY_NAME", "output_stems", "predict_files", "prediction_mode", "run_batch",
           "select_images"]

logger = logging.getLogger(__name__)

# The run's summary is <output>/summary.json: no image output takes this stem.
SUMMARY_NAME = "summary"


class InputError(Exception):
    """Bad input of a run (no images, a PredCls config without boxes, ...): the run stops."""


def prediction_mode(cfg, boxes_json: Optional[str] = None, from_dataset: bool = False) -> str:
    """The task of the config, checked against ``--boxes-json`` (``from_dataset``: boxes come from ``--dataset``)."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
    if rel.USE_GT_BOX and not boxes_json and not from_dataset:
        raise InputError(
            "the config is PredCls/SGCls (MODEL.ROI_RELATION_HEAD.USE_GT_BOX True), which scores relations between "
            "given boxes: pass --boxes-json (or --dataset), or run SGDet with --opts "
            "MODEL.ROI_RELATION_HEAD.USE_GT_BOX False MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL False"
        )
    if boxes_json and not rel.USE_GT_BOX:
        raise InputError(
            "--boxes-json needs a PredCls/SGCls config: add --opts MODEL.ROI_RELATION_HEAD.USE_GT_BOX True "
            "(and MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL True for PredCls with labels)"
        )
    return mode


def select_images(mode: str, inputs: Sequence[str] = (), dataset: Optional[str] = None, num_images: int = 0,
                  boxes_json: Optional[str] = None) -> Tuple[List[str], List[str], Optional[dict]]:
    """(image files, folder entries ignored, given boxes or None) of a run: the first ``num_images`` images of the
    registered ``dataset`` (its gt boxes unless ``mode`` is SGDet), else ``inputs`` (folders, files and globs, as
    :func:`collect_image_files`); the boxes of ``boxes_json`` replace those. InputError when there is no image."""
    ignored, boxes_spec = [], None
    if dataset:
        files, gt_spec = dataset_given_boxes(dataset, num_images)
        boxes_spec = gt_spec if mode != "sgdet" else None
        if not files:
            raise InputError(f"--dataset {dataset}: no images")
    else:
        files, ignored = collect_image_files(inputs)
        for path in ignored:
            logger.info(f"ignored (not an image file name): {path}")
        if not files:
            raise InputError(f"--input {' '.join(inputs)}: no image files found")
    if boxes_json:
        boxes_spec = load_given_boxes(boxes_json)
    return files, ignored, boxes_spec


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
    except Exception as e:  # noqa: BLE001 -- reported per image in the summary
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


def _write_outputs(graph, rgb, path: str, output_dir: str, stem: str, draw_k: int, show_all_boxes: Optional[bool],
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
    {"processed": [{"file", "json", "num_boxes", "num_triplets"[, "png"]}], "failed": [{"file", "reason"}]}.
    Bad images never stop the run."""
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
                    processed.append(_write_outputs(graph, item["prepared"].rgb, path, output_dir, stems[path],
                                                    draw_k, show_all_boxes, pictures))
                else:
                    logger.warning(f"failed: {path}: {error}")
                    failed.append({"file": path, "reason": error})
            progress.update(len(batch))
    return {"processed": processed, "failed": failed}
