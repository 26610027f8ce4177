#!/usr/bin/env python
"""Write the toy scene graph dataset (VG150 file format) used for CPU runs of the whole pipeline.

    python tools/make_toy_dataset.py --output datasets/toy --seed 0
"""
import argparse
import time

from kern_d2.data.generators.toy import format_toy_summary, generate_toy_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="datasets/toy", help="output folder (default: datasets/toy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=400, help="train-split images, val included")
    parser.add_argument("--num-val", type=int, default=50, help="val = the first NUM_VAL train-split images")
    parser.add_argument("--num-test", type=int, default=100)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = generate_toy_dataset(args.output, args.num_train, args.num_test, args.num_val, args.seed)
    print(f"Wrote the toy dataset to {args.output} in {time.perf_counter() - start:.1f} s")
    print(format_toy_summary(summary))


if __name__ == "__main__":
    main()
