#!/usr/bin/env python
"""Data loading throughput of SGGDatasetMapper (training mode) against what the training step consumes.

Datasets, written to a temporary folder:
- toy: the generated toy dataset (kern_d2.data.toy, 160-256 px JPEGs), with the toy configs' resize (224/320);
- vg-sized: synthetic JPEGs of VG's usual size (800 x 600, a quarter portrait; smooth colour fields, shapes and
  noise: ~110 KB each, near VG's average file size) with 10-20 boxes and 4-8 relations, and the VG configs'
  resize (shorter side 600, longer at most 1000) plus the horizontal flip.
Cases per dataset: "decode only" (Detectron2's read_image), the mapper in this process (= one worker), and a
torch DataLoader with N worker processes (Detectron2's loaders use one, batch of one image, trivial collate), with
the plain mapper (each of a mapped dict's 5 tensors in its own shared-memory block) and wrapped in CompactTransfer
(the image alone; what kern_d2's loaders use with workers).
Files are read from the page cache (just written): disk reads are not included.

The step's need is --step-images-per-s (images/s per GPU of the training step, e.g. bench_train_step.py's
"KERN SGDet" images/s); "workers needed" = ceil(need / images/s per worker). Target: the loader with
DATALOADER.NUM_WORKERS workers of the config (4 for VG) feeds the step.

    python benchmarks/bench_data_loading.py --step-images-per-s 40           # workers 0,1,2,4
    python benchmarks/bench_data_loading.py --workers 0,1,2,4,8 --vg-images 400
    python benchmarks/bench_data_loading.py --device cpu --tiny              # quick check of the code paths
"""
import argparse
import math
import os
import tempfile
import time

import cv2
import numpy as np
from torch.utils.data import DataLoader

from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import BoxMode

from common import ROOT, environment_header, format_table, resolve_device, set_cpu_threads, targets_met
from kern_d2.config import add_kern_config
from kern_d2.data import CompactTransfer, SGGDatasetMapper, load_vg_sgg
from kern_d2.data.toy import generate_toy_dataset

# Images/s per GPU of the KERN SGDet training step: bench_train_step.py on the H100 (nvidia-h100-x1), bf16, batch 8,
# 2026-11-25 (BENCHMARKS.md, target 4).
TRAIN_STEP_IMAGES_PER_S = 48.4
VG_NUM_CLASSES, VG_NUM_PREDICATES = 150, 51


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="only printed (loading runs on the CPU); --tiny --device cpu is the quick check")
    parser.add_argument("--tiny", action="store_true", help="few images and workers (quick check)")
    parser.add_argument("--workers", help="DataLoader worker counts to time, 0 = in this process "
                                          "(default 0,1,2,4; 0,1 with --tiny)")
    parser.add_argument("--toy-images", type=int,
                        help="toy images to generate, 0 = skip (default 200; 24 with --tiny)")
    parser.add_argument("--vg-images", type=int, help="VG-sized JPEGs to write, 0 = skip (default 200; 16 with --tiny)")
    parser.add_argument("--passes", type=int, help="passes over the images per measurement (default 2; 1 with --tiny)")
    parser.add_argument("--step-images-per-s", type=float, default=TRAIN_STEP_IMAGES_PER_S,
                        help="images/s the training step consumes per GPU (default: TRAIN_STEP_IMAGES_PER_S)")
    parser.add_argument("--workdir", help="write the datasets here (default: a temporary folder, removed after)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="CPU intra-op threads (default: 1 with --tiny on CPU, else torch's)")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in (args.workers or ("0,1" if args.tiny else "0,1,2,4")).split(",") if w.strip()]
    if not args.workers or min(args.workers) < 0:
        parser.error("--workers: give non-negative worker counts")
    args.toy_images = args.toy_images if args.toy_images is not None else (24 if args.tiny else 200)
    args.vg_images = args.vg_images if args.vg_images is not None else (16 if args.tiny else 200)
    if not args.toy_images and not args.vg_images:
        parser.error("--toy-images 0 and --vg-images 0: nothing to time")
    args.passes = args.passes if args.passes is not None else (1 if args.tiny else 2)
    return args


# ---------------------------------------------------------------------------------------------- datasets
def load_config(path: str):
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    return cfg


def toy_dataset(root: str, num_images: int, seed: int):
    """Dataset dicts of a freshly generated toy dataset (all images in the train split)."""
    generate_toy_dataset(root, num_train=num_images, num_test=0, num_val=0, seed=seed)
    return load_vg_sgg(
        os.path.join(root, "VG-SGG.h5"), os.path.join(root, "VG-SGG-dicts.json"),
        os.path.join(root, "image_data.json"), os.path.join(root, "VG_100K"), "train", num_val_images=0,
    )


def _vg_like_pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like BGR image: smooth colour field, filled rectangles, mild noise (JPEG ~110 KB at 800 x 600)."""
    coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    pixels = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(15):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (int(v) for v in rng.integers(20, 300, 2))
        cv2.rectangle(pixels, (x, y), (x + w, y + h), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    noisy = pixels.astype(np.float32) + rng.normal(0.0, 6.0, pixels.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def vg_sized_dataset(root: str, num_images: int, seed: int):
    """Write ``num_images`` VG-sized JPEGs with random boxes/relations; return their dataset dicts."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    dicts = []
    for index in range(num_images):
        width, height = (600, 800) if index % 4 == 3 else (800, 600)
        file_name = os.path.join(root, f"{index}.jpg")
        cv2.imwrite(file_name, _vg_like_pixels(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, 90])
        num_boxes = int(rng.integers(10, 21))
        xy = rng.uniform(0, [width - 20, height - 20], size=(num_boxes, 2))
        wh = rng.uniform(16, 300, size=(num_boxes, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)
        pairs = rng.permutation(num_boxes * (num_boxes - 1))[: int(rng.integers(4, 9))]
        subject, offset = pairs // (num_boxes - 1), pairs % (num_boxes - 1)
        obj = offset + (offset >= subject)
        relations = np.stack([subject, obj, rng.integers(1, VG_NUM_PREDICATES, len(pairs))], axis=1)
        dicts.append({
            "file_name": file_name, "image_id": index, "height": height, "width": width,
            "annotations": [
                {"bbox": box.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                for box, c in zip(boxes, rng.integers(0, VG_NUM_CLASSES, num_boxes))
            ],
            "relations": relations.astype(np.int64),
        })
    return dicts


def mean_file_kb(dicts) -> float:
    return sum(os.path.getsize(d["file_name"]) for d in dicts) / len(dicts) / 1e3


# ---------------------------------------------------------------------------------------------- timing
def in_process_rate(fn, dicts, passes: int) -> float:
    """Images/s of ``fn`` over ``dicts`` ``passes`` times, after one untimed call (imports, caches)."""
    fn(dicts[0])
    start = time.perf_counter()
    for _ in range(passes):
        for d in dicts:
            fn(d)
    return passes * len(dicts) / (time.perf_counter() - start)


def loader_rate(mapper, dicts, passes: int, num_workers: int) -> float:
    """Images/s delivered by a DataLoader with ``num_workers`` processes (batch of one image, as Detectron2's
    training loader reads). The clock starts once the first 2 x num_workers images (worker start-up, first
    prefetch) have arrived."""
    dataset = MapDataset(DatasetFromList(list(dicts) * passes, copy=False), mapper)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers,
                        collate_fn=trivial_batch_collator)
    skip = 2 * num_workers
    if skip >= len(dataset):
        raise ValueError(f"{len(dataset)} images are too few to time {num_workers} workers: raise --passes")
    start, counted = None, 0
    for index, _ in enumerate(loader):
        if index + 1 == skip:
            start = time.perf_counter()
        elif index + 1 > skip:
            counted += 1
    return counted / (time.perf_counter() - start)


def read_only(image_format: str):
    def read(d):
        return detection_utils.read_image(d["file_name"], format=image_format)
    return read


def bench_dataset(name, dicts, cfg, args):
    """Table rows of one dataset."""
    mapper = SGGDatasetMapper(cfg, is_train=True)
    step_rate = args.step_images_per_s
    configured = cfg.DATALOADER.NUM_WORKERS
    rows = []

    def row(case, rate, workers):
        per_worker = rate / max(workers, 1)
        needed = "n/a" if step_rate is None else str(math.ceil(step_rate / per_worker))
        # in-process rows stand for one worker: NUM_WORKERS of them give NUM_WORKERS x the rate
        feeds = None if step_rate is None else (rate if workers else rate * configured) >= step_rate
        met = "-" if case.startswith("decode") else targets_met([(f"< {step_rate} images/s", feeds)])
        rows.append([f"{name}: {case}", f"{1e3 / rate:.2f}", f"{rate:.1f}", f"{per_worker:.1f}", needed, met])

    row("decode only (read_image)", in_process_rate(read_only(cfg.INPUT.FORMAT), dicts, args.passes), 0)
    for workers in args.workers:
        if workers == 0:
            row("mapper, in process", in_process_rate(mapper, dicts, args.passes), 0)
        else:
            row(f"DataLoader, {workers} workers", loader_rate(mapper, dicts, args.passes, workers), workers)
            row(f"DataLoader, {workers} workers, CompactTransfer",
                loader_rate(CompactTransfer(mapper), dicts, args.passes, workers), workers)
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    set_cpu_threads(device, args.tiny, args.threads)
    print(environment_header("SGGDatasetMapper throughput vs the training step's need", device))
    print(f"CPU cores: {os.cpu_count()}; passes per measurement: {args.passes}; step need: "
          + (f"{args.step_images_per_s:g} images/s per GPU" if args.step_images_per_s else
             "not given (pass --step-images-per-s, or fill in TRAIN_STEP_IMAGES_PER_S)"))
    with tempfile.TemporaryDirectory(prefix="kern_bench_data_") as tmp:
        workdir = args.workdir or tmp
        cases = []  # (name, config file, what the images are, dataset dicts maker)
        if args.toy_images:
            cases.append(("toy", "configs/toy/Base-Toy-KERN.yaml", "toy images",
                          lambda: toy_dataset(os.path.join(workdir, "toy"), args.toy_images, args.seed)))
        if args.vg_images:
            cases.append(("vg-sized", "configs/Base-KERN.yaml", "images 800x600 / 600x800",
                          lambda: vg_sized_dataset(os.path.join(workdir, "vg_sized"), args.vg_images, args.seed)))
        rows = []
        for name, config_file, what, make_dicts in cases:
            cfg = load_config(config_file)
            dicts = make_dicts()
            print(f"{name}: {len(dicts)} {what}, mean JPEG {mean_file_kb(dicts):.0f} KB; resize "
                  f"{cfg.INPUT.MIN_SIZE_TRAIN}/{cfg.INPUT.MAX_SIZE_TRAIN}; "
                  f"DATALOADER.NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS}")
            rows += bench_dataset(name, dicts, cfg, args)
    print()
    print(format_table(["case", "ms/image", "images/s", "images/s/worker", "workers needed", "target met?"], rows))
    print("target: the configured DATALOADER.NUM_WORKERS workers deliver the step's images/s (in-process rows: "
          "one worker's rate x NUM_WORKERS; DataLoader rows: as measured)")


if __name__ == "__main__":
    main()
