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

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from kern_d2.config_check import unregistered_dataset_error  # noqa: E402
from kern_d2.data import register_user_datasets  # noqa: E402
from kern_d2.data.datasets.registration import sgg_dataset_classes  # noqa: E402
from kern_d2.engine import load_cfg  # noqa: E402
from kern_d2.modeling.priors import compute_predicate_counts, compute_priors, save_priors  # noqa: E402
from kern_d2.modeling.priors_summary import check_priors_data, summarize_priors  # noqa: E402


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


def resolve_dataset_and_output(args):
    """(dataset name, output path) from the arguments, the config and the dataset's metadata."""
    cfg = load_cfg(args) if args.config_file else None
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
    check_priors_data(dataset, dataset_dicts)
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
    print(summarize_priors(dataset_dicts, obj_cooccurrence, rel_prior, thing_classes, predicate_classes))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    # Unknown dataset, no output file, dataset files missing or broken: one line, exit 2 (traceback with --debug).
    with one_line_errors("compute_priors.py", "--debug" in sys.argv, (KeyError, ValueError, OSError)):
        main(sys.argv[1:])
