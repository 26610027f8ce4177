#!/usr/bin/env python
"""Write the synth scene-graph benchmark (VG150 file format; design in datasets/README.md).

    python tools/make_synth_dataset.py --output datasets/synth --seed 0
"""
import argparse
import json
import os
import time

from kern_d2.data.generators.synth import format_synth_statistics, generate_synth_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="datasets/synth", help="output folder (default: datasets/synth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=2000, help="train-split images, val included")
    parser.add_argument("--num-val", type=int, default=200, help="val = the first NUM_VAL train-split images")
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count; same output)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stats = generate_synth_dataset(args.output, args.num_train, args.num_test, args.num_val, args.seed, args.workers)
    with open(os.path.join(args.output, "statistics.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(f"Wrote the synth benchmark to {args.output} in {time.perf_counter() - start:.1f} s")
    print(format_synth_statistics(stats))


if __name__ == "__main__":
    main()
