#!/usr/bin/env python
"""Write a Visual Genome stand-in (VG150 layout and shape, generated pictures) where the VG files would go.

    python tools/make_vg_standin.py --output datasets/vg --train-images 5000 --test-images 2000
    KERN_MISSING_IMAGES=skip python tools/train_net.py --config-file configs/VG-KERN/kern_predcls.yaml ...

The h5 index has VG150's 108,073 rows (``--rows`` for fewer); JPEGs are written for the first --train-images
train-split and --test-images test-split rows only, so the builtin vg150_* names need
``KERN_MISSING_IMAGES=skip`` (the loader then drops the rows without a file, counted and logged). What the
pictures show: kern_d2/data/generators/vg_standin.py.
"""
import argparse
import json
import time

from kern_d2.data.generators.vg_standin import VG_ROWS, format_standin_summary, generate_vg_standin


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="datasets/vg", help="output folder (default: datasets/vg)")
    parser.add_argument("--rows", type=int, default=VG_ROWS, help=f"h5 image rows (default {VG_ROWS}, as VG150)")
    parser.add_argument("--train-images", type=int, default=5000, help="JPEGs of the first N train-split rows")
    parser.add_argument("--test-images", type=int, default=2000, help="JPEGs of the first N test-split rows")
    parser.add_argument("--workers", type=int, default=0, help="processes (default 0: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary-json", help="also write the summary here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = generate_vg_standin(args.output, args.rows, args.train_images, args.test_images, args.workers,
                                  args.seed)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(f"Wrote the VG stand-in to {args.output} in {summary['seconds']} s")
    print(format_standin_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
