#!/usr/bin/env python
"""Train and evaluate KERN and its baselines over modes and seeds on a scene-graph dataset, and report mean ± std.

make the dataset (if missing) -> train the detector once -> compute the knowledge priors -> train and evaluate
every (mode, model, seed), up to --jobs at once -> study.json, study.md, mR50.png, per_predicate_<mode>.png in
--output. Finished runs are reused on a second run made with the same settings (``--fresh`` redoes them).

  python tools/run_study.py --dataset synth --jobs 4                    # the full study (GPU)
  python tools/run_study.py --dataset toy --quick --device cpu           # one seed, fewer iterations
  python tools/run_study.py --variant kern_logit_adj=NEW_KEY True        # an extra KERN variant
  python tools/run_study.py ... --opts INPUT.MIN_SIZE_TEST 128           # overrides of every run
"""
import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys

from kern_d2.utils.cli import quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per dataset prefix: its generator (run with --output <root>/<prefix>), detector config and KERN base config.
DATASETS = {
    "toy": {"generator": "tools/make_toy_dataset.py", "detector_config": "configs/toy/toy_detector.yaml",
            "kern_config": "configs/toy/Base-Toy-KERN.yaml"},
    "synth": {"generator": "tools/make_synth_dataset.py", "detector_config": "configs/synth/synth_detector.yaml",
              "kern_config": "configs/synth/Base-Synth-KERN.yaml"},
}
QUICK_ITER_FRACTION = 0.1  # --quick: KERN runs take this fraction of the config's iterations
QUICK_DETECTOR_ITER_FRACTION = 0.25


def parse_args(argv=None):
    from kern_d2.study import FIDELITY_MODELS, MODELS, MODES, variant_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", default="synth", help=f"dataset prefix (<prefix>_train/_test); known: "
                        f"{', '.join(DATASETS)}")
    parser.add_argument("--output", default="output/study")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS) + list(FIDELITY_MODELS),
                        help="study models; the fidelity study's: " + ", ".join(FIDELITY_MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help=f"one seed, {QUICK_ITER_FRACTION:g} of the KERN "
                        f"config's iterations and {QUICK_DETECTOR_ITER_FRACTION:g} of the detector's "
                        "(unless --iters / --detector-iters)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (they share the device and the CPUs)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--iters", type=int, help="iterations of every KERN run (steps and warmup scaled)")
    parser.add_argument("--detector-iters", type=int, help="iterations of the detector")
    parser.add_argument("--detector-config", help="default: by dataset (see DATASETS in this file)")
    parser.add_argument("--detector-weights", help="a trained detector (of --detector-config) instead of training one")
    parser.add_argument("--kern-config", help="KERN base config; default: by dataset")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME=KEY VALUE",
                        help="an extra KERN model: NAME=KEY VALUE [KEY VALUE ...]; short keys are "
                        "MODEL.ROI_RELATION_HEAD keys, dotted keys full config keys")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides of every run, detector included (last on the command line)")
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    from kern_d2.utils.cli import add_tool_arguments

    add_tool_arguments(parser)  # --register: your datasets (<prefix>_train, <prefix>_test), in every run too
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if len(args.opts) % 2:
        parser.error("--opts takes KEY VALUE pairs")
    known = DATASETS.get(args.dataset, {})
    if not (args.detector_config or known) or not (args.kern_config or known):
        parser.error(f"dataset {args.dataset!r} has no default configs: give --detector-config and --kern-config")
    # The runs work in the repository root: the user's paths from here, the defaults from the root.
    args.detector_config = os.path.abspath(args.detector_config or os.path.join(ROOT, known["detector_config"]))
    args.kern_config = os.path.abspath(args.kern_config or os.path.join(ROOT, known["kern_config"]))
    try:
        args.variants = dict(parse_variant(tokens) for tokens in args.variant)
        variant_models(args.variants)
    except ValueError as e:
        parser.error(str(e))
    if args.detector_weights and not os.path.isfile(args.detector_weights):
        parser.error(f"--detector-weights: no file {args.detector_weights}")
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


def parse_variant(tokens):
    """["name=KEY", "VALUE", "KEY", "VALUE", ...] -> (name, {KEY: VALUE})."""
    name, sep, first_key = tokens[0].partition("=")
    rest = [first_key] + list(tokens[1:])
    if not sep or not name or not first_key or len(rest) % 2:
        raise ValueError(f"--variant {' '.join(tokens)}: expected NAME=KEY VALUE [KEY VALUE ...]")
    return name, dict(zip(rest[0::2], rest[1::2]))


def solver_of(config_file):
    from kern_d2.engine import load_cfg

    return load_cfg(argparse.Namespace(config_file=config_file, opts=[])).SOLVER


def device_name(device):
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores)"


def git_commit():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def train_predicate_counts(dataset_name):
    """{predicate name: triplets in the train split}."""
    from collections import Counter

    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get(dataset_name)  # loading sets the class names (the files may be newer than the import)
    names = MetadataCatalog.get(dataset_name).predicate_classes
    counts = Counter(int(p) for d in dicts for p in d["relations"][:, 2])
    return {names[p]: counts.get(p, 0) for p in range(1, len(names))}


def quick_iters(config_file, fraction):
    return max(1, round(solver_of(config_file).MAX_ITER * fraction))


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    datasets_root = os.path.abspath(os.environ.get("KERN_DATASETS", os.path.join(ROOT, "datasets")))
    os.environ["KERN_DATASETS"] = datasets_root  # before kern_d2.data registers the builtin datasets
    from kern_d2.utils.cli import one_line_errors

    import torch

    from detectron2.data import DatasetCatalog

    from kern_d2.data import register_user_datasets

    with one_line_errors("run_study.py", args.debug):
        register_user_datasets(args.register)  # also into $KERN_REGISTER, for the runs

    from kern_d2.evaluation.sgg_report import read_sgg_metrics
    from kern_d2.study import (FIDELITY_MODELS, MODELS, Job, JobRunner, format_duration, plan_runs, scaled_schedule,
                               uses_released_priors, variant_models, write_report)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpus = len(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, cpus // args.jobs))  # the runs share the cores
    logs = os.path.join(out, "logs")
    ds, test_dataset = args.dataset, f"{args.dataset}_test"

    # Setup, one step after the other: the dataset, the detector, the priors.
    setup = []
    dataset_dir = os.path.join(datasets_root, ds)
    if ds in DATASETS:
        setup.append(Job(f"make the {ds} dataset", [DATASETS[ds]["generator"], "--output", dataset_dir],
                         os.path.join(dataset_dir, "VG-SGG.h5"), os.path.join(logs, "dataset.txt")))
    elif not {f"{ds}_train", test_dataset} <= set(DatasetCatalog.list()):
        sys.exit(f"[study] {ds}_train and {test_dataset} are not both registered and no generator is known for "
                 f"{ds!r}: register your dataset with --register my_datasets.py (or $KERN_REGISTER)")
    if args.detector_weights:
        detector = os.path.abspath(args.detector_weights)
    else:
        detector_dir = os.path.join(out, "detector")
        detector = os.path.join(detector_dir, "model_final.pth")
        detector_iters = args.detector_iters or (
            quick_iters(args.detector_config, QUICK_DETECTOR_ITER_FRACTION) if args.quick else None)
        schedule = scaled_schedule(solver_of(args.detector_config), detector_iters) if detector_iters else []
        command = ["tools/train_net.py", "--config-file", args.detector_config, "OUTPUT_DIR", detector_dir,
                   "MODEL.DEVICE", device] + schedule + args.opts
        setup.append(Job("train the detector", command, detector, os.path.join(logs, "detector.txt"),
                         marker=os.path.join(detector_dir, "study_job.json"),
                         resource_args=["DATALOADER.NUM_WORKERS", str(cpus)]))
    priors = os.path.join(out, "priors.npz")
    setup.append(Job("compute the priors", ["tools/compute_priors.py", "--dataset", f"{ds}_train", "--output", priors],
                     priors, os.path.join(logs, "priors.txt"), marker=os.path.join(out, "priors_job.json")))
    # Models that ask for the released prior construction get their own priors file.
    model_table = dict(MODELS, **FIDELITY_MODELS, **variant_models(args.variants))
    studied = list(args.models) + list(args.variants)
    released_priors = os.path.join(out, "priors_released.npz")
    if any(uses_released_priors(model_table[m]["keys"]) for m in studied):
        setup.append(Job("compute the released priors", ["tools/compute_priors.py", "--dataset", f"{ds}_train",
                                                         "--released", "--output", released_priors],
                         released_priors, os.path.join(logs, "priors_released.txt"),
                         marker=os.path.join(out, "priors_released_job.json")))
        model_table = {name: dict(spec, keys=dict(spec["keys"], PRIORS_FILE=released_priors))
                       if uses_released_priors(spec["keys"]) else spec for name, spec in model_table.items()}
    for job in setup:
        if JobRunner(ROOT, env, fresh=args.fresh, prefix="[study]").run([job]):
            sys.exit(f"[study] {job.name} failed; the study needs it")
    if not os.path.isfile(detector):
        sys.exit(f"[study] no detector weights at {detector}")

    # The study's runs, up to --jobs at once.
    kern_iters = args.iters or (quick_iters(args.kern_config, QUICK_ITER_FRACTION) if args.quick else None)
    runs = plan_runs(
        args.kern_config, out, args.modes, studied, args.seeds,
        common=["MODEL.WEIGHTS", detector, "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", priors, "MODEL.DEVICE", device,
                "DATASETS.TEST", f"('{test_dataset}',)"],
        schedule=scaled_schedule(solver_of(args.kern_config), kern_iters) if kern_iters else [],
        extra=args.opts, model_table=model_table)
    workers = ["DATALOADER.NUM_WORKERS", str(max(1, cpus // args.jobs))]
    jobs = [Job(run.name, run.argv, os.path.join(run.output_dir, "inference", test_dataset, "sgg_metrics.json"),
                os.path.join(run.output_dir, "study_log.txt"), marker=os.path.join(run.output_dir, "study_job.json"),
                group=run.mode + (" eval" if run.seed is None else ""), resource_args=workers) for run in runs]
    print(f"[study] {len(runs)} runs on {device} ({device_name(device)}), {args.jobs} at once; KERN iterations: "
          f"{kern_iters or 'as in the config'}", flush=True)
    runner = JobRunner(ROOT, env, parallel=args.jobs, fresh=args.fresh, prefix="[study]")
    failed = [job.name for job in runner.run(jobs)]

    results = {mode: {} for mode in args.modes}
    for run in runs:
        if run.name not in failed:
            results[run.mode].setdefault(run.model, {})[run.seed] = read_sgg_metrics(run.output_dir, test_dataset)
    header = {
        "command": shlex.join(["python", "tools/run_study.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "device": device_name(device),
        "git commit": git_commit(),
        "dataset": f"{ds} (test: {test_dataset})",
        "seeds": " ".join(map(str, args.seeds)),
        "KERN iterations": str(kern_iters or solver_of(args.kern_config).MAX_ITER),
    }
    write_report(out, results, header, train_predicate_counts(f"{ds}_train"), failed, extra={"seeds": args.seeds})
    with open(os.path.join(out, "study.md")) as f:
        print(f.read(), flush=True)
    print(f"[study] report in {out}: study.md, study.json, mR50.png, per_predicate_<mode>.png; the runs made here "
          f"took {format_duration(sum(sum(v) for v in runner.durations.values()))} in all", flush=True)
    if failed:
        sys.exit(f"[study] {len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
