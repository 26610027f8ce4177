"""``SGGDatasetMapper``: read an image, apply Detectron2 transforms, and build ``instances`` with relations."""
import copy
import logging
from typing import List, Optional, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode, Boxes, Instances

from ..config_check import check_classes_match_config
from ..structures import Relations
from .datasets.arrays import DatasetFormatError

__all__ = ["SGGDatasetMapper", "sample_one_predicate_per_pair"]

logger = logging.getLogger(__name__)

UNREADABLE_IMAGE_POLICIES = ("error", "skip")


def sample_one_predicate_per_pair(relations: np.ndarray, rng=np.random) -> np.ndarray:
    """Keep one row, drawn uniformly, per distinct (subject, object) pair of ``relations`` [R,3].

    Rows keep their original order. ``rng``: a numpy RandomState/module (Detectron2 seeds ``np.random`` per
    data-loader worker).
    """
    if len(relations) < 2:
        return relations
    order = rng.permutation(len(relations))
    # the first occurrence of each pair in a random order is a uniform draw among that pair's rows
    _, first = np.unique(relations[order, :2], axis=0, return_index=True)
    return relations[np.sort(order[first])]


class SGGDatasetMapper:
    """Map a dataset dict (with ``relations``) to the model's input.

    Output: ``image`` (uint8 tensor CxHxW), ``height``/``width``/``image_id``/``file_name`` as given,
    ``instances`` at the transformed size (``gt_boxes``, ``gt_classes`` int64 [G], ``gt_relations``
    :class:`Relations`) and ``relations`` (int64 [R,3]). Annotations are kept at test time too (PredCls and
    SGCls use the gt boxes; the evaluator the gt relations); the original ``annotations`` stay in the dict at
    test time. In training, with ``sample_duplicate_pairs``, a pair with several predicates keeps one drawn
    at random per call (so per epoch); at test all rows are kept.
    Boxes are never dropped, even if a transform leaves one without area, so relation indices stay valid.

    Each image's annotations are checked before use (class ids below ``num_classes``, relation indices within its
    boxes, predicates in 1..``num_predicates``-1): a dataset registered by other code fails with the file and
    image id, not with an IndexError deep in the model. ``unreadable_images`` (training only): "error" raises
    naming the file; "skip" logs and counts the image and returns None, so that Detectron2's ``MapDataset``
    draws another one.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        sample_duplicate_pairs: bool = True,
        num_classes: Optional[int] = None,
        num_predicates: Optional[int] = None,
        unreadable_images: str = "error",
    ):
        if unreadable_images not in UNREADABLE_IMAGE_POLICIES:
            raise ValueError(f"unreadable_images must be one of {UNREADABLE_IMAGE_POLICIES}, got {unreadable_images!r}")
        if unreadable_images == "skip" and not is_train:
            raise ValueError("unreadable_images='skip' is for training only: at test every image must be evaluated")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.sample_duplicate_pairs = sample_duplicate_pairs
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.unreadable_images = unreadable_images
        self.num_skipped = 0  # per process: each data-loader worker has its own copy
        mode = "training" if is_train else "inference"
        logger.info(f"[SGGDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        if is_train and cfg.INPUT.CROP.ENABLED:
            raise ValueError("SGGDatasetMapper: INPUT.CROP is not supported (a crop can cut related objects out)")
        num_classes, num_predicates = cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES
        check_classes_match_config(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST, num_classes, num_predicates)
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "sample_duplicate_pairs": cfg.DATASETS.SGG.SAMPLE_DUPLICATE_PAIRS,
            "num_classes": num_classes,
            "num_predicates": num_predicates,
            # DATASETS.SGG.UNREADABLE_IMAGES: "error" (default) or "skip"
            "unreadable_images": cfg.DATASETS.SGG.get("UNREADABLE_IMAGES", "error") if is_train else "error",
        }

    def _check_annotations(self, dataset_dict, classes: np.ndarray, relations: np.ndarray) -> None:
        """Raise DatasetFormatError naming the image when a class id, relation index or predicate is out of range."""
        where = f"{dataset_dict.get('file_name')} (image_id {dataset_dict.get('image_id')})"
        if self.num_classes is not None and classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            bad = classes[(classes < 0) | (classes >= self.num_classes)]
            raise DatasetFormatError(
                f"{where}: category_id {int(bad[0])} is outside [0, {self.num_classes}) (MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        bad_pair = np.flatnonzero(((relations[:, :2] < 0) | (relations[:, :2] >= len(classes))).any(axis=1))
        if bad_pair.size:
            raise DatasetFormatError(
                f"{where}: relation {relations[bad_pair[0]].tolist()} points at a box outside the image's "
                f"{len(classes)} annotations"
            )
        if self.num_predicates is not None:
            bad = np.flatnonzero((relations[:, 2] < 1) | (relations[:, 2] >= self.num_predicates))
            if bad.size:
                raise DatasetFormatError(
                    f"{where}: relation {relations[bad[0]].tolist()} has predicate {relations[bad[0], 2]}, outside "
                    f"1..{self.num_predicates - 1} (MODEL.ROI_RELATION_HEAD.NUM_PREDICATES; 0 is 'no relation')"
                )

    def _read_image(self, dataset_dict) -> np.ndarray:
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise OSError(
                f"SGGDatasetMapper: cannot read image {file_name} (image_id {dataset_dict.get('image_id')}): {e}"
            ) from e
        utils.check_image_size(dataset_dict, image)
        return image

    def _instances(self, annotations, relations, transforms, image_shape) -> Instances:
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float64
        ).reshape(-1, 4)
        boxes = transforms.apply_box(boxes).reshape(-1, 4)
        height, width = image_shape
        boxes = np.clip(boxes, 0, [width, height, width, height])
        instances = Instances(image_shape)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        instances.gt_relations = Relations(torch.as_tensor(relations), len(annotations))
        return instances

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        dataset_dict = copy.deepcopy(dataset_dict)
        if "annotations" in dataset_dict:
            classes = np.array([a["category_id"] for a in dataset_dict["annotations"]], dtype=np.int64)
            relations = np.asarray(dataset_dict.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
            self._check_annotations(dataset_dict, classes, relations)
        try:
            image = self._read_image(dataset_dict)
        except OSError as e:
            if self.unreadable_images != "skip":
                raise
            self.num_skipped += 1
            logger.warning(f"skipped image_id {dataset_dict.get('image_id')}: {e} ({self.num_skipped} unreadable "
                           "images skipped so far in this process)")
            return None
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if "annotations" not in dataset_dict:
            return dataset_dict
        relations = np.asarray(dataset_dict.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        if self.is_train and self.sample_duplicate_pairs:
            relations = sample_one_predicate_per_pair(relations)
        annotations = dataset_dict["annotations"] if not self.is_train else dataset_dict.pop("annotations")
        dataset_dict["instances"] = self._instances(annotations, relations, transforms, image.shape[:2])
        dataset_dict["relations"] = torch.as_tensor(relations)
        return dataset_dict
