#!/usr/bin/env python
"""The main job on the bundled toy dataset, end to end on CPU in minutes.

make the toy dataset -> train the toy detector -> compute the knowledge priors -> train KERN and the VRFC
baseline in PredCls from the frozen detector -> evaluate KERN, VRFC and FREQ on the toy test split -> print the
table -> draw prediction pictures. Finished steps are reused on a second run (``--fresh`` redoes them).

  python tools/run_toy_pipeline.py [--output output/toy] [--fresh]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ["R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100",
           "ng-R@20", "ng-R@50", "ng-R@100", "ng-mR@20", "ng-mR@50", "ng-mR@100"]


def run_step(title, command, done_file=None, env=None):
    """Run a tool as a subprocess unless ``done_file`` exists; stop the pipeline with its log tail if it fails."""
    if done_file and os.path.exists(done_file):
        print(f"[toy] {title}: already done ({os.path.relpath(done_file, ROOT)})", flush=True)
        return
    print(f"[toy] {title} ...", flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable] + command, cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(proc.stdout[-6000:])
        sys.exit(f"[toy] {title} failed (exit {proc.returncode}); command: {' '.join(command)}")
    print(f"[toy] {title}: done in {time.time() - start:.0f} s", flush=True)


def read_metrics(output_dir):
    from kern_d2.evaluation.sgg_report import read_sgg_metrics

    return read_sgg_metrics(output_dir, "toy_test")["metrics"]  # percent


def write_test_boxes(toy_root, path, num_images):
    """gt boxes and labels of the first test images, in predict.py's --boxes-json format."""
    from kern_d2.data import load_vg_sgg

    dicts = load_vg_sgg(os.path.join(toy_root, "VG-SGG.h5"), os.path.join(toy_root, "VG-SGG-dicts.json"),
                        os.path.join(toy_root, "image_data.json"), os.path.join(toy_root, "VG_100K"), "test")
    with open(os.path.join(toy_root, "VG-SGG-dicts.json")) as f:
        names = json.load(f)["idx_to_label"]
    entries = {
        d["file_name"]: {"boxes": [a["bbox"] for a in d["annotations"]],
                         "labels": [names[str(a["category_id"] + 1)] for a in d["annotations"]]}
        for d in dicts[:num_images]
    }
    with open(path, "w") as f:
        json.dump(entries, f)
    return {"path": path, "files": list(entries)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="output/toy")
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    args = parser.parse_args()
    out = os.path.join(ROOT, args.output)
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, KERN_DATASETS=os.environ.get("KERN_DATASETS", os.path.join(ROOT, "datasets")))
    toy_root = os.path.join(env["KERN_DATASETS"], "toy")
    total = time.time()

    run_step("make the toy dataset", ["tools/make_toy_dataset.py", "--output", toy_root],
             done_file=None if args.fresh else os.path.join(toy_root, "VG-SGG.h5"), env=env)
    detector = os.path.join(out, "detector")
    run_step("train the toy detector", ["tools/train_net.py", "--config-file", "configs/toy/toy_detector.yaml",
                                        "OUTPUT_DIR", detector],
             done_file=os.path.join(detector, "model_final.pth"), env=env)
    priors = os.path.join(out, "priors.npz")
    run_step("compute the knowledge priors", ["tools/compute_priors.py", "--dataset", "toy_train",
                                               "--output", priors], done_file=priors, env=env)
    common = ["MODEL.WEIGHTS", os.path.join(detector, "model_final.pth"),
              "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", priors]
    for head in ("kern", "vrfc"):
        head_dir = os.path.join(out, f"{head}_predcls")
        run_step(f"train {head.upper()} PredCls", ["tools/train_net.py", "--config-file",
                 f"configs/toy/{head}_predcls.yaml", "OUTPUT_DIR", head_dir] + common,
                 done_file=os.path.join(head_dir, "inference", "toy_test", "sgg_metrics.json"), env=env)
    freq_dir = os.path.join(out, "freq_predcls")
    run_step("evaluate FREQ PredCls", ["tools/train_net.py", "--config-file", "configs/toy/freq_predcls.yaml",
             "--eval-only", "OUTPUT_DIR", freq_dir] + common,
             done_file=os.path.join(freq_dir, "inference", "toy_test", "sgg_metrics.json"), env=env)

    kern_dir = os.path.join(out, "kern_predcls")
    pictures = os.path.join(out, "pictures")
    boxes_json = write_test_boxes(toy_root, os.path.join(out, "test_boxes.json"), num_images=6)
    run_step("draw KERN PredCls predictions on test images", [
        "tools/predict.py", "--config-file", "configs/toy/kern_predcls.yaml", "--input", *boxes_json["files"],
        "--boxes-json", boxes_json["path"], "--output", pictures, "--top-k", "10", "--num-workers", "0",
        "--opts", "MODEL.WEIGHTS", os.path.join(kern_dir, "model_final.pth"),
        "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", priors], env=env)

    rows = {name: read_metrics(os.path.join(out, f"{name.lower()}_predcls")) for name in ("KERN", "VRFC", "FREQ")}
    header = f"{'PredCls, toy test':<18}" + "".join(f"{m:>10}" for m in METRICS)
    print("\n" + header + "\n" + "-" * len(header))
    for name, metrics in rows.items():
        print(f"{name:<18}" + "".join(f"{metrics[m]:>10.2f}" for m in METRICS))
    print(f"\n[toy] per-predicate plot: {os.path.join(kern_dir, 'inference', 'toy_test', 'sgg_per_predicate.png')}")
    print(f"[toy] prediction pictures: {pictures}")
    print(f"[toy] total {time.time() - total:.0f} s")
    kern, best_baseline = rows["KERN"]["mR@50"], max(rows["VRFC"]["mR@50"], rows["FREQ"]["mR@50"])
    if kern <= best_baseline:
        sys.exit(f"[toy] KERN mR@50 {kern:.2f} is not above the best baseline {best_baseline:.2f}")
    print(f"[toy] KERN mR@50 {kern:.2f} > best baseline {best_baseline:.2f}")


if __name__ == "__main__":
    main()
