#!/usr/bin/env python
"""Run a trained kern_d2 model on your own images: one scene graph JSON and one picture per image.

    python tools/predict.py --config-file configs/VG-KERN/kern_sgdet.yaml --input photos/ --output out/ \\
        --opts MODEL.WEIGHTS output/model_final.pth
    python tools/predict.py --config-file configs/toy/kern_predcls.yaml --dataset toy_test --num-images 6 \\
        --output out/ --opts MODEL.WEIGHTS output/toy/kern_predcls/model_final.pth

Config overrides follow ``--opts`` (or end the command as in Detectron2's tools, after any option but
``--input``). ``--input`` takes folders (their image files, not recursive), image files and globs
("photos/*.jpg"), in any mix; ``--dataset`` takes the images of a registered dataset instead (the first
``--num-images``), and gives PredCls / SGCls its gt boxes and labels. For each image ``<stem>`` the output folder gets ``<stem>.json`` and
``<stem>.png`` (a stem used twice gets a ``-2``, ``-3`` ... suffix) and the run ends with ``summary.json``:
``processed`` (file, json, png, counts), ``failed`` (file, reason) and ``ignored`` (folder entries without an
image extension). Unreadable images are reported there and in the log; they never stop the run. The exit
status is 0 when at least one image was processed, 1 when none was, 2 for bad arguments.

Per-image JSON::

    {"file": "photos/a.jpg", "width": 640, "height": 480, "mode": "sgdet",
     "boxes": [[x1, y1, x2, y2], ...],            # pixels of the original image, EXIF orientation applied
     "labels": ["person", ...], "label_ids": [56, ...], "scores": [0.97, ...],
     "triplets": [{"subject": 0, "object": 3, "subject_label": "person", "object_label": "horse",
                   "predicate": "riding", "predicate_id": 31, "predicate_score": 0.81, "score": 0.74}, ...],
     "num_candidate_pairs": 4032}

``triplets`` holds the ``--top-k`` best (subject, object) pairs, best first, with one predicate each (the best
non-background one); ``score`` = predicate score x subject score x object score.

PredCls / SGCls on your images: give the boxes (and, for PredCls, the labels) with ``--boxes-json``::

    {"a.jpg": {"boxes": [[x1, y1, x2, y2], ...], "labels": ["person", "horse", ...]},
     "photos/b.png": {"boxes": [[10, 20, 200, 300]]}}

Keys are matched against each input's path as given on the command line, then against its file name. Boxes are
XYXY in pixels of the image as displayed (after EXIF orientation), clipped to the image; ``labels`` (names from
the model's ``thing_classes``, or 0-based class indices) are optional and only used in PredCls. The config must
be PredCls (``MODEL.ROI_RELATION_HEAD.USE_GT_BOX True``, ``USE_GT_OBJECT_LABEL True``) or SGCls
(``USE_GT_BOX True``, ``USE_GT_OBJECT_LABEL False``); images without an entry are reported as failed.

Class names come from the metadata of ``--dataset``, else of ``DATASETS.TEST[0]`` when registered, else from the
model (``roi_heads.thing_classes`` / ``predicate_classes``), the checkpoint, or the priors file
(``MODEL.ROI_RELATION_HEAD.PRIORS_FILE``).
"""
import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.logger import setup_logger

import kern_d2.data  # noqa: F401  (registers the builtin datasets and their metadata)
import kern_d2.modeling  # noqa: F401  (registers the model parts)
from kern_d2 import add_kern_config
from kern_d2.checkpoint import CheckpointError, SGGCheckpointer
from kern_d2.modeling.roi_heads import sgg_mode
from kern_d2.utils.image_io import IMAGE_EXTENSIONS, ImageReadError, read_image
from kern_d2.utils.visualizer import draw_scene_graph, save_image

logger = logging.getLogger("kern_d2.predict")

SUMMARY_NAME = "summary"


class InputError(Exception):
    """Bad command line input (no images, malformed --boxes-json, no class names, ...): the run stops."""


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
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )
    parser.add_argument("extra_opts", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def setup_cfg(config_file: str, opts: Sequence[str]):
    cfg = get_cfg()
    add_kern_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (OSError, KeyError, AssertionError, ValueError) as e:  # missing file, unknown key, odd KEY VALUE list
        raise InputError(f"config {config_file} with overrides {list(opts)}: {type(e).__name__}: {e}") from e
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def collect_image_files(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Expand folders and globs. Returns (files to read, in order without repeats; folder entries that are not
    image files by extension, which are ignored). A path or pattern that matches nothing is an InputError."""
    files, ignored, seen = [], [], set()

    def add(path: str):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in inputs:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    add(path)
                else:
                    ignored.append(path)
        elif os.path.exists(item):
            add(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise InputError(f"--input {item}: no such file or folder, and no file matches it as a glob")
            for path in matches:
                if os.path.isfile(path):
                    add(path)
    return files, ignored


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


def load_boxes_json(path: str) -> Dict[str, dict]:
    """Read and check the --boxes-json file (schema in the module docstring)."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--boxes-json {path}: {e}") from e
    if not isinstance(spec, dict):
        raise InputError(f"--boxes-json {path}: expected an object keyed by image file name")
    for key, entry in spec.items():
        if not isinstance(entry, dict) or "boxes" not in entry:
            raise InputError(f"--boxes-json {path}: entry {key!r} must be an object with a 'boxes' list")
        boxes = np.asarray(entry["boxes"], dtype=np.float64) if len(entry["boxes"]) else np.zeros((0, 4))
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
            raise InputError(f"--boxes-json {path}: entry {key!r}: 'boxes' must be a list of [x1, y1, x2, y2]")
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise InputError(f"--boxes-json {path}: entry {key!r}: a box has x2 < x1 or y2 < y1 (expected XYXY)")
        labels = entry.get("labels")
        if labels is not None and len(labels) != len(boxes):
            raise InputError(f"--boxes-json {path}: entry {key!r}: {len(boxes)} boxes but {len(labels)} labels")
    return spec


def dataset_inputs(name: str, num_images: int = 0) -> Tuple[List[str], Dict[str, dict]]:
    """(image files, their gt boxes and labels in the --boxes-json format keyed by file) of the first
    ``num_images`` images (all when <= 0) of a registered dataset."""
    if name not in DatasetCatalog.list():
        raise InputError(f"--dataset {name}: not a registered dataset")
    try:
        dicts = DatasetCatalog.get(name)
    except (OSError, KeyError, ValueError) as e:  # missing or malformed dataset files
        raise InputError(f"--dataset {name}: {type(e).__name__}: {e}") from e
    if num_images > 0:
        dicts = dicts[:num_images]
    spec = {}
    for record in dicts:
        annotations = record.get("annotations", [])
        spec[record["file_name"]] = {
            "boxes": [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            "labels": [int(a["category_id"]) for a in annotations],
        }
    return [record["file_name"] for record in dicts], spec


def find_boxes_entry(spec: Dict[str, dict], path: str) -> Optional[dict]:
    for key in (path, os.path.normpath(path), os.path.basename(path)):
        if key in spec:
            return spec[key]
    return None


def label_ids(labels: Sequence, thing_classes: Sequence[str], where: str) -> np.ndarray:
    """Class names or 0-based indices -> int64 indices into ``thing_classes``."""
    index = {name: i for i, name in enumerate(thing_classes)}
    ids = []
    for label in labels:
        if isinstance(label, str):
            if label not in index:
                raise InputError(f"{where}: label {label!r} is not one of the model's {len(thing_classes)} classes")
            ids.append(index[label])
        elif isinstance(label, int) and 0 <= label < len(thing_classes):
            ids.append(label)
        else:
            raise InputError(f"{where}: label {label!r} must be a class name or an index in [0, {len(thing_classes)})")
    return np.asarray(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Model inputs


class ImageInputs(Dataset):
    """Reads, resizes and packs each image as Detectron2's DefaultPredictor does; never raises for a bad image.

    Item: {"file", "error" (str or None), "input" (model input dict), "rgb" (HxWx3 uint8 for drawing, at most
    the test size)}.
    """

    def __init__(self, files, cfg, thing_classes, boxes_spec=None):
        self.files = list(files)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise InputError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: predict.py supports RGB and BGR models")
        self.input_format = cfg.INPUT.FORMAT
        # Decode no larger than the test size needs (MIN_SIZE_TEST 0 means "no resize": decode in full).
        self.max_side = cfg.INPUT.MAX_SIZE_TEST if cfg.INPUT.MIN_SIZE_TEST > 0 else None
        self.thing_classes = thing_classes
        self.boxes_spec = boxes_spec
        self.use_gt_labels = cfg.MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        try:
            item = self.prepare(path)
        except (ImageReadError, InputError) as e:
            return {"file": path, "error": str(e)}
        item["error"] = None
        return item

    def prepare(self, path: str) -> dict:
        loaded = read_image(path, self.max_side)
        given = self._given_boxes(path, loaded.height, loaded.width)
        pixels = loaded.rgb if self.input_format == "RGB" else loaded.rgb[:, :, ::-1]
        transform = self.resize.get_transform(pixels)
        image = transform.apply_image(pixels)
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputError(f"{path}: {loaded.width}x{loaded.height} is too thin to resize to the test size")
        inputs = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32")),
            "height": loaded.height,
            "width": loaded.width,
            "file_name": path,
        }
        if given is not None:
            boxes, classes = given
            new_h, new_w = image.shape[:2]
            scale = np.array([new_w / loaded.width, new_h / loaded.height] * 2)
            instances = Instances((new_h, new_w))
            instances.gt_boxes = Boxes(torch.as_tensor(boxes * scale, dtype=torch.float32))
            instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
            inputs["instances"] = instances
        return {"file": path, "input": inputs, "rgb": loaded.rgb}

    def _given_boxes(self, path, height, width) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(boxes [G,4] clipped to the image, classes [G]) from --boxes-json, or None without it."""
        if self.boxes_spec is None:
            return None
        entry = find_boxes_entry(self.boxes_spec, path)
        if entry is None:
            raise InputError(f"{path}: no entry in --boxes-json (keys are file paths or names)")
        if len(entry["boxes"]) == 0:
            raise InputError(f"{path}: --boxes-json gives no boxes")
        boxes = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        labels = entry.get("labels")
        if labels is None:
            if self.use_gt_labels:
                raise InputError(
                    f"{path}: --boxes-json gives no labels, which PredCls needs (MODEL.ROI_RELATION_HEAD."
                    "USE_GT_OBJECT_LABEL True); add labels or run SGCls (USE_GT_OBJECT_LABEL False)"
                )
            return boxes, np.zeros(len(boxes), dtype=np.int64)
        return boxes, label_ids(labels, self.thing_classes, f"--boxes-json entry for {path}")


# ---------------------------------------------------------------------------------------------------------------
# Model outputs


def instances_to_record(
    instances: Instances, thing_classes: Sequence[str], predicate_classes: Sequence[str], top_k: int = 20
) -> dict:
    """JSON-ready scene graph of one image from the model's output ``Instances`` (conventions in DESIGN.md).

    Triplets: one per (subject, object) pair with its best non-background predicate, ranked by
    predicate score x subject score x object score (ties keep the model's order); the first ``top_k`` (all when
    ``top_k`` <= 0).
    """
    for field in ("pred_boxes", "pred_classes", "scores", "rel_pair_idxs", "rel_scores"):
        if not instances.has(field):
            raise ValueError(f"model output has no '{field}' (fields: {sorted(instances.get_fields())})")
    boxes = instances.pred_boxes.tensor.detach().float().cpu()
    classes = instances.pred_classes.detach().cpu().long()
    scores = instances.scores.detach().float().cpu()
    pairs = instances.rel_pair_idxs.detach().cpu().long().reshape(-1, 2)
    rel_scores = instances.rel_scores.detach().float().cpu()
    bad = classes[(classes < 0) | (classes >= len(thing_classes))]
    if bad.numel():
        raise ValueError(f"model predicted class {int(bad[0])}; only {len(thing_classes)} class names are known")
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= len(classes)):
        raise ValueError(f"rel_pair_idxs point outside the {len(classes)} predicted boxes")
    if pairs.shape[0] and rel_scores.shape[1] != len(predicate_classes):
        raise ValueError(
            f"model scores {rel_scores.shape[1]} predicates but {len(predicate_classes)} predicate names are known "
            "(index 0 = no relation)"
        )
    if pairs.shape[0] and rel_scores.shape[1] < 2:
        raise ValueError("rel_scores has no predicate column besides 0 (no relation)")
    names = [thing_classes[c] for c in classes.tolist()]
    triplets = []
    if pairs.shape[0]:
        predicate_scores, predicates = rel_scores[:, 1:].max(dim=1)
        predicates = predicates + 1
        triplet_scores = predicate_scores * scores[pairs[:, 0]] * scores[pairs[:, 1]]
        order = torch.argsort(triplet_scores, descending=True, stable=True)
        if top_k > 0:
            order = order[:top_k]
        for i in order.tolist():
            s, o = int(pairs[i, 0]), int(pairs[i, 1])
            triplets.append(
                {
                    "subject": s,
                    "object": o,
                    "subject_label": names[s],
                    "object_label": names[o],
                    "predicate": predicate_classes[int(predicates[i])],
                    "predicate_id": int(predicates[i]),
                    "predicate_score": round(float(predicate_scores[i]), 6),
                    "score": round(float(triplet_scores[i]), 6),
                }
            )
    height, width = instances.image_size
    return {
        "width": int(width),
        "height": int(height),
        "boxes": [[round(v, 2) for v in box] for box in boxes.tolist()],
        "labels": names,
        "label_ids": classes.tolist(),
        "scores": [round(v, 6) for v in scores.tolist()],
        "triplets": triplets,
        "num_candidate_pairs": int(pairs.shape[0]),
    }


def format_record_json(record: dict) -> str:
    """JSON text of a record with one top-level key per line and one box / triplet per line (plain
    ``json.dump(indent=...)`` would put every coordinate on its own line)."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and isinstance(value[0], (list, dict)):
            items = ",\n".join("  " + json.dumps(item) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def draw_record(record: dict, rgb: np.ndarray, max_triplets: int, show_all_boxes: bool, title: str) -> np.ndarray:
    """The picture of one record over ``rgb`` (which may be smaller than the record's width x height)."""
    scale = np.array([rgb.shape[1] / record["width"], rgb.shape[0] / record["height"]] * 2)
    boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4) * scale
    triplets = [(t["subject"], t["object"], t["predicate"], t["score"]) for t in record["triplets"]]
    return draw_scene_graph(
        rgb,
        boxes,
        record["labels"],
        triplets,
        box_scores=None if record.get("mode") == "predcls" else record["scores"],  # PredCls scores are all 1
        max_triplets=max_triplets,
        title=title,
        show_unrelated_boxes=show_all_boxes,
    )


def run_model(model, inputs: List[dict]) -> List[Tuple[Optional[Instances], Optional[str]]]:
    """Per input, (output instances, None) or (None, error). A failing batch is retried image by image, so one
    bad image (e.g. out of memory) costs only its own result."""
    try:
        with torch.no_grad():
            # No Instances.to("cpu"): it re-checks field lengths, which the [M, ...] relation fields fail.
            # instances_to_record moves each field itself.
            return [(out["instances"], None) for out in model(inputs)]
    except Exception as e:  # noqa: BLE001 -- reported per image in summary.json
        if len(inputs) > 1:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return [result for x in inputs for result in run_model(model, [x])]
        logger.exception(f"model failed on {inputs[0].get('file_name')}")
        return [(None, f"model failed: {type(e).__name__}: {e}")]


class RecordWriter:
    """Writes ``<stem>.json`` and ``<stem>.png`` of each image's model output into ``output_dir``."""

    def __init__(self, output_dir, mode, thing_classes, predicate_classes, top_k=20, draw_k=20,
                 show_all_boxes=False, pictures=True):
        self.output_dir, self.mode = output_dir, mode
        self.thing_classes, self.predicate_classes = thing_classes, predicate_classes
        self.top_k, self.draw_k = top_k, draw_k
        self.show_all_boxes, self.pictures = show_all_boxes, pictures
        os.makedirs(output_dir, exist_ok=True)

    def write(self, path: str, stem: str, instances: Instances, rgb: np.ndarray) -> dict:
        """Returns the summary entry of the image: file, json, png, num_boxes, num_triplets."""
        record = instances_to_record(instances, self.thing_classes, self.predicate_classes, self.top_k)
        record = {"file": path, "mode": self.mode, **record}
        entry = {"file": path, "json": os.path.join(self.output_dir, stem + ".json"),
                 "num_boxes": len(record["boxes"]), "num_triplets": len(record["triplets"])}
        with open(entry["json"], "w") as f:
            f.write(format_record_json(record))
        if self.pictures:
            title = f"{os.path.basename(path)}  ({record['width']}x{record['height']}, {self.mode})"
            entry["png"] = os.path.join(self.output_dir, stem + ".png")
            save_image(entry["png"], draw_record(record, rgb, self.draw_k, self.show_all_boxes, title))
        return entry


def predict_images(model, images: ImageInputs, writer: RecordWriter, batch_size: int = 4,
                   num_workers: int = 0) -> dict:
    """Run ``model`` over ``images`` in batches and write each result with ``writer``. Returns the summary:
    {"processed": [writer entries], "failed": [{"file", "reason"}]}; bad images never stop the run."""
    stems = output_stems(images.files)
    loader = DataLoader(images, batch_size=max(1, batch_size), num_workers=num_workers, collate_fn=list)
    processed, failed = [], []
    with tqdm(total=len(images), desc="predict", unit="img", disable=None) as progress:
        for batch in loader:
            for item in batch:
                if item["error"] is not None:
                    logger.warning(f"skipped: {item['error']}")
                    failed.append({"file": item["file"], "reason": item["error"]})
            ready = [item for item in batch if item["error"] is None]
            results = run_model(model, [item["input"] for item in ready]) if ready else []
            for item, (instances, error) in zip(ready, results):
                path = item["file"]
                if error is None:
                    try:
                        processed.append(writer.write(path, stems[path], instances, item["rgb"]))
                        continue
                    except ValueError as e:  # output that does not fit the class names
                        error = str(e)
                logger.warning(f"failed: {path}: {error}")
                failed.append({"file": path, "reason": error})
            progress.update(len(batch))
    return {"processed": processed, "failed": failed}


# ---------------------------------------------------------------------------------------------------------------
# Model and class names


def _as_names(values) -> Optional[List[str]]:
    return None if values is None else [str(v) for v in list(values)]


def resolve_class_names(cfg, model, checkpoint_extra: Optional[dict] = None,
                        dataset: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(thing_classes, predicate_classes) from the first source that has each; InputError if none has them."""
    sources = []
    for name in ([dataset] if dataset else []) + list(cfg.DATASETS.TEST[:1]):
        meta = MetadataCatalog.get(name)
        sources.append((f"metadata of {name}", meta.get("thing_classes", None), meta.get("predicate_classes", None)))
    heads = getattr(model, "roi_heads", None)
    sources.append(("the model", getattr(heads, "thing_classes", None), getattr(heads, "predicate_classes", None)))
    extra = checkpoint_extra or {}
    sources.append(("the checkpoint", extra.get("thing_classes"), extra.get("predicate_classes")))
    priors_file = cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE
    if priors_file and os.path.isfile(priors_file):
        with np.load(priors_file, allow_pickle=False) as priors:
            sources.append((priors_file, priors.get("thing_classes"), priors.get("predicate_classes")))

    def first(position: int):
        for name, *lists in sources:
            if lists[position] is not None and len(lists[position]):
                return _as_names(lists[position]), name
        return None, None

    things, things_from = first(0)
    predicates, predicates_from = first(1)
    if things is None or predicates is None:
        found = (("thing_classes", things), ("predicate_classes", predicates))
        missing = " and ".join(name for name, names in found if names is None)
        raise InputError(
            f"no {missing} found: register the dataset DATASETS.TEST[0] "
            f"({cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else 'unset'}) or set "
            "MODEL.ROI_RELATION_HEAD.PRIORS_FILE to the model's priors .npz"
        )
    logger.info(f"{len(things)} object classes from {things_from}, {len(predicates)} predicates from {predicates_from}")
    if len(things) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        logger.warning(f"{len(things)} class names but MODEL.ROI_HEADS.NUM_CLASSES = {cfg.MODEL.ROI_HEADS.NUM_CLASSES}")
    if len(predicates) != cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES:
        logger.warning(f"{len(predicates)} predicate names (incl. no relation) but "
                       f"MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = {cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES}")
    return things, predicates


def load_model(cfg):
    """build_model + weights (cfg.MODEL.WEIGHTS) + eval(). Returns (model, the checkpoint's other entries)."""
    model = build_model(cfg)
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: the model is untrained and its scene graphs are meaningless")
    elif "://" not in weights and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS {weights}: no such file")
    try:
        extra = SGGCheckpointer(model, for_inference=True).load(weights) if weights else {}
    except CheckpointError as e:
        raise InputError(str(e)) from e
    model.eval()
    return model, extra or {}


def check_mode(cfg, boxes_json: Optional[str], from_dataset: bool = False) -> str:
    """The task ("predcls", "sgcls" or "sgdet") of the config, checked against the presence of --boxes-json
    (``from_dataset``: the images come with the gt boxes of a dataset)."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    try:
        mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
    except ValueError as e:
        raise InputError(str(e)) from e
    use_gt_box = rel.USE_GT_BOX
    if use_gt_box and not boxes_json and not from_dataset:
        raise InputError(
            "the config is PredCls/SGCls (MODEL.ROI_RELATION_HEAD.USE_GT_BOX True), which scores relations between "
            "given boxes: pass --boxes-json (or --dataset), or run SGDet with --opts MODEL.ROI_RELATION_HEAD.USE_GT_BOX False "
            "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL False"
        )
    if boxes_json and not use_gt_box:
        raise InputError(
            "--boxes-json needs a PredCls/SGCls config: add --opts MODEL.ROI_RELATION_HEAD.USE_GT_BOX True "
            "(and MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL True for PredCls with labels)"
        )
    return mode


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="kern_d2")
    try:
        cfg = setup_cfg(args.config_file, list(args.opts) + list(args.extra_opts))
        mode = check_mode(cfg, args.boxes_json, from_dataset=args.dataset is not None)
        gt_spec = None
        if args.dataset:
            (files, gt_spec), ignored = dataset_inputs(args.dataset, args.num_images), []
            if not files:
                raise InputError(f"--dataset {args.dataset}: no images")
        else:
            files, ignored = collect_image_files(args.input)
            for path in ignored:
                logger.info(f"ignored (not an image file name): {path}")
            if not files:
                raise InputError(f"--input {' '.join(args.input)}: no image files found")
        if args.boxes_json:
            boxes_spec = load_boxes_json(args.boxes_json)
        else:
            boxes_spec = gt_spec if cfg.MODEL.ROI_RELATION_HEAD.USE_GT_BOX else None
        model, extra = load_model(cfg)
        thing_classes, predicate_classes = resolve_class_names(cfg, model, extra, dataset=args.dataset)
        images = ImageInputs(files, cfg, thing_classes, boxes_spec)
    except InputError as e:
        logger.error(str(e))
        return 2
    logger.info(f"{len(files)} images -> {args.output}")
    writer = RecordWriter(
        args.output, mode, thing_classes, predicate_classes, top_k=args.top_k,
        draw_k=min(args.draw_k, args.top_k) if args.top_k > 0 else args.draw_k,
        show_all_boxes=args.show_all_boxes or boxes_spec is not None, pictures=not args.no_pictures,
    )
    summary = predict_images(model, images, writer, args.batch_size, args.num_workers)
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
