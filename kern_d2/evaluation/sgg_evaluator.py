"""``SceneGraphEvaluator``: scene graph recall metrics in Detectron2's ``inference_on_dataset``.

The gt comes from the registered dataset dicts (boxes at the original image size, every relation row), as
COCOEvaluator takes its gt from the json. ``process()`` reduces each image at once to an ``ImageHits`` record (a few
integers per gt triplet), so memory stays small and gathering across processes is cheap; records are merged in
dataset order, which makes distributed results equal to single-process ones.
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, Iterable, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from kern_d2.config import sgg_mode_from_cfg

from .oi_metrics import OI_EVALUATOR_TYPE, OI_METRICS, OIMetricAccumulator
from .sgg_metrics import (
    MODES,
    SGGMetricAccumulator,
    gt_predicate_counts,
    merge_image_hits,
    triplet_keys,
)
from .sgg_report import headline_table, per_predicate_rows, per_predicate_table, plot_per_predicate, write_json

__all__ = ["SceneGraphEvaluator", "gt_from_dataset_dict", "mode_from_cfg", "prediction_from_output", "unseen_triplets"]

# Keys of the packed (subject label, object label, predicate) triplets of training sets, by dataset name: loading a
# training set is slow and the trainer builds a new evaluator at every evaluation.
_TRAIN_TRIPLET_CACHE: Dict[str, np.ndarray] = {}


def mode_from_cfg(cfg) -> str:
    """``predcls`` / ``sgcls`` / ``sgdet`` from MODEL.ROI_RELATION_HEAD.USE_GT_BOX and USE_GT_OBJECT_LABEL."""
    return sgg_mode_from_cfg(cfg)


def gt_from_dataset_dict(record: dict, dataset_name: str = "") -> dict:
    """The gt of one dataset dict in the format of ``compute_sgg_metrics``: ``boxes`` float64 [G,4] XYXY_ABS,
    ``labels`` int64 [G], ``relations`` int64 [R,3] (every row, duplicates included), plus ``image_id``."""
    where = f"dataset '{dataset_name}' image {record.get('image_id', record.get('file_name'))}"
    if "relations" not in record:
        raise KeyError(f"{where}: no 'relations' field (scene graph datasets need one, int [R,3])")
    annotations = record.get("annotations", [])
    boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    modes = {a["bbox_mode"] for a in annotations}
    if len(modes) == 1:
        boxes = np.asarray(BoxMode.convert(boxes, modes.pop(), BoxMode.XYXY_ABS), dtype=np.float64)
    elif len(modes) > 1:
        boxes = np.asarray([BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
                           dtype=np.float64).reshape(-1, 4)
    labels = np.asarray([a["category_id"] for a in annotations], dtype=np.int64)
    relations = np.asarray(record["relations"], dtype=np.int64).reshape(-1, 3)
    if relations.size and (relations[:, :2].min() < 0 or relations[:, :2].max() >= len(annotations)):
        raise ValueError(f"{where}: relation indices must be in [0, {len(annotations)})")
    return {"image_id": record["image_id"], "boxes": boxes, "labels": labels, "relations": relations}


def _triplet_keys_of(gts: Iterable[dict]) -> np.ndarray:
    """Unique packed (subject label, object label, predicate) keys over gt dicts."""
    keys = [triplet_keys(np.stack([g["labels"][g["relations"][:, 0]], g["labels"][g["relations"][:, 1]],
                                   g["relations"][:, 2]], axis=1)) for g in gts]
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def unseen_triplets(train_dataset_name: str, test_gts: Iterable[dict]) -> np.ndarray:
    """(subject label, object label, predicate) triplets of ``test_gts`` that never occur in the registered
    training set ``train_dataset_name``: int64 [Z,3]."""
    if train_dataset_name not in _TRAIN_TRIPLET_CACHE:
        train = DatasetCatalog.get(train_dataset_name)
        _TRAIN_TRIPLET_CACHE[train_dataset_name] = _triplet_keys_of(
            gt_from_dataset_dict(d, train_dataset_name) for d in train)
    unseen = np.setdiff1d(_triplet_keys_of(test_gts), _TRAIN_TRIPLET_CACHE[train_dataset_name])
    mask = (1 << 21) - 1
    return np.stack([unseen >> 42, (unseen >> 21) & mask, unseen & mask], axis=1)


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "tensor"):  # Boxes, or a relation field wrapped to fit in Instances
        value = value.tensor
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu")
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()  # numpy has no bfloat16
        return value.numpy()
    return np.asarray(value)


def prediction_from_output(output: dict, image_id) -> dict:
    """The prediction of one model output in the format of ``compute_sgg_metrics`` (numpy, on CPU). Relation
    fields are read from ``output["instances"]`` or, failing that, from ``output`` itself."""
    instances = output.get("instances")
    if instances is None:
        raise KeyError(f"SceneGraphEvaluator: the output for image {image_id} has no 'instances'")
    fields = {"boxes": "pred_boxes", "labels": "pred_classes", "scores": "scores",
              "rel_pairs": "rel_pair_idxs", "rel_scores": "rel_scores"}
    pred = {}
    for key, field in fields.items():
        if instances.has(field):
            pred[key] = _to_numpy(instances.get(field))
        elif field in output:
            pred[key] = _to_numpy(output[field])
    for key in ("rel_pairs", "rel_scores"):
        if key not in pred:
            raise KeyError(f"SceneGraphEvaluator: the output for image {image_id} has no '{fields[key]}'")
    return pred


class SceneGraphEvaluator(DatasetEvaluator):
    """R@K, ng-R@K, mR@K, ng-mR@K and zR@K of scene graph predictions (definitions in README.md, "Metrics"), plus the
    Open Images metrics (oi-R@50, mAP/wmAP_rel, mAP/wmAP_phr, score_wtd; :mod:`.oi_metrics`) for datasets whose
    metadata ``evaluator_type`` is ``"sgg_oi"``.

    ``evaluate()`` returns ``{"sgg": {metric: percent}}`` and, with an ``output_dir``, writes ``sgg_metrics.json``
    (every figure, per-predicate ones with names) and ``sgg_per_predicate.png``.
    """

    def __init__(self, dataset_name: str, mode: str, output_dir: str = None, ks=(20, 50, 100),
                 iou_thresh: float = 0.5, legacy_iou: bool = False, zero_shot_triplets=None,
                 distributed: bool = True):
        """
        Args:
            dataset_name: a registered dataset (DatasetCatalog) whose dicts carry ``relations``.
            mode: one of ``predcls``, ``sgcls``, ``sgdet``.
            zero_shot_triplets: (subject label, object label, predicate) triplets for zR@K; None: no zR@K.
            distributed: gather records from all processes and report on the main one.
        """
        if mode not in MODES:
            raise ValueError(f"SceneGraphEvaluator: mode must be one of {MODES}, got {mode!r}")
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._accumulator = SGGMetricAccumulator(mode, ks, iou_thresh, zero_shot_triplets, legacy_iou)
        self._predicate_names = MetadataCatalog.get(dataset_name).get("predicate_classes", None)
        self._gt: Dict[object, Tuple[int, dict]] = {}
        for position, record in enumerate(DatasetCatalog.get(dataset_name)):
            if record["image_id"] in self._gt:
                raise ValueError(f"dataset '{dataset_name}': image_id {record['image_id']} occurs twice")
            self._gt[record["image_id"]] = (position, gt_from_dataset_dict(record, dataset_name))
        self._oi = None  # the extra metric set chosen by the dataset's evaluator_type
        if MetadataCatalog.get(dataset_name).get("evaluator_type", "sgg") == OI_EVALUATOR_TYPE:
            self._oi = OIMetricAccumulator(mode, self._num_predicates(), iou_thresh, legacy_iou)

    def _num_predicates(self) -> int:
        """P ("no relation" included): the dataset's predicate list (read by the loader), else the gt's largest id."""
        names = MetadataCatalog.get(self._dataset_name).get("predicate_classes", None)
        if names is not None:
            return len(names)
        return 1 + max((int(gt["relations"][:, 2].max()) for _, gt in self._gt.values() if len(gt["relations"])),
                       default=0)

    @classmethod
    def from_cfg(cls, cfg, dataset_name: str, output_dir: str = None, distributed: bool = True):
        """Mode from MODEL.ROI_RELATION_HEAD, K / IoU options from TEST.SGG; zR@K over the triplets of
        ``dataset_name`` never seen in DATASETS.TRAIN[0] when that dataset is registered and its files exist (at
        ``--eval-only`` the train set may be absent: then no zR@K, with a warning, rather than a failure after the
        whole inference)."""
        from kern_d2.data.datasets.registration import missing_dataset_files

        evaluator = cls(dataset_name, mode_from_cfg(cfg), output_dir, ks=tuple(cfg.TEST.SGG.KS),
                        iou_thresh=cfg.TEST.SGG.IOU_THRESH, legacy_iou=cfg.TEST.SGG.LEGACY_IOU,
                        distributed=distributed)
        train = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else None
        if train is not None and train in DatasetCatalog.list():
            missing = missing_dataset_files(train)
            if missing:
                logging.getLogger(__name__).warning(
                    f"zR@K is not computed: DATASETS.TRAIN[0] {train} cannot be loaded ({missing[0]} does not "
                    "exist); name the train set the model was trained on in DATASETS.TRAIN to get it")
            else:
                evaluator.set_zero_shot_triplets(unseen_triplets(train, evaluator.gts()))
        return evaluator

    @property
    def mode(self) -> str:
        return self._accumulator.mode

    def gts(self) -> Iterable[dict]:
        """The gt dicts of the dataset, in dataset order."""
        return (gt for _, gt in sorted(self._gt.values(), key=lambda item: item[0]))

    def set_zero_shot_triplets(self, triplets):
        """Triplets (subject label, object label, predicate) that zR@K is computed over; call before process()."""
        self._accumulator = SGGMetricAccumulator(self.mode, self._accumulator.ks, self._accumulator.iou_thresh,
                                                 triplets, self._accumulator.legacy_iou)

    def reset(self):
        self._accumulator.records = []
        if self._oi is not None:
            self._oi.records = []

    def process(self, inputs, outputs):
        for input_, output in zip(inputs, outputs):
            image_id = input_["image_id"]
            if image_id not in self._gt:
                raise KeyError(f"SceneGraphEvaluator: image_id {image_id} is not in dataset '{self._dataset_name}'")
            position, gt = self._gt[image_id]
            prediction = prediction_from_output(output, image_id)
            self._accumulator.add(gt, prediction, key=position)
            if self._oi is not None:
                self._oi.add(gt, prediction, key=position)

    def gathered_records(self, records=None):
        """Every process's records (default: the recall records) merged in dataset order on the main process; []
        elsewhere."""
        records = self._accumulator.records if records is None else records
        if not self._distributed:
            return merge_image_hits([records])
        comm.synchronize()
        parts = comm.gather(records, dst=0)
        return merge_image_hits(parts) if comm.is_main_process() else []

    def evaluate(self):
        records = self.gathered_records()
        oi_records = self.gathered_records(self._oi.records) if self._oi is not None else None
        if not records:
            if comm.is_main_process() or not self._distributed:
                self._logger.warning("[SceneGraphEvaluator] Did not receive valid predictions.")
            return {}
        metrics = self._accumulator.summarize(records)
        if self._oi is not None:
            oi_metrics = self._oi.summarize(oi_records)
            metrics["per_predicate"].update(oi_metrics.pop("per_predicate"))
            metrics.update(oi_metrics)
        per_predicate = {name: {p: 100.0 * v for p, v in values.items()}
                         for name, values in metrics.pop("per_predicate").items()}
        results = OrderedDict((name, 100.0 * value) for name, value in metrics.items())
        self._report(results, per_predicate, records)
        return OrderedDict(sgg=results)

    def _report(self, results, per_predicate, records):
        ks = self._accumulator.ks
        counts = gt_predicate_counts(records)
        rows = per_predicate_rows(per_predicate, counts, self._predicate_names)
        num_with_relations = sum(1 for r in records if r.triplets.shape[0])
        self._logger.info(
            f"Scene graph evaluation ({self.mode}) on '{self._dataset_name}': {len(records)} images, "
            f"{num_with_relations} with gt relations, {sum(counts.values())} gt triplets; recall in %:\n"
            + headline_table(results, ks))
        if self._oi is not None:
            self._logger.info("Open Images metrics in % (score_wtd = 0.2 oi-R@50 + 0.4 wmAP_rel + 0.4 wmAP_phr):\n"
                              + per_predicate_table([{name: results[name] for name in OI_METRICS}]))
        self._logger.info("Per-predicate figures in %, most frequent predicate first:\n" + per_predicate_table(rows))
        if not self._output_dir:
            return
        PathManager.mkdirs(self._output_dir)
        zero_shot = self._accumulator.zero_shot_triplets
        write_json(os.path.join(self._output_dir, "sgg_metrics.json"), {
            "dataset": self._dataset_name,
            "mode": self.mode,
            "ks": list(ks),
            "iou_thresh": self._accumulator.iou_thresh,
            "legacy_iou": self._accumulator.legacy_iou,
            "unit": "percent",
            "num_images": len(records),
            "num_images_with_relations": num_with_relations,
            "num_gt_triplets": sum(counts.values()),
            "num_zero_shot_triplet_types": None if zero_shot is None else int(zero_shot.shape[0]),
            "evaluator_type": "sgg" if self._oi is None else OI_EVALUATOR_TYPE,
            "metrics": dict(results),
            "per_predicate": rows,
        })
        k = max(ks)
        plot_per_predicate(os.path.join(self._output_dir, "sgg_per_predicate.png"), rows, k,
                           f"{self._dataset_name} ({self.mode}): per-predicate recall@{k}, by gt frequency")
        if self._oi is not None:
            plot_per_predicate(os.path.join(self._output_dir, "sgg_oi_per_predicate_ap.png"), rows, k,
                               f"{self._dataset_name} ({self.mode}): per-predicate AP, by gt frequency",
                               columns=("AP_rel", "AP_phr"), ylabel="AP (%)")
