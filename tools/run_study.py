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
    from kern_d2.study import parse_study_args

    args = parse_study_args(argv, root=ROOT, doc=__doc__)
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
    from kern_d2.study import (FIDELITY_MODELS, MODELS, QUICK_DETECTOR_ITER_FRACTION, QUICK_ITER_FRACTION,
                               STUDY_DATASETS, Job, JobRunner, format_duration, plan_runs, scaled_schedule,
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
    if ds in STUDY_DATASETS:
        setup.append(Job(f"make the {ds} dataset", [STUDY_DATASETS[ds]["generator"], "--output", dataset_dir],
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
    model_table = dict(MODELS, **FIDELITY_MODELS, **variant_models(args.variants, args.variant_modes))
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
