#!/usr/bin/env python
"""Time ``load_oi_sgg`` on a synthetic Open Images V6 train file (126,368 images, BGNN / PySGG layout).

Writes ``annotations/vrd-train-anno.json`` + ``categories_dict.json`` (601 classes, 30 predicates; boxes and
relations per image drawn around 4 and 2.5, a guess at the processed V6 subset's shape, which we cannot download
here) with :func:`kern_d2.data.layout_fixtures.write_oi_layout`, then times the json parse alone and the whole index
build (parse, checks, cleaning, dataset dicts) without looking at image files.

    python benchmarks/bench_oi_index.py [--num-images 126368]
"""
import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np

from kern_d2.data.layout_fixtures import write_oi_layout
from kern_d2.data.oi import load_oi_sgg, oi_files

NUM_CLASSES, NUM_PREDICATES = 601, 31


def synthetic_oi_dicts(num_images: int, seed: int = 0):
    """Dataset dicts of OI-like images: 1024 px on the long side, integer boxes, 1+ relations each."""
    rng = np.random.default_rng(seed)
    dicts = []
    box_counts = np.clip(rng.poisson(3.0, num_images) + 2, 2, 40)
    rel_counts = np.clip(rng.poisson(1.5, num_images) + 1, 1, 30)
    for k in range(num_images):
        width, height = (1024, int(rng.integers(500, 1025))) if rng.random() < 0.7 else (int(rng.integers(500, 1025)), 1024)
        n = int(box_counts[k])
        xy = rng.integers(0, [width - 16, height - 16], size=(n, 2))
        wh = rng.integers(8, 400, size=(n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).astype(float)
        pairs = rng.integers(0, n, size=(int(rel_counts[k]), 2))
        pairs[:, 1] = np.where(pairs[:, 0] == pairs[:, 1], (pairs[:, 1] + 1) % n, pairs[:, 1])
        relations = np.concatenate([pairs, rng.integers(1, NUM_PREDICATES, (len(pairs), 1))], axis=1)
        dicts.append({"file_name": "", "image_id": k, "width": width, "height": height, "relations": relations,
                      "annotations": [{"bbox": b, "bbox_mode": 0, "category_id": int(c)}
                                      for b, c in zip(boxes.tolist(), rng.integers(0, NUM_CLASSES, n))]})
    return dicts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=126368)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        dicts = synthetic_oi_dicts(args.num_images)
        write_oi_layout(root, {"train": dicts}, [f"class{i}" for i in range(NUM_CLASSES)],
                        ["__no_relation__"] + [f"predicate{i}" for i in range(1, NUM_PREDICATES)], copy_images=False)
        annotation_file, categories_file, image_root = oi_files(root, "train")
        print(f"synthetic OI V6 train: {len(dicts)} images, {sum(len(d['annotations']) for d in dicts)} boxes, "
              f"{sum(len(d['relations']) for d in dicts)} relations, "
              f"{os.path.getsize(annotation_file) / 2**20:.0f} MiB json (written in {time.perf_counter() - start:.0f} s)")
        del dicts
        parse, full = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with open(annotation_file) as f:
                json.load(f)
            parse.append(time.perf_counter() - start)
            start = time.perf_counter()
            loaded = load_oi_sgg(annotation_file, categories_file, image_root, missing_images="ignore")
            full.append(time.perf_counter() - start)
        print(f"json.load alone: best {min(parse):.2f} s, median {np.median(parse):.2f} s")
        print(f"load_oi_sgg train: best {min(full):.2f} s, median {np.median(full):.2f} s ({len(loaded)} images)")


if __name__ == "__main__":
    main()
