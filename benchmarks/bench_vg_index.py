#!/usr/bin/env python
"""Time ``load_vg_sgg`` on a synthetic VG150-sized dataset (108,073 images, ~1.15M boxes, ~620k relations).

Writes a VG-format h5 + dicts + image_data.json (108,077 entries, with the four corrupt ids) to a temp dir,
then times the train/val/test index builds without looking at image files; with --check-images it also
creates 108k empty image files and times the missing-image check (one directory listing).

    python benchmarks/bench_vg_index.py [--check-images]
"""
import argparse
import logging
import os
import tempfile
import time

import numpy as np

from kern_d2.data.image_files import existing_file_mask
from kern_d2.data.vg import load_vg_sgg
from kern_d2.data.vg_format import (
    CORRUPT_IMAGE_IDS,
    write_image_data,
    write_vg_dicts,
    write_vg_h5,
)

NUM_CLASSES, NUM_PREDICATES = 150, 50


def synthetic_vg(root: str, num_images: int, seed: int = 0) -> dict:
    """Write VG-sized files; per-image box and relation counts follow VG's rough shape (10.6 boxes, 5.7
    relations on average, 18% of images without relations)."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(300, 1281, num_images)
    heights = rng.integers(300, 1281, num_images)
    box_counts = np.clip(rng.poisson(10.6, num_images), 1, 62)
    rel_counts = np.where(rng.random(num_images) < 0.18, 0, np.clip(rng.poisson(7.0, num_images), 1, 40))
    num_boxes = int(box_counts.sum())
    owner = np.repeat(np.arange(num_images), box_counts)
    # extent of each image at the 1024 scale (longer side = 1024)
    scale = np.maximum(widths, heights) / 1024.0
    extent = np.stack([widths / scale, heights / scale], axis=1)[owner]
    wh = np.maximum(rng.uniform(0.02, 0.6, (num_boxes, 2)) * extent, 8)
    center = wh / 2 + rng.random((num_boxes, 2)) * np.maximum(extent - wh, 0)
    boxes_1024 = np.round(np.concatenate([center, wh], axis=1)).astype(np.int32)
    rel_owner = np.repeat(np.arange(num_images), rel_counts)
    pairs = (rng.random((len(rel_owner), 2)) * box_counts[rel_owner, None]).astype(np.int64)
    relations = np.concatenate([pairs, rng.integers(1, NUM_PREDICATES + 1, (len(rel_owner), 1))], axis=1)
    paths = {
        "h5_file": os.path.join(root, "VG-SGG.h5"),
        "dicts_file": os.path.join(root, "VG-SGG-dicts.json"),
        "image_data_file": os.path.join(root, "image_data.json"),
        "image_root": os.path.join(root, "VG_100K"),
    }
    write_vg_h5(
        paths["h5_file"],
        split=np.where(rng.random(num_images) < 0.7, 0, 2),
        box_counts=box_counts,
        boxes_1024=boxes_1024,
        labels=rng.integers(1, NUM_CLASSES + 1, num_boxes),
        rel_counts=rel_counts,
        relations=relations,
    )
    write_vg_dicts(paths["dicts_file"], [f"class{i}" for i in range(NUM_CLASSES)],
                   [f"predicate{i}" for i in range(NUM_PREDICATES)])
    ids = np.arange(1, num_images + 1) + 5000  # clear of the corrupt ids, which are inserted as extra rows
    positions = np.array([10, 20, 30, 40])
    write_image_data(paths["image_data_file"], np.insert(ids, positions, CORRUPT_IMAGE_IDS),
                     np.insert(widths, positions, 800), np.insert(heights, positions, 600))
    print(f"synthetic VG: {num_images} images, {num_boxes} boxes, {len(relations)} relations")
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=108073)
    parser.add_argument("--check-images", action="store_true", help="also time the image-file check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        paths = synthetic_vg(root, args.num_images)
        print(f"writing the files: {time.perf_counter() - start:.1f} s")
        for split in ("train", "val", "test"):
            start = time.perf_counter()
            dicts = load_vg_sgg(**paths, split=split, missing_images="ignore")
            seconds = time.perf_counter() - start
            num_boxes = sum(len(d["annotations"]) for d in dicts)
            num_rels = sum(len(d["relations"]) for d in dicts)
            print(f"load_vg_sgg {split:5s}: {seconds:6.2f} s  ({len(dicts)} images, {num_boxes} boxes, "
                  f"{num_rels} relations)")
        if args.check_images:
            os.makedirs(paths["image_root"])
            file_names = [os.path.join(paths["image_root"], f"{i}.jpg") for i in range(5001, 5001 + args.num_images)]
            for name in file_names:
                open(name, "w").close()
            start = time.perf_counter()
            exists = existing_file_mask(file_names)
            print(f"image-file check of {len(file_names)} files (one listing): "
                  f"{time.perf_counter() - start:.3f} s, all found: {bool(exists.all())}")
            start = time.perf_counter()
            found = sum(os.path.exists(n) for n in file_names)
            print(f"the same with os.path.exists per file: {time.perf_counter() - start:.3f} s ({found} found)")
            start = time.perf_counter()
            load_vg_sgg(**paths, split="train", missing_images="error")
            print(f"load_vg_sgg train with missing_images='error': {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
