"""Flat, vectorised annotations of one split, and the steps every SGG loader shares.

Both loaders (VG h5, simple JSON) first build an :class:`SGGArrays`: the boxes and relations of all images in
flat numpy arrays, grouped by image in image order. Cleaning (clip, drop degenerate boxes, filters) is done on
those arrays with numpy; only the final step builds Detectron2's per-image dicts.
"""
import dataclasses
import logging
from typing import List

import numpy as np
from detectron2.structures import BoxMode


class DatasetFormatError(ValueError):
    """An annotation file is malformed; the message names the file and the problem."""


def segment_owner(counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] index of the segment each element belongs to, for segments of the given sizes."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def segment_starts(counts: np.ndarray) -> np.ndarray:
    """[len(counts)] offset of each segment in the flat array (exclusive cumulative sum)."""
    return np.cumsum(counts, dtype=np.int64) - counts


def ranges_to_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + counts[i])`` over i, without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    owner = segment_owner(counts)
    return np.asarray(starts, dtype=np.int64)[owner] + (np.arange(owner.size) - segment_starts(counts)[owner])


@dataclasses.dataclass
class SGGArrays:
    """Annotations of N images with B boxes and R relations in total.

    Image i owns ``boxes[box_starts[i] : box_starts[i] + box_counts[i]]`` and likewise for relations, whose
    subject/object columns index the image's own boxes (0-based, local).
    """

    image_ids: np.ndarray  # int64 [N]
    file_names: List[str]  # N paths
    heights: np.ndarray  # int64 [N]
    widths: np.ndarray  # int64 [N]
    box_counts: np.ndarray  # int64 [N]
    boxes: np.ndarray  # float64 [B, 4] XYXY_ABS at the image's true size
    classes: np.ndarray  # int64 [B], 0-based contiguous
    rel_counts: np.ndarray  # int64 [N]
    relations: np.ndarray  # int64 [R, 3]: subject, object (local box indices), predicate 1..P-1

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def box_starts(self) -> np.ndarray:
        return segment_starts(self.box_counts)

    @property
    def rel_owner(self) -> np.ndarray:
        """[R] image index of each relation."""
        return segment_owner(self.rel_counts)

    def relation_box_index(self) -> np.ndarray:
        """[R, 2] flat (global) box indices of each relation's subject and object."""
        return self.relations[:, :2] + self.box_starts[self.rel_owner][:, None]


def clip_boxes(arrays: SGGArrays) -> SGGArrays:
    """Clip every box to its image: x to [0, width], y to [0, height]."""
    owner = segment_owner(arrays.box_counts)
    limits = np.stack([arrays.widths, arrays.heights, arrays.widths, arrays.heights], axis=1)[owner]
    return dataclasses.replace(arrays, boxes=np.clip(arrays.boxes, 0, limits.astype(np.float64)))


def degenerate_box_mask(boxes: np.ndarray) -> np.ndarray:
    """[B] True where a box has no area (x2 <= x1 or y2 <= y1)."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


def keep_relations(arrays: SGGArrays, keep: np.ndarray) -> SGGArrays:
    """Keep the relations where the [R] mask ``keep`` is True."""
    rel_counts = np.bincount(arrays.rel_owner[keep], minlength=arrays.num_images).astype(np.int64)
    return dataclasses.replace(arrays, relations=arrays.relations[keep], rel_counts=rel_counts)


def keep_boxes(arrays: SGGArrays, keep: np.ndarray) -> SGGArrays:
    """Keep the boxes where the [B] mask ``keep`` is True; relations touching a dropped box go too, the others
    are renumbered to the boxes' new local positions."""
    owner = segment_owner(arrays.box_counts)
    box_counts = np.bincount(owner[keep], minlength=arrays.num_images).astype(np.int64)
    # new local index of each kept box: its rank among the kept boxes of its image
    new_global = np.cumsum(keep, dtype=np.int64) - 1
    new_local = new_global - segment_starts(box_counts)[owner]
    pair = arrays.relation_box_index()
    rel_keep = keep[pair[:, 0]] & keep[pair[:, 1]]
    relations = np.stack(
        [new_local[pair[rel_keep, 0]], new_local[pair[rel_keep, 1]], arrays.relations[rel_keep, 2]], axis=1
    ).astype(np.int64)
    rel_counts = np.bincount(arrays.rel_owner[rel_keep], minlength=arrays.num_images).astype(np.int64)
    return dataclasses.replace(
        arrays,
        box_counts=box_counts,
        boxes=arrays.boxes[keep],
        classes=arrays.classes[keep],
        rel_counts=rel_counts,
        relations=relations.reshape(-1, 3),
    )


def keep_images(arrays: SGGArrays, keep: np.ndarray) -> SGGArrays:
    """Keep the images where the [N] mask ``keep`` is True, with their boxes and relations."""
    keep = np.asarray(keep, dtype=bool)
    box_keep = np.repeat(keep, arrays.box_counts)
    rel_keep = np.repeat(keep, arrays.rel_counts)
    return SGGArrays(
        image_ids=arrays.image_ids[keep],
        file_names=[f for f, k in zip(arrays.file_names, keep.tolist()) if k],
        heights=arrays.heights[keep],
        widths=arrays.widths[keep],
        box_counts=arrays.box_counts[keep],
        boxes=arrays.boxes[box_keep],
        classes=arrays.classes[box_keep],
        rel_counts=arrays.rel_counts[keep],
        relations=arrays.relations[rel_keep],
    )


def overlapping_relation_mask(arrays: SGGArrays) -> np.ndarray:
    """[R] True where the subject and object boxes intersect with a positive area."""
    pair = arrays.relation_box_index()
    subj, obj = arrays.boxes[pair[:, 0]], arrays.boxes[pair[:, 1]]
    inter_w = np.minimum(subj[:, 2], obj[:, 2]) - np.maximum(subj[:, 0], obj[:, 0])
    inter_h = np.minimum(subj[:, 3], obj[:, 3]) - np.maximum(subj[:, 1], obj[:, 1])
    return (inter_w > 0) & (inter_h > 0)


def to_dataset_dicts(arrays: SGGArrays) -> List[dict]:
    """Detectron2 dataset dicts (see the shared conventions) with ``relations`` as int64 [R, 3] arrays."""
    boxes = arrays.boxes.tolist()
    classes = arrays.classes.tolist()
    box_ends = np.cumsum(arrays.box_counts).tolist()
    relations = np.split(arrays.relations, np.cumsum(arrays.rel_counts)[:-1]) if arrays.num_images else []
    mode = BoxMode.XYXY_ABS
    dicts, start = [], 0
    for i, end in enumerate(box_ends):
        dicts.append(
            {
                "file_name": arrays.file_names[i],
                "image_id": int(arrays.image_ids[i]),
                "height": int(arrays.heights[i]),
                "width": int(arrays.widths[i]),
                "annotations": [
                    {"bbox": box, "bbox_mode": mode, "category_id": cls}
                    for box, cls in zip(boxes[start:end], classes[start:end])
                ],
                "relations": np.ascontiguousarray(relations[i], dtype=np.int64).reshape(-1, 3),
            }
        )
        start = end
    return dicts


def clean_annotations(
    arrays: SGGArrays, *, filter_empty_rels: bool, filter_non_overlap: bool, source: str, logger
) -> SGGArrays:
    """Clip boxes to their image, drop degenerate boxes (and the relations that use them), then apply the
    image filters; every drop is counted and logged with ``source`` (the annotation file)."""
    arrays = clip_boxes(arrays)
    degenerate = degenerate_box_mask(arrays.boxes)
    if degenerate.any():
        before = len(arrays.relations)
        arrays = keep_boxes(arrays, ~degenerate)
        logger.warning(
            f"{source}: dropped {int(degenerate.sum())} degenerate boxes (no area after clipping to the image) "
            f"and {before - len(arrays.relations)} relations that used them"
        )
    if filter_non_overlap:
        overlap = overlapping_relation_mask(arrays)
        had_relations = arrays.rel_counts > 0
        arrays = keep_relations(arrays, overlap)
        no_overlap = had_relations & (arrays.rel_counts == 0)
        logger.info(
            f"{source}: filter_non_overlap dropped {int((~overlap).sum())} relations between non-overlapping "
            f"boxes and {int(no_overlap.sum())} images left without an overlapping related pair"
        )
        arrays = keep_images(arrays, ~no_overlap)
    if filter_empty_rels:
        empty = arrays.rel_counts == 0
        if empty.any():
            logger.info(f"{source}: dropped {int(empty.sum())} images without relations")
            arrays = keep_images(arrays, ~empty)
    return arrays


def from_dataset_dicts(dataset_dicts: List[dict]) -> SGGArrays:
    """Inverse of :func:`to_dataset_dicts` (boxes converted to XYXY_ABS)."""
    annotations = [a for d in dataset_dicts for a in d["annotations"]]
    xyxy = BoxMode.XYXY_ABS
    boxes = np.array(
        [a["bbox"] if a["bbox_mode"] == xyxy else BoxMode.convert(list(a["bbox"]), a["bbox_mode"], xyxy)
         for a in annotations],
        dtype=np.float64,
    ).reshape(-1, 4)
    relations = [np.asarray(d.get("relations", []), dtype=np.int64).reshape(-1, 3) for d in dataset_dicts]
    return SGGArrays(
        image_ids=np.array([d["image_id"] for d in dataset_dicts], dtype=np.int64),
        file_names=[d["file_name"] for d in dataset_dicts],
        heights=np.array([d["height"] for d in dataset_dicts], dtype=np.int64),
        widths=np.array([d["width"] for d in dataset_dicts], dtype=np.int64),
        box_counts=np.array([len(d["annotations"]) for d in dataset_dicts], dtype=np.int64),
        boxes=boxes,
        classes=np.array([a["category_id"] for a in annotations], dtype=np.int64),
        rel_counts=np.array([len(r) for r in relations], dtype=np.int64),
        relations=np.concatenate(relations + [np.zeros((0, 3), dtype=np.int64)]),
    )


def filter_images_without_overlapping_pairs(dataset_dicts: List[dict]) -> List[dict]:
    """SGDet training convention (neural-motifs), on loaded dataset dicts: keep only the relations whose subject
    and object boxes intersect, and drop the images left without one. Same result as loading with
    ``filter_non_overlap=True``; the dicts are shallow-copied, the input is not modified."""
    arrays = from_dataset_dicts(dataset_dicts)
    overlap = overlapping_relation_mask(arrays)
    per_image = np.split(overlap, np.cumsum(arrays.rel_counts)[:-1]) if dataset_dicts else []
    kept = [
        {**d, "relations": np.asarray(d["relations"], dtype=np.int64).reshape(-1, 3)[mask]}
        for d, mask in zip(dataset_dicts, per_image)
        if mask.any()
    ]
    logging.getLogger(__name__).info(
        f"filter_images_without_overlapping_pairs: kept {len(kept)} of {len(dataset_dicts)} images and "
        f"{int(overlap.sum())} of {len(overlap)} relations"
    )
    return kept
