#!/usr/bin/env python
"""Compute KERN's knowledge priors (object co-occurrence, predicate prior) and the per-predicate relation counts
of a registered dataset into a .npz.

  python tools/compute_priors.py --dataset vg150_train --output datasets/vg/kern_priors_vg150.npz
  python tools/compute_priors.py --config-file configs/VG-KERN/kern_predcls.yaml   # cfg.DATASETS.TRAIN[0]
  python tools/compute_priors.py --dataset toy_train --per-box-pair --output toy_priors_box_pairs.npz
  python tools/compute_priors.py --dataset vg150_train --released --output datasets/vg/kern_priors_vg150_released.npz

Without --output the file goes to MODEL.ROI_RELATION_HEAD.PRIORS_FILE (with --config-file), else to the dataset
metadata's ``priors_file``.

--released builds the priors as KERN's released code does (its overlap-filtered training images, every overlapping
box pair in the no-relation column, +1 on that column alone, its executed co-occurrence loop; see
kern_d2.modeling.priors.compute_priors); models with MODEL.ROI_RELATION_HEAD.PRIOR_CONSTRUCTION released (or
VARIANT released) need such a file, and the others refuse it.
"""
import argparse
import sys
import time

import numpy as np

import kern_d2.data  # noqa: F401  (registers the builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.modeling.priors import compute_predicate_counts, compute_priors, save_priors


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="registered dataset (default: cfg.DATASETS.TRAIN[0] with "
                        "--config-file, else toy_train)")
    parser.add_argument("--output", default=None, help="the .npz to write")
    construction = parser.add_mutually_exclusive_group()
    construction.add_argument("--per-box-pair", action="store_true",
                              help="kern_d2 construction with co-occurrence per ordered box pair (the mean number of "
                              "other j boxes in the image of an i box) instead of per class pair; this matches "
                              "neither the executed nor the intended line of KERN's released code")
    construction.add_argument("--released", action="store_true",
                              help="the construction of KERN's released code (for PRIOR_CONSTRUCTION released); "
                              "the file records it")
    parser.add_argument("--config-file", default="", metavar="FILE", help="take the dataset from this config")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser


def _config(args):
    from detectron2.config import get_cfg

    from kern_d2 import add_kern_config

    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    return cfg


def resolve_dataset_and_output(args):
    """(dataset name, output path) from the arguments, the config and the dataset's metadata."""
    cfg = _config(args) if args.config_file else None
    if args.dataset:
        dataset = args.dataset
    elif cfg is not None:
        if not cfg.DATASETS.TRAIN:
            raise ValueError(f"{args.config_file}: DATASETS.TRAIN is empty; pass --dataset")
        dataset = cfg.DATASETS.TRAIN[0]
    else:
        dataset = "toy_train"
    output = args.output
    if not output and cfg is not None:
        output = cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE
    if not output:
        output = MetadataCatalog.get(dataset).get("priors_file", None)
    if not output:
        raise ValueError(f"no output file: pass --output (dataset {dataset} has no metadata priors_file)")
    return dataset, output


def check_not_empty(dataset: str, dataset_dicts) -> None:
    """ValueError when the dataset has no image or no relation: its priors would be the smoothing alone."""
    num_relations = sum(len(d.get("relations", [])) for d in dataset_dicts)
    if not dataset_dicts or not num_relations:
        raise ValueError(
            f"dataset {dataset} has {len(dataset_dicts)} images and {num_relations} relations: refusing to write "
            "priors from no data (check the split and its val carve-out, e.g. $KERN_VG_NUM_VAL for vg150_*)"
        )


def summarize(dataset_dicts, obj_cooccurrence, rel_prior, thing_classes, predicate_classes, top: int = 5) -> str:
    """A few lines: dataset size and the most confident class-pair predicate priors."""
    num_boxes = sum(len(d.get("annotations", [])) for d in dataset_dicts)
    num_relations = sum(len(d.get("relations", [])) for d in dataset_dicts)
    lines = [
        f"{len(dataset_dicts)} images, {num_boxes} boxes, {num_relations} relations; "
        f"{len(thing_classes)} classes, {len(predicate_classes)} predicates",
        f"co-occurrence: {np.count_nonzero(obj_cooccurrence)} non-zero entries, max {obj_cooccurrence.max():.3f}",
    ]
    fg = rel_prior[:, :, 1:]
    flat = np.argsort(fg.max(axis=2), axis=None)[::-1][:top]
    for s, o in zip(*np.unravel_index(flat, fg.shape[:2])):
        k = int(fg[s, o].argmax()) + 1
        lines.append(f"  p({predicate_classes[k]} | {thing_classes[s]}, {thing_classes[o]}) = {rel_prior[s, o, k]:.3f}")
    return "\n".join(lines)


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    dataset, output = resolve_dataset_and_output(args)
    if dataset not in DatasetCatalog.list():
        raise ValueError(f"dataset {dataset} is not registered (builtin: vg150_train, toy_train, ...)")
    meta = MetadataCatalog.get(dataset)
    thing_classes, predicate_classes = meta.get("thing_classes", None), meta.get("predicate_classes", None)
    if thing_classes is None or predicate_classes is None:
        raise ValueError(f"dataset {dataset}: metadata needs thing_classes and predicate_classes")
    start = time.perf_counter()
    dataset_dicts = DatasetCatalog.get(dataset)
    loaded = time.perf_counter()
    check_not_empty(dataset, dataset_dicts)
    construction = "released" if args.released else "kern_d2"
    obj_cooccurrence, rel_prior = compute_priors(
        dataset_dicts, len(thing_classes), len(predicate_classes), per_box_pair=args.per_box_pair,
        construction=construction,
    )
    predicate_counts = compute_predicate_counts(dataset_dicts, len(thing_classes), len(predicate_classes))
    computed = time.perf_counter()
    save_priors(output, obj_cooccurrence, rel_prior, thing_classes, predicate_classes, predicate_counts,
                construction=construction)
    if args.released:
        how = "released construction: KERN's released code"
    else:
        how = f"kern_d2 construction, co-occurrence {'per box pair' if args.per_box_pair else 'per class pair'}"
    print(f"dataset {dataset}: loaded in {loaded - start:.1f} s, priors computed in {computed - loaded:.1f} s "
          f"({how})")
    print(summarize(dataset_dicts, obj_cooccurrence, rel_prior, thing_classes, predicate_classes))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (KeyError, ValueError) as e:  # unknown dataset, no output file, class lists missing
        sys.exit(f"compute_priors.py: {e}")
