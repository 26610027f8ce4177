#!/usr/bin/env python
"""Merge the reports of studies run apart (e.g. PredCls/SGCls in one device call, SGDet in another) into one.

    python tools/merge_study_reports.py A/study.json B/study.json --output docs/study

Reads each ``study.json`` written by ``tools/run_study.py``, checks that no (mode, model) is in two of them and that
they were trained on the same data (equal train predicate counts), and writes study.json, study.md and the plots
of the union, as run_study would have. The header lists each part's command, date, device and commit.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HEADER_KEYS = ("command", "date", "device", "git_commit", "dataset", "seeds", "KERN_iterations")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("reports", nargs="+", help="study.json files of run_study.py")
    parser.add_argument("--output", required=True, help="folder for the merged report")
    return parser.parse_args(argv)


def read_report(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"merge_study_reports: cannot read {path}: {e}")


def main(argv=None):
    from kern_d2.study import merge_studies, write_study_report

    args = parse_args(argv)
    payloads = [read_report(path) for path in args.reports]
    try:
        merged = merge_studies(payloads, args.reports)
    except ValueError as e:
        raise SystemExit(f"merge_study_reports: {e}")
    header = {}
    for i, payload in enumerate(payloads, 1):
        modes = "/".join(payload["modes"])
        for key in HEADER_KEYS:
            if key in payload:
                header[f"part {i} ({modes}) {key.replace('_', ' ')}"] = payload[key]
    os.makedirs(args.output, exist_ok=True)
    write_study_report(args.output, merged["modes"], header, merged["train_predicate_counts"], merged["failed"],
                       extra={"parts": args.reports})
    print(f"merge_study_reports: {len(payloads)} reports, modes {', '.join(merged['modes'])} -> {args.output}")


if __name__ == "__main__":
    main()
