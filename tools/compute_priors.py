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

from kern_d2.utils.cli import add_tool_arguments, one_line_errors, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

import numpy as np  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from kern_d2.config_check import unregistered_dataset_error  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.data.datasets.registration import sgg_dataset_classes  # noqa: E402
from kern_d2.modeling.priors import compute_predicate_counts, compute_priors, save_priors  # noqa: E402


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
    add_tool_arguments(parser)
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
    # Only class pairs with relations in the data: the others hold the smoothing's uniform fill.
    pair_relations = np.zeros(fg.shape[:2], dtype=np.int64)
    for d in dataset_dicts:
        labels = np.array([a["category_id"] for a in d.get("annotations", [])], dtype=np.int64)
        rels = np.asarray(d.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        np.add.at(pair_relations, (labels[rels[:, 0]], labels[rels[:, 1]]), 1)
    best = np.where(pair_relations > 0, fg.max(axis=2), -1.0)
    flat = np.argsort(best, axis=None, kind="stable")[::-1][: min(top, int((pair_relations > 0).sum()))]
    for s, o in zip(*np.unravel_index(flat, fg.shape[:2])):
        k = int(fg[s, o].argmax()) + 1
        lines.append(f"  p({predicate_classes[k]} | {thing_classes[s]}, {thing_classes[o]}) = {rel_prior[s, o, k]:.3f} "
                     f"({pair_relations[s, o]} relation{'s' if pair_relations[s, o] != 1 else ''})")
    return "\n".join(lines)


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    register_user_datasets(args.register)
    dataset, output = resolve_dataset_and_output(args)
    if dataset not in DatasetCatalog.list():
        raise unregistered_dataset_error(dataset, "--dataset")
    thing_classes, predicate_classes = sgg_dataset_classes(dataset)  # names a missing or broken class file
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
    # Unknown dataset, no output file, dataset files missing or broken: one line, exit 2 (traceback with --debug).
    with one_line_errors("compute_priors.py", "--debug" in sys.argv, (KeyError, ValueError, OSError)):
        main(sys.argv[1:])
