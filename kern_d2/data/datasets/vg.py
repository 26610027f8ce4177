"""Load VG150 (VG-SGG.h5 / VG-SGG-with-attri.h5 + dicts json + image_data.json) into Detectron2 dataset dicts.

Conventions of the published numbers (neural-motifs, KERN, Scene-Graph-Benchmark.pytorch):

- h5 ``split`` 0 = train, 2 = test (rows of split 1 are not used). Images without boxes are never used; with
  ``filter_empty_rels`` images without relations are dropped too. val = the first ``num_val_images`` of the
  remaining train-split images, train = the rest; the other filters apply after this cut, so they do not move
  images between val and train.
- Boxes: ``boxes_1024`` (xc, yc, w, h) -> XYXY at the true image size, clipped to the image. Boxes without area
  after that (rare) are DROPPED together with the relations that use them, counted and logged:
  a zero-area box cannot be matched or pooled, and keeping the index arrays dense keeps relations valid.
- ``filter_non_overlap`` (SGDet training): keep only relations whose two boxes intersect; images left without
  one are dropped (neural-motifs' convention).
- Image files: ``image_root/<basename of url>`` (``<image_id>.jpg`` when there is no url). ``missing_images``:
  "error" (default; one directory listing, ~0.1 s for 108k files), "skip" (drop, counted and logged) or "ignore".

Everything is vectorised over the h5 arrays; building the 108k-image index takes seconds.
"""
import logging
import os
from typing import List, Optional, Tuple

import h5py
import numpy as np

from .arrays import DatasetFormatError, SGGArrays, clean_annotations, keep_images, ranges_to_index, to_dataset_dicts
from .image_files import check_image_files
from .ragged import read_json_file
from .registration import register_sgg_dataset
from .vg_format import (
    BOX_SCALE,
    CORRUPT_IMAGE_IDS,
    H5_KEYS,
    NO_RELATION,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    boxes_1024_to_xyxy,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Read by kern_d2.data.datasets.builtin: the val size of the builtin vg150_* names (named in the empty-split error).
NUM_VAL_ENV = "KERN_VG_NUM_VAL"


def _require_file(path: str, what: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _indexed_names(table, dicts_file: str, key: str) -> List[str]:
    """{"1": name, "2": name, ...} -> [name, name, ...], checking the keys are exactly 1..n."""
    if not isinstance(table, dict) or not table:
        raise DatasetFormatError(f"{dicts_file}: '{key}' must be a non-empty object with keys '1'..'n'")
    try:
        keys = sorted(int(k) for k in table)
    except ValueError:
        raise DatasetFormatError(f"{dicts_file}: '{key}' has non-integer keys") from None
    if keys != list(range(1, len(keys) + 1)):
        raise DatasetFormatError(f"{dicts_file}: '{key}' keys must be exactly 1..{len(keys)} (1-based, no gaps)")
    return [str(table[str(k)]) for k in keys]


def read_vg_classes(dicts_file: str) -> Tuple[List[str], List[str]]:
    """(thing_classes [C], predicate_classes [P] with "__no_relation__" first) from a VG dicts json."""
    data = read_json_file(dicts_file, "VG dicts json")
    missing = [k for k in ("idx_to_label", "idx_to_predicate") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetFormatError(f"{dicts_file}: missing keys {missing}")
    thing_classes = _indexed_names(data["idx_to_label"], dicts_file, "idx_to_label")
    predicates = _indexed_names(data["idx_to_predicate"], dicts_file, "idx_to_predicate")
    return thing_classes, [NO_RELATION] + predicates


def read_image_data(image_data_file: str, num_rows: int, h5_file: str):
    """(image_ids [N], widths [N], heights [N], file basenames [N]) aligned with the h5 rows.

    VG's image_data.json has 4 more entries than the h5 (known corrupt images); they are dropped only when the
    counts differ, so a custom dataset may use those ids.
    """
    entries = read_json_file(image_data_file, "image_data json")
    if not isinstance(entries, list):
        raise DatasetFormatError(f"{image_data_file}: expected a list of image entries")
    try:
        ids = np.array([e["image_id"] if "image_id" in e else e["id"] for e in entries], dtype=np.int64)
        widths = np.array([e["width"] for e in entries], dtype=np.int64)
        heights = np.array([e["height"] for e in entries], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetFormatError(
            f"{image_data_file}: every entry needs an integer 'image_id' (or 'id'), 'width' and 'height' ({e!r})"
        ) from None
    if len(entries) != num_rows:
        keep = ~np.isin(ids, CORRUPT_IMAGE_IDS)
        if keep.sum() != num_rows:
            raise DatasetFormatError(
                f"{image_data_file}: {len(entries)} entries ({int(keep.sum())} after dropping the known corrupt VG "
                f"ids {list(CORRUPT_IMAGE_IDS)}) but {h5_file} has {num_rows} image rows"
            )
        entries = [e for e, k in zip(entries, keep.tolist()) if k]
        ids, widths, heights = ids[keep], widths[keep], heights[keep]
    bad = np.flatnonzero((widths <= 0) | (heights <= 0))
    if bad.size:
        raise DatasetFormatError(f"{image_data_file}: image {ids[bad[0]]} has a non-positive width or height")
    names = [os.path.basename(e["url"]) if e.get("url") else f"{i}.jpg" for e, i in zip(entries, ids.tolist())]
    return ids, widths, heights, names


def _integer_field(value, key: str, h5_file: str) -> np.ndarray:
    """int64 copy of an h5 field that must hold integers: any integer dtype, or floats with integral values."""
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array.ravel()) | (array.ravel() != np.round(array.ravel())))
        if not bad.size:
            return array.astype(np.int64)
        raise DatasetFormatError(
            f"{h5_file}: '{key}' must hold integers; it is {array.dtype} with non-integral or non-finite values "
            f"(flat index {bad[0]} is {array.ravel()[bad[0]]}, {bad.size} such values)"
        )
    raise DatasetFormatError(f"{h5_file}: '{key}' must hold integers, got dtype {array.dtype}")


def _box_field(value, h5_file: str) -> np.ndarray:
    """float64 copy of ``boxes_1024``: numbers, all finite."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DatasetFormatError(f"{h5_file}: 'boxes_1024' must hold numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=-1)) if array.ndim == 2 else []
    if len(bad):
        raise DatasetFormatError(f"{h5_file}: 'boxes_1024' box {bad[0]} is {array[bad[0]].tolist()} (not finite)")
    return array


def read_vg_h5(h5_file: str) -> dict:
    """All the h5 fields the loader needs, as flat numpy arrays, read once each."""
    _require_file(h5_file, "VG h5")
    try:
        with h5py.File(h5_file, "r") as f:
            missing = [k for k in H5_KEYS if k not in f]
            if missing:
                raise DatasetFormatError(f"{h5_file}: missing h5 datasets {missing} (found {sorted(f.keys())})")
            data = {k: f[k][()] for k in H5_KEYS}
            num_val_attr = f.attrs.get("num_val_images")
    except OSError as e:  # h5py: truncated file, bad signature, unreadable chunk
        raise DatasetFormatError(
            f"{h5_file}: cannot read the h5 file, it is truncated or corrupt ({e}); download or convert it again"
        ) from None
    data["num_val_images"] = None if num_val_attr is None else int(num_val_attr)
    for key in ("split", "img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel", "labels",
                "predicates"):
        data[key] = _integer_field(data[key], key, h5_file).reshape(len(data[key]), -1)
        if data[key].shape[1] != 1:
            raise DatasetFormatError(f"{h5_file}: '{key}' must have shape [n] or [n, 1], got {data[key].shape}")
        data[key] = data[key][:, 0]
    data["boxes_1024"] = _box_field(data["boxes_1024"], h5_file)
    data["relationships"] = _integer_field(data["relationships"], "relationships", h5_file)
    for key, width in (("boxes_1024", 4), ("relationships", 2)):
        if data[key].ndim != 2 or data[key].shape[1] != width:
            raise DatasetFormatError(f"{h5_file}: '{key}' must have shape [n, {width}], got {data[key].shape}")
    return data


def _check_lengths(data: dict, h5_file: str):
    groups = {
        "image rows": ("split", "img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel"),
        "boxes": ("labels", "boxes_1024"),
        "relations": ("relationships", "predicates"),
    }
    for what, keys in groups.items():
        lengths = {k: len(data[k]) for k in keys}
        if len(set(lengths.values())) != 1:
            raise DatasetFormatError(f"{h5_file}: mismatched counts of {what}: {lengths}")


def _check_ranges(first, last, total, h5_file, what, image_ids):
    """Per-image inclusive [first, last] ranges: both -1 or 0 <= first <= last < total."""
    none = first < 0
    bad = np.flatnonzero(
        (none & (last >= 0)) | (~none & ((last < first) | (last >= total))) | (first < -1) | (last < -1)
    )
    if bad.size:
        i = bad[0]
        raise DatasetFormatError(
            f"{h5_file}: image row {i} (image_id {image_ids[i]}): img_to_first_{what}={first[i]}, "
            f"img_to_last_{what}={last[i]} out of bounds ({total} {what}es in the file)"
            + (f" and {bad.size - 1} more rows" if bad.size > 1 else "")
        )


def validate_vg_h5(data: dict, h5_file: str, image_ids: np.ndarray, num_classes: int, num_predicates: int):
    """Check index ranges, relation endpoints, labels and predicates over the whole file (vectorised)."""
    _check_lengths(data, h5_file)
    num_boxes, num_rels = len(data["labels"]), len(data["predicates"])
    _check_ranges(data["img_to_first_box"], data["img_to_last_box"], num_boxes, h5_file, "box", image_ids)
    _check_ranges(data["img_to_first_rel"], data["img_to_last_rel"], num_rels, h5_file, "rel", image_ids)
    bad_split = np.flatnonzero(~np.isin(data["split"], (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)))
    if bad_split.size:
        raise DatasetFormatError(
            f"{h5_file}: 'split' must be 0 (train), 1 (unused) or 2 (test); row {bad_split[0]} has "
            f"{data['split'][bad_split[0]]}"
        )
    bad = np.flatnonzero((data["labels"] < 1) | (data["labels"] > num_classes))
    if bad.size:
        raise DatasetFormatError(
            f"{h5_file}: 'labels' must be in 1..{num_classes} (the dicts' idx_to_label); box {bad[0]} has "
            f"{data['labels'][bad[0]]} ({bad.size} boxes out of range)"
        )
    has_rel = data["img_to_first_rel"] >= 0
    rel_counts = np.where(has_rel, data["img_to_last_rel"] - data["img_to_first_rel"] + 1, 0)
    rel_rows = ranges_to_index(data["img_to_first_rel"], rel_counts)
    owner = np.repeat(np.arange(len(rel_counts)), rel_counts)
    without_boxes = np.flatnonzero(has_rel & (data["img_to_first_box"] < 0))
    if without_boxes.size:
        i = without_boxes[0]
        raise DatasetFormatError(f"{h5_file}: image row {i} (image_id {image_ids[i]}) has relations but no boxes")
    pairs = data["relationships"][rel_rows]
    lo, hi = data["img_to_first_box"][owner][:, None], data["img_to_last_box"][owner][:, None]
    bad = np.flatnonzero(((pairs < lo) | (pairs > hi)).any(axis=1))
    if bad.size:
        r, i = rel_rows[bad[0]], owner[bad[0]]
        raise DatasetFormatError(
            f"{h5_file}: relation {r} of image row {i} (image_id {image_ids[i]}) points at boxes "
            f"{pairs[bad[0]].tolist()} outside the image's boxes [{lo[bad[0], 0]}, {hi[bad[0], 0]}] "
            f"({bad.size} such relations)"
        )
    preds = data["predicates"][rel_rows]
    bad = np.flatnonzero((preds < 1) | (preds >= num_predicates))
    if bad.size:
        raise DatasetFormatError(
            f"{h5_file}: 'predicates' must be in 1..{num_predicates - 1} (the dicts' idx_to_predicate); relation "
            f"{rel_rows[bad[0]]} has {preds[bad[0]]} ({bad.size} relations out of range)"
        )


def _usable_rows_mask(data: dict, split: str, filter_empty_rels: bool) -> Tuple[np.ndarray, np.ndarray]:
    """([rows] bool in the h5 split of ``split``, [rows] bool of those that are usable: with boxes and, with
    ``filter_empty_rels``, with relations)."""
    in_split = data["split"] == (SPLIT_TEST if split == "test" else SPLIT_TRAIN)
    mask = in_split & (data["img_to_first_box"] >= 0)
    if filter_empty_rels:
        mask &= data["img_to_first_rel"] >= 0
    return in_split, mask


def _empty_split_message(data, split, num_val_images, filter_empty_rels, source, selected, dataset_name) -> str:
    """Why a split has no image: the usable counts of the h5's splits, the val carve-out and the filters."""
    usable_train = int(_usable_rows_mask(data, "train", filter_empty_rels)[1].sum())
    usable_test = int(_usable_rows_mask(data, "test", filter_empty_rels)[1].sum())
    name = f"dataset {dataset_name} ({source})" if dataset_name else source
    usable = "with boxes" + (" and relations" if filter_empty_rels else "")
    message = (
        f"{name} has no images. The h5 has {usable_train} usable train-split images ({usable}) and {usable_test} "
        f"usable test-split images; val is the first num_val_images={num_val_images} train-split images, train the "
        f"rest ({max(usable_train - num_val_images, 0)})."
    )
    if selected:
        message += (f" The split's {selected} rows were all dropped by the filters (non-overlapping pairs, "
                    "degenerate boxes) or because their image files are missing (see the log above).")
    elif split == "train" and usable_train:
        message += (" All of the train split became val: set a smaller val size (num_val_images=...; for the builtin "
                    f"vg150_* names the environment variable {NUM_VAL_ENV}, e.g. {NUM_VAL_ENV}="
                    f"{min(5000, usable_train // 10)}).")
    return message


def _split_rows(
    data: dict, split: str, num_val_images: int, filter_empty_rels: bool, source: str
) -> np.ndarray:
    """h5 rows of the split, in file order. Rows without boxes (and, with ``filter_empty_rels``, without relations)
    are left out, counted and logged with ``source``."""
    in_split, mask = _usable_rows_mask(data, split, filter_empty_rels)
    without_boxes = int((in_split & (data["img_to_first_box"] < 0)).sum())
    without_relations = int((in_split & ~mask).sum()) - without_boxes
    if without_boxes or without_relations:
        part = "test" if split == "test" else "train (val included)"
        logger.info(f"{source}: left out {without_boxes} images without boxes and {without_relations} images "
                    f"without relations of the h5's {part} split")
    rows = np.flatnonzero(mask)
    if split == "val":
        return rows[:num_val_images]
    if split == "train":
        return rows[num_val_images:]
    return rows


def _gather_split(data, rows, image_ids, widths, heights, file_names: List[str]) -> SGGArrays:
    """The split's images (h5 ``rows``) as flat arrays; ``file_names`` are those of the rows, in order."""
    first_box, first_rel = data["img_to_first_box"][rows], data["img_to_first_rel"][rows]
    box_counts = np.where(first_box >= 0, data["img_to_last_box"][rows] - first_box + 1, 0)
    rel_counts = np.where(first_rel >= 0, data["img_to_last_rel"][rows] - first_rel + 1, 0)
    box_idx = ranges_to_index(first_box, box_counts)
    rel_idx = ranges_to_index(first_rel, rel_counts)
    scale = (np.maximum(widths[rows], heights[rows]) / BOX_SCALE)[np.repeat(np.arange(len(rows)), box_counts)]
    rel_owner = np.repeat(np.arange(len(rows)), rel_counts)
    local_pairs = data["relationships"][rel_idx] - first_box[rel_owner][:, None]
    return SGGArrays(
        image_ids=image_ids[rows],
        file_names=file_names,
        heights=heights[rows],
        widths=widths[rows],
        box_counts=box_counts.astype(np.int64),
        boxes=boxes_1024_to_xyxy(data["boxes_1024"][box_idx], scale),
        classes=data["labels"][box_idx] - 1,
        rel_counts=rel_counts.astype(np.int64),
        relations=np.concatenate([local_pairs, data["predicates"][rel_idx][:, None]], axis=1).astype(np.int64),
    )


def load_vg_sgg(
    h5_file: str,
    dicts_file: str,
    image_data_file: str,
    image_root: str,
    split: str,
    num_val_images: Optional[int] = 5000,
    filter_empty_rels: bool = True,
    filter_non_overlap: bool = False,
    missing_images: str = "error",
    dataset_name: Optional[str] = None,
) -> List[dict]:
    """Detectron2 dataset dicts (plus ``relations`` int64 [R,3]) of one VG150 split.

    Args:
        split: "train" | "val" | "test".
        num_val_images: size of val, carved from the start of the train split. None: read it from the h5 file
            attribute ``num_val_images`` (the toy dataset writes one).
        filter_empty_rels: drop images without relations.
        filter_non_overlap: keep only relations between intersecting boxes and images that still have one.
        missing_images: "error" | "skip" | "ignore" (see the module docstring).
        dataset_name: the registered name, for messages.

    Raises DatasetFormatError when no image is left, naming the split, the image counts and the val size.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    thing_classes, predicate_classes = read_vg_classes(dicts_file)
    data = read_vg_h5(h5_file)
    if num_val_images is None:
        if data["num_val_images"] is None:
            raise DatasetFormatError(f"{h5_file}: num_val_images=None but the file has no 'num_val_images' attribute")
        num_val_images = data["num_val_images"]
    num_rows = len(data["split"])
    image_ids, widths, heights, names = read_image_data(image_data_file, num_rows, h5_file)
    validate_vg_h5(data, h5_file, image_ids, len(thing_classes), len(predicate_classes))

    unused = int((data["split"] == SPLIT_VAL).sum())
    if unused:
        logger.warning(f"{h5_file}: {unused} image rows have split 1, which the VG150 convention does not use")
    source = f"{h5_file} [{split}]"
    rows = _split_rows(data, split, num_val_images, filter_empty_rels, source)
    file_names = [os.path.join(image_root, names[i]) for i in rows.tolist()]
    arrays = _gather_split(data, rows, image_ids, widths, heights, file_names)
    arrays = clean_annotations(
        arrays, filter_empty_rels=filter_empty_rels, filter_non_overlap=filter_non_overlap, source=source,
        logger=logger,
    )
    arrays = keep_images(arrays, check_image_files(arrays.file_names, missing_images, source, logger))
    if not arrays.num_images:
        raise DatasetFormatError(
            _empty_split_message(data, split, num_val_images, filter_empty_rels, source, len(rows), dataset_name)
        )
    logger.info(
        f"Loaded {arrays.num_images} images, {len(arrays.boxes)} boxes, {len(arrays.relations)} relations "
        f"from {source}"
    )
    return to_dataset_dicts(arrays)


def register_vg_sgg(
    name: str,
    h5_file: str,
    dicts_file: str,
    image_data_file: str,
    image_root: str,
    split: str,
    **kwargs,
):
    """Register a VG-format split in DatasetCatalog (loaded lazily) and MetadataCatalog.

    ``kwargs`` go to :func:`load_vg_sgg`, except ``priors_file``, which goes to the metadata. Class names are
    read from ``dicts_file`` now if it exists, else when the dataset is first loaded.
    """
    register_sgg_dataset(
        name,
        load=lambda: load_vg_sgg(h5_file, dicts_file, image_data_file, image_root, split, dataset_name=name,
                                 **kwargs),
        read_classes=lambda: read_vg_classes(dicts_file),
        classes_file=dicts_file,
        metadata=dict(
            h5_file=h5_file,
            dicts_file=dicts_file,
            image_data_file=image_data_file,
            image_root=image_root,
            split=split,
        ),
        priors_file=kwargs.pop("priors_file", None),
    )
