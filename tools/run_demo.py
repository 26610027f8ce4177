#!/usr/bin/env python
"""The main job (``make demo``): KERN against its baselines on the synth benchmark, end to end on CPU in minutes.

make the synth benchmark (its first 250 test images) -> train a small detector -> compute the knowledge priors ->
train KERN and VRFC in PredCls and SGCls, evaluate them and FREQ on the test split (``tools/run_study.py``, one
seed, short schedules, smaller images, 64 training pairs per image) -> draw KERN's scene graphs on test images -> print the table -> check that KERN is
ahead of both baselines on mR@50 in each mode by more than MARGIN points. Finished steps are reused on a second
run (``--fresh`` redoes them).

  python tools/run_demo.py [--output output/demo] [--fresh]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("predcls", "sgcls")
MODELS = ("kern", "vrfc", "freq")
# The short CPU schedule and sizes of the demo (the GPU study, STUDY.md: 1,500 + 800 iterations, 320 px, 128 pairs
# per image, 500 test images); the test split is the benchmark's first 250 test images.
DETECTOR_ITERS, KERN_ITERS, TEST_IMAGES = 200, 200, 250
SMALL_IMAGES = ["INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "352", "INPUT.MIN_SIZE_TRAIN", "(224,)",
                "INPUT.MAX_SIZE_TRAIN", "352", "SOLVER.IMS_PER_BATCH", "8",
                "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", "64"]
# KERN must lead each baseline on mR@50 by more than this: about twice the largest pooled std of the GPU study.
MARGIN = 5.0
COLUMNS = ["R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100", "ng-mR@50", "zR@50"]


def run(title, argv, env):
    """Run a tool (``python argv``) in the repository root; stop the demo with its output's end if it fails."""
    print(f"[demo] {title} ...", flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f"[demo] {title} failed (exit {proc.returncode}); command: python {' '.join(argv)}")
    print(f"[demo] {title}: done in {time.time() - start:.0f} s", flush=True)


def write_test_boxes(dataset_root, path, num_images):
    """gt boxes and labels of the first test images, in predict.py's --boxes-json format."""
    from kern_d2.data import load_vg_sgg

    dicts = load_vg_sgg(*(os.path.join(dataset_root, name) for name in
                          ("VG-SGG.h5", "VG-SGG-dicts.json", "image_data.json", "VG_100K")), "test")
    with open(os.path.join(dataset_root, "VG-SGG-dicts.json")) as f:
        names = json.load(f)["idx_to_label"]
    entries = {
        d["file_name"]: {"boxes": [a["bbox"] for a in d["annotations"]],
                         "labels": [names[str(a["category_id"] + 1)] for a in d["annotations"]]}
        for d in dicts[:num_images]
    }
    with open(path, "w") as f:
        json.dump(entries, f)
    return list(entries)


def main():
    from kern_d2.study import kern_leads, modes_not_ahead

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    args = parser.parse_args()
    out = os.path.join(ROOT, args.output)
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    # The demo's own dataset folder: a user's datasets/ stays untouched.
    env = dict(os.environ, KERN_DATASETS=os.path.join(out, "datasets"))
    total = time.time()

    dataset_root = os.path.join(env["KERN_DATASETS"], "synth")
    if not os.path.isfile(os.path.join(dataset_root, "VG-SGG.h5")):
        run("make the synth benchmark (its first 250 test images)", [
            "tools/make_synth_dataset.py", "--output", dataset_root, "--num-test", str(TEST_IMAGES)], env)
    study_dir = os.path.join(out, "study")
    run("KERN, VRFC and FREQ in PredCls and SGCls (tools/run_study.py)", [
        "tools/run_study.py", "--dataset", "synth", "--output", study_dir, "--device", "cpu", "--jobs", "2",
        "--modes", *MODES, "--models", *MODELS, "--seeds", "0", "--detector-iters", str(DETECTOR_ITERS),
        "--iters", str(KERN_ITERS), "--opts", *SMALL_IMAGES], env)

    kern_dir = os.path.join(study_dir, "predcls", "kern_seed0")
    pictures = os.path.join(out, "pictures")
    files = write_test_boxes(dataset_root, os.path.join(out, "test_boxes.json"), 6)
    run("draw KERN PredCls scene graphs of test images", [
        "tools/predict.py", "--config-file", "configs/synth/Base-Synth-KERN.yaml", "--input", *files,
        "--boxes-json", os.path.join(out, "test_boxes.json"), "--output", pictures, "--top-k", "10",
        "--num-workers", "0", "--opts", "MODEL.WEIGHTS", os.path.join(kern_dir, "model_final.pth"),
        "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", os.path.join(study_dir, "priors.npz"), "MODEL.DEVICE", "cpu",
        *SMALL_IMAGES[:4]], env)

    with open(os.path.join(study_dir, "study.json")) as f:
        study = json.load(f)
    header = f"{'synth test':<18}" + "".join(f"{c:>10}" for c in COLUMNS)
    for mode in MODES:
        print(f"\n{mode}\n{header}\n" + "-" * len(header))
        for model, row in study["modes"][mode].items():
            print(f"{model.upper():<18}" + "".join(f"{row['metrics'][c]['mean']:>10.2f}" for c in COLUMNS))
    print(f"\n[demo] report: {os.path.join(study_dir, 'study.md')}; plots: {study_dir}/*.png")
    print(f"[demo] scene graph pictures: {pictures}")
    print(f"[demo] total {time.time() - total:.0f} s")
    failed = modes_not_ahead(study, MARGIN)
    for mode, kern, baseline, value in kern_leads(study):
        print(f"[demo] {mode}: KERN mR@50 {kern:.2f} vs best baseline {baseline.upper()} {value:.2f}: "
              f"{'NOT ahead' if mode in failed else 'ahead'} by more than {MARGIN:g} points")
    if failed:
        sys.exit(f"[demo] KERN is not ahead of the baselines by more than {MARGIN:g} mR@50 points in {failed}")

if __name__ == "__main__":
    main()
