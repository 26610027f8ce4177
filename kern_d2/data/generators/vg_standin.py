"""A Visual Genome stand-in: the VG150 file layout and shape, with pictures that carry learnable signal.

What it writes (the files of ``datasets/vg/``, so the builtin ``vg150_*`` names load it):

- ``VG-SGG.h5`` with VG150's 108,073 rows (75,651 train-split then 32,422 test-split, scaled when ``num_rows``
  is smaller), 150 object classes, 50 predicates; per image about 11 boxes and 6 relations on average, with a
  long tail (a few images with 40+ boxes), and some images without relations (dropped by the loader, as in VG);
- ``VG-SGG-dicts.json``; ``image_data.json`` with one entry per row plus the four corrupt VG ids, as VG's has;
- ``VG_100K/<image_id>.jpg`` at VG's sizes (longest side 500-1,280) for the first ``train_images`` train-split
  and the first ``test_images`` test-split rows only: the index references more images than exist, which the
  loader skips with ``missing_images="skip"`` (``KERN_MISSING_IMAGES=skip`` for the builtin names).

Signal: each class is one shape and colour of the toy dataset's drawing
(:func:`kern_d2.data.generators.shapes.draw_shape`), drawn exactly where its box is, on the toy's textured
background; class frequencies are long-tailed. Each
predicate has one of seven geometries (the toy's layouts: resting on top, on top of the subject, side contact,
inside, left of, above, near) and, within a geometry, the class pair decides which predicate applies; predicate
frequencies are long-tailed (Zipf). So pixels tell the geometry and the classes, and the classes name the
predicate, as KERN's priors assume.

Rows are generated in chunks, each from its own seed, in parallel processes; the same seed gives the same files.
"""
import colorsys
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

from kern_d2.utils.processes import process_pool

from ..datasets.vg_format import CORRUPT_IMAGE_IDS, SPLIT_TEST, SPLIT_TRAIN, write_vg_dataset
from .shapes import SHAPES, draw_shape, jitter_colour, noisy_background
from .toy import pair_layout, place_group

VG_ROWS, VG_TRAIN_ROWS = 108_073, 75_651
NUM_CLASSES, NUM_PREDICATES = 150, 50
CLASS_NAMES = [f"object{c:03d}" for c in range(NUM_CLASSES)]
PREDICATE_NAMES = [f"predicate{k:02d}" for k in range(NUM_PREDICATES)]
# The toy's layout names (kern_d2.data.generators.toy.pair_layout): stack, under, side, in, left of, above, near.
LAYOUTS = ("on", "wears", "holding", "in", "left of", "above", "near")
PREDICATE_LAYOUT = np.arange(NUM_PREDICATES) % len(LAYOUTS)
# Zipf-like frequencies: the first predicate ~19% of relations, the last ~0.1% (VG: "on" ~30%, tail < 0.1%).
PREDICATE_WEIGHTS = 1.0 / np.arange(1, NUM_PREDICATES + 1) ** 1.1
CLASS_WEIGHTS = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 0.8
MEAN_PAIRS, MEAN_LONERS = 6.4, 1.0
NO_RELATION_FRACTION = 0.08  # images with loners only
SECOND_PREDICATE_PROB = 0.12  # a pair annotated with two predicates (of its geometry), as VG has
CHUNK_ROWS = 1000


def class_appearance(c: int) -> Tuple[str, Tuple[int, int, int], float]:
    """(shape, BGR colour, size as a fraction of the image's longer side) of class ``c``: 8 shapes x 19 hues."""
    hue = (c // len(SHAPES)) / 19.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95 if c % 2 else 0.7)
    size = 0.05 + 0.12 * ((c * 0.618034) % 1.0)  # golden-ratio spread: sizes differ between neighbouring classes
    return SHAPES[c % len(SHAPES)], (int(255 * b), int(255 * g), int(255 * r)), size


def _predicate_table() -> np.ndarray:
    """int [layouts, C, C]: the predicate (0-based) of each (subject, object) class pair in each geometry: within
    the geometry's predicates, the one the pair picks."""
    subj, obj = np.meshgrid(np.arange(NUM_CLASSES), np.arange(NUM_CLASSES), indexing="ij")
    table = []
    for layout in range(len(LAYOUTS)):
        group = np.flatnonzero(PREDICATE_LAYOUT == layout)
        table.append(group[(31 * subj + 17 * obj) % len(group)])
    return np.stack(table)


PREDICATE_TABLE = _predicate_table()


def _sample_relation(rng) -> Tuple[int, int, int]:
    """(subject class, object class, predicate) with Zipf predicate and class frequencies."""
    k = int(rng.choice(NUM_PREDICATES, p=PREDICATE_WEIGHTS / PREDICATE_WEIGHTS.sum()))
    subj = int(rng.choice(NUM_CLASSES, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum()))
    objects = np.flatnonzero(PREDICATE_TABLE[PREDICATE_LAYOUT[k], subj] == k)
    objects = objects[objects != subj]
    weights = CLASS_WEIGHTS[objects]
    return subj, int(rng.choice(objects, p=weights / weights.sum())), k


def _object_size(rng, c: int, longer: int) -> Tuple[int, int]:
    shape, _, size = class_appearance(c)
    w = max(12, int(size * longer * rng.uniform(0.75, 1.25)))
    h = w if shape in ("square", "circle", "frame") else max(12, int(w * rng.uniform(0.5, 1.6)))
    return w, h


def _image_size(rng) -> Tuple[int, int]:
    """(width, height): longest side 500 (a third), 800 (half) or 500-1,280; a quarter portrait."""
    longer = int(rng.choice([500, 800, int(rng.integers(500, 1281))], p=[0.3, 0.5, 0.2]))
    shorter = int(longer * rng.uniform(0.6, 0.9))
    return (shorter, longer) if rng.random() < 0.25 else (longer, shorter)


def generate_layout(rng) -> dict:
    """One image's size, boxes (XYXY float [n, 4]), classes [n] (0-based) and relations [r, 3] (local subject,
    object, predicate 1..50)."""
    width, height = _image_size(rng)
    longer = max(width, height)
    num_pairs = 0 if rng.random() < NO_RELATION_FRACTION else 1 + int(rng.negative_binomial(2, 2 / (1 + MEAN_PAIRS)))
    num_loners = int(rng.poisson(MEAN_LONERS)) + (num_pairs == 0)
    occupied, classes, boxes, relations = [], [], [], []
    for g in range(num_pairs + num_loners):
        if g < num_pairs:
            subj, obj, k = _sample_relation(rng)
            size_s, size_o = _object_size(rng, subj, longer), _object_size(rng, obj, longer)
            if LAYOUTS[PREDICATE_LAYOUT[k]] == "in":  # the object must hold the subject with a margin
                size_o = (max(size_o[0], size_s[0] + 24), max(size_o[1], size_s[1] + 24))
            group = np.stack(pair_layout(rng, LAYOUTS[PREDICATE_LAYOUT[k]], size_s, size_o)).astype(np.float64)
            group -= np.tile(group[:, :2].min(axis=0), 2)
            group_classes, group_rels = [subj, obj], [[0, 1, k + 1]]
            if rng.random() < SECOND_PREDICATE_PROB:
                same_layout = np.flatnonzero(PREDICATE_LAYOUT == PREDICATE_LAYOUT[k])
                second = same_layout[(np.searchsorted(same_layout, k) + 1) % len(same_layout)]
                group_rels.append([0, 1, int(second) + 1])
        else:
            c = int(rng.choice(NUM_CLASSES, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum()))
            group, group_classes, group_rels = np.array([[0.0, 0.0, *_object_size(rng, c, longer)]]), [c], []
        size = group[:, 2:].max(axis=0)
        corner = place_group(rng, size, occupied, width, height)
        if corner is None:
            continue
        occupied.append(np.concatenate([corner, np.array(corner) + size]))
        relations += [[s + len(classes), o + len(classes), p] for s, o, p in group_rels]
        classes += group_classes
        boxes.append(group + np.array([corner[0], corner[1]] * 2, dtype=np.float64))
    return {
        "width": width, "height": height,
        "boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4)),
        "classes": np.array(classes, dtype=np.int64),
        "relations": np.array(relations, dtype=np.int64).reshape(-1, 3),
    }


def render(layout: dict, rng) -> np.ndarray:
    """BGR pixels of a layout: the toy background, objects drawn in their boxes, larger ones first."""
    pixels = noisy_background(rng, layout["width"], layout["height"])
    boxes = layout["boxes"]
    for i in np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable"):
        shape, colour, _ = class_appearance(int(layout["classes"][i]))
        draw_shape(pixels, shape, jitter_colour(rng, colour), boxes[i])
    return pixels


def _generate_chunk(task) -> Dict[str, np.ndarray]:
    """Layouts of rows [start, stop) and the JPEGs of those in ``draw`` (a set of row indices)."""
    seed, start, stop, draw, image_ids, image_dir, quality = task
    rng = np.random.default_rng([seed, start])
    layouts = [generate_layout(rng) for _ in range(start, stop)]
    for row, layout in zip(range(start, stop), layouts):
        if row in draw:
            cv2.imwrite(os.path.join(image_dir, f"{image_ids[row - start]}.jpg"), render(layout, rng),
                        [cv2.IMWRITE_JPEG_QUALITY, quality])
    return {
        "widths": np.array([l["width"] for l in layouts]),
        "heights": np.array([l["height"] for l in layouts]),
        "box_counts": np.array([len(l["classes"]) for l in layouts]),
        "boxes": np.concatenate([l["boxes"] for l in layouts]),
        "classes": np.concatenate([l["classes"] for l in layouts]),
        "rel_counts": np.array([len(l["relations"]) for l in layouts]),
        "relations": np.concatenate([l["relations"] for l in layouts]),
    }


def standin_image_ids(num_rows: int) -> np.ndarray:
    """[num_rows] ids 1, 2, ... skipping the four corrupt VG ids (which image_data.json lists as extra entries)."""
    ids = np.arange(1, num_rows + len(CORRUPT_IMAGE_IDS) + 1)
    return ids[~np.isin(ids, CORRUPT_IMAGE_IDS)][:num_rows]


def generate_vg_standin(
    output_dir: str,
    num_rows: int = VG_ROWS,
    train_images: int = 5000,
    test_images: int = 2000,
    workers: int = 0,
    seed: int = 0,
    jpeg_quality: int = 90,
) -> dict:
    """Write the stand-in under ``output_dir``; JPEGs for the first ``train_images`` train-split and the first
    ``test_images`` test-split rows. ``workers``: processes (0 = all cores). Returns a summary."""
    num_train_rows = int(round(num_rows * VG_TRAIN_ROWS / VG_ROWS))
    if train_images > num_train_rows or test_images > num_rows - num_train_rows:
        raise ValueError(f"{num_rows} rows hold {num_train_rows} train-split and {num_rows - num_train_rows} "
                         f"test-split images: fewer than the {train_images} + {test_images} images asked for")
    image_dir = os.path.join(output_dir, "VG_100K")
    os.makedirs(image_dir, exist_ok=True)
    image_ids = standin_image_ids(num_rows)
    drawn = set(range(train_images)) | set(range(num_train_rows, num_train_rows + test_images))
    tasks = [
        (seed, start, min(start + CHUNK_ROWS, num_rows), {r for r in drawn if start <= r < start + CHUNK_ROWS},
         image_ids[start:start + CHUNK_ROWS], image_dir, jpeg_quality)
        for start in range(0, num_rows, CHUNK_ROWS)
    ]
    # Chunks with pictures first, so that the drawing spreads over the processes from the start.
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i][3]))
    processes = workers or os.cpu_count() or 1
    if processes > 1:
        with process_pool(processes) as pool:
            done = dict(zip(order, pool.map(_generate_chunk, [tasks[i] for i in order], chunksize=1)))
    else:
        done = {i: _generate_chunk(tasks[i]) for i in order}
    parts = [done[i] for i in range(len(tasks))]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    write_vg_dataset(
        output_dir, split=np.where(np.arange(num_rows) < num_train_rows, SPLIT_TRAIN, SPLIT_TEST),
        image_ids=image_ids, thing_classes=CLASS_NAMES, predicate_names=PREDICATE_NAMES,
        extra_image_ids=CORRUPT_IMAGE_IDS, **data,  # VG's image_data.json lists the corrupt images too
    )
    return standin_summary(data, num_train_rows, len(drawn))


def standin_summary(data: Dict[str, np.ndarray], num_train_rows: int, num_images: int) -> dict:
    boxes, rels = data["box_counts"], data["rel_counts"]
    predicates = np.bincount(data["relations"][:, 2], minlength=NUM_PREDICATES + 1)[1:]
    return {
        "rows": int(len(boxes)), "train_rows": num_train_rows, "test_rows": int(len(boxes) - num_train_rows),
        "images_written": num_images,
        "boxes": int(boxes.sum()), "relations": int(rels.sum()),
        "boxes_per_image": {"mean": float(boxes.mean()), "p99": float(np.percentile(boxes, 99)),
                            "max": int(boxes.max())},
        "relations_per_image": {"mean": float(rels.mean()), "p99": float(np.percentile(rels, 99)),
                                "max": int(rels.max()), "without": int((rels == 0).sum())},
        "predicate_share": {"most": float(predicates.max() / predicates.sum()),
                            "least": float(predicates.min() / predicates.sum())},
    }


def format_standin_summary(summary: dict) -> str:
    b, r = summary["boxes_per_image"], summary["relations_per_image"]
    return "\n".join([
        f"rows: {summary['rows']} ({summary['train_rows']} train-split, {summary['test_rows']} test-split), "
        f"JPEGs written: {summary['images_written']}",
        f"boxes: {summary['boxes']} ({b['mean']:.1f} per image, 99th percentile {b['p99']:.0f}, max {b['max']})",
        f"relations: {summary['relations']} ({r['mean']:.1f} per image, 99th percentile {r['p99']:.0f}, max "
        f"{r['max']}, {r['without']} images without)",
        f"predicates: most frequent {100 * summary['predicate_share']['most']:.1f}%, least "
        f"{100 * summary['predicate_share']['least']:.2f}% of relations",
    ])
