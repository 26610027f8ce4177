#!/usr/bin/env python
"""The Visual Genome path at VG scale, on the stand-in: the commands a VG user runs, timed, in two parts.

    python benchmarks/vg_scale.py --part 1 --out $OUT     # stand-in, detector, priors, PredCls, SGCls
    python benchmarks/vg_scale.py --part 2 --out $OUT     # SGDet, the evaluations, PredCls with 8 loader workers
    python benchmarks/vg_scale.py --part loader --out $OUT  # only PredCls at each of --loader-workers
    python benchmarks/vg_scale.py --part all --smoke --workdir /tmp/vg_smoke --out /tmp/vg_smoke/out   # check

Every step runs a project tool as a VG user would, from ``--workdir`` (the configs' relative paths resolve there:
``datasets/vg/`` for the stand-in and the priors, ``output/vg_*`` for the checkpoints, so each phase starts from
the previous phase's ``model_final.pth`` exactly as the README says):

1. ``tools/make_vg_standin.py`` (108,073-row index, JPEGs for the first N train / M test rows);
2. ``tools/train_net.py`` with ``configs/VG-Detection/faster_rcnn_R_101_FPN.yaml`` from random init (no ImageNet
   weights can be downloaded there: ``MODEL.WEIGHTS ""`` and ``MODEL.UNTRAINED_DETECTOR calibrate``);
3. ``tools/compute_priors.py --dataset vg150_train``;
4. ``tools/train_net.py`` with ``configs/VG-KERN/kern_{predcls,sgcls,sgdet}.yaml``;
5. ``tools/train_net.py --eval-only`` SGDet on vg150_test with all pairs, the detector alone on the same images
   (its throughput, side by side for the inference target), then SGDet with the default pair rule;
6. between those, PredCls once more with 8 data-loader workers (the configs have 4): the loader's wait share.

Only iteration counts and dataset choices are overridden (``SOLVER.MAX_ITER``; the training phases evaluate at
their end on the small vg150_val instead of the whole test split; the builtin names read ``KERN_VG_NUM_VAL`` and
``KERN_VG_MISSING_IMAGES=skip``). Should the detector diverge at the config's learning rate from random init, it
is trained once more at a tenth of it (recorded). ``--smoke`` shrinks everything (small images and inputs, a few
iterations, batch 2; on the GPU when there is one).

Time: ``--budget-s`` (default 480 s a part) cuts training iterations, to no fewer than 50, when the estimated time
of the steps after them (measured s/iter where this run has them, else guesses for an H200) would not fit.
Part 2 needs part 1's checkpoints in ``--workdir``. When they are gone (a fresh machine), it redoes part 1
small (fewer images and iterations, marked ``"redone"`` in the JSON) and trains SGDet for fewer iterations.
Results: ``<out>/vg_scale.json`` (merged over the parts run in the same workdir; written after every step, so a
killed run keeps what it measured) and ``<out>/vg_scale.log``; the SGDet evaluations' ``sgg_metrics.json`` and
plots are copied to ``<out>`` too.
"""
import argparse
import glob
import json
import os
import re
import runpy
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The run's own files (state between parts, each tool's log, the stand-in's summary) go under output/<NAME> of the
# workdir (VGScaleRun.NAME: output/vg_scale), which git ignores: the device tool keeps ignored outputs between calls on
# a warm machine and replaces the rest.
# The VG-KERN configs' PRIORS_FILE: KERN as released (VARIANT released), whose priors are built with --released.
PRIORS_FILE = "datasets/vg/kern_priors_vg150_released.npz"
KERN_MODES = ("predcls", "sgcls", "sgdet")
OUTPUT_DIRS = {"detector": "output/vg_detection_R101_FPN", **{m: f"output/vg_kern_{m}" for m in KERN_MODES}}
CONFIGS = {"detector": "configs/VG-Detection/faster_rcnn_R_101_FPN.yaml",
           **{m: f"configs/VG-KERN/kern_{m}.yaml" for m in KERN_MODES}}
# Sizes: (full run, smoke run). 3,000 train JPEGs: the detector's 200 x 16 images are about one epoch, KERN's
# 300 x 8 less; 2,200 test JPEGs leave >= 2,000 test images after the loader drops those without relations.
SIZES = {
    "rows": (108_073, 1_500),
    "train_images": (3_000, 24),
    "test_images": (2_200, 8),
    "num_val": (100, 4),
    "detector_iters": (200, 4),
    "kern_iters": (300, 3),
    # part 2 on a fresh machine: part 1 again, small, then SGDet shorter
    "redo_train_images": (1_000, 24),
    "redo_detector_iters": (30, 2),
    "redo_predcls_iters": (30, 2),  # PredCls and SGCls
    "redo_kern_iters": (100, 3),
}
# Estimates until the run has measured them, from the H200 runs of 2026-12-03 (fp32, the configs' batches, 4 loader
# workers; BENCHMARKS.md "VG scale"; the slower host of run C for the evaluations): s/iter per phase, s per test
# image of the evaluations (batch 1), a tool's start-up plus end-of-training evaluation on vg150_val, the priors.
GUESS_S_PER_ITER = {"detector": 0.29, "predcls": 0.08, "sgcls": 0.095, "sgdet": 0.22}
GUESS_EVAL_S_PER_IMAGE = {"overlap": 0.047, "all_pairs": 0.07, "detector": 0.03}
STARTUP_S, PRIORS_S, MIN_ITERS = 20, 10, 50
# The smoke run's inputs: small images, no loader workers, 2 images a batch (on the GPU when there is one).
SMOKE_OPTS = ["INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "224",
              "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224", "DATALOADER.NUM_WORKERS", "0",
              "SOLVER.IMS_PER_BATCH", "2", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
              "MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS", "12"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["1", "2", "all", "loader"], default="all",
                        help="loader: only the data-loader check, PredCls at each of --loader-workers (a detector "
                             "from random init when none was trained in the workdir)")
    parser.add_argument("--loader-workers", default=os.environ.get("VG_SCALE_LOADER_WORKERS", "4,8,12"),
                        help="--part loader: DATALOADER.NUM_WORKERS values, e.g. 4,8,12; env VG_SCALE_LOADER_WORKERS")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks the commands end to end")
    parser.add_argument("--workdir", default=ROOT, help="where datasets/ and output/ go (default: the project root)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"), help="JSON, log and metrics go here")
    parser.add_argument("--budget-s", type=float, default=os.environ.get("VG_SCALE_BUDGET_S"),
                        help="seconds this part may take: training iterations are cut (to no fewer than "
                             f"{MIN_ITERS}) so that the steps after them fit (default 480, none with --smoke); "
                             "env VG_SCALE_BUDGET_S")
    for key in SIZES:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {SIZES[key][0]} ({SIZES[key][1]} "
                            "with --smoke); env VG_SCALE_" + key.upper())
    parser.add_argument("--detector-base-lr", type=float, default=os.environ.get("VG_SCALE_DETECTOR_BASE_LR"),
                        help="train the detector at this SOLVER.BASE_LR at once (default: the config's, and a tenth "
                             "of it should that diverge); env VG_SCALE_DETECTOR_BASE_LR")
    parser.add_argument("--exec", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # internal: run a tool in-process
    args = parser.parse_args(argv)
    for key, (full, smoke) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, int(os.environ.get(f"VG_SCALE_{key.upper()}", smoke if args.smoke else full)))
    if args.budget_s is None:
        args.budget_s = None if args.smoke else 480.0
    args.budget_s = float(args.budget_s) if args.budget_s else None
    args.workdir, args.out = os.path.abspath(args.workdir), os.path.abspath(args.out)
    return args


def exec_tool(argv):
    """Run ``python <tool> args`` in this process, then print its peak GPU memory (all of the process's work)."""
    script = argv[0]
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        import torch

        if torch.cuda.is_available():
            print(f"VG_SCALE peak_gpu_memory_gb {torch.cuda.max_memory_allocated() / 1e9:.2f} "
                  f"reserved_gb {torch.cuda.max_memory_reserved() / 1e9:.2f}", flush=True)


# ---------------------------------------------------------------------------------------------- parsing
def _hms(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def training_figures(output: str, output_dir: str, images_per_batch: int) -> dict:
    """s/iter, images/s, peak memory, data-loader wait share, first/last losses and foreground counts of a run."""
    figures = {}
    speed = re.findall(r"Overall training speed: (\d+) iterations in ([\d:.]+) \(([\d.]+) s / it\)", output)
    if speed:
        figures["s_per_iter"] = float(speed[-1][2])
        figures["images_per_s"] = round(images_per_batch / float(speed[-1][2]), 2)
    figures.update(_peak_memory(output))
    metrics_file = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        timed = [r for r in rows if "time" in r and "data_time" in r][1:] or [r for r in rows if "time" in r]
        if timed:
            figures["median_iter_time_s"] = round(statistics.median(r["time"] for r in timed), 4)
            figures["data_wait_share"] = round(sum(r["data_time"] for r in timed) / sum(r["time"] for r in timed), 4)
        losses = [r for r in rows if "total_loss" in r]
        if losses:
            keys = [k for k in losses[0] if k.startswith("loss") or k == "total_loss"]
            figures["losses_first"] = {k: round(losses[0][k], 4) for k in keys}
            figures["losses_last"] = {k: round(losses[-1].get(k, float("nan")), 4) for k in keys}
        periods = [r for r in rows if "sgg/period_images" in r]
        if periods:
            figures["images_without_fg_pair"] = int(sum(r["sgg/period_images_without_fg"] for r in periods))
            figures["images_seen"] = int(sum(r["sgg/period_images"] for r in periods))
    return figures


def _peak_memory(output: str) -> dict:
    figures = {}
    logged = [int(m) for m in re.findall(r"max_mem: (\d+)M", output)]
    if logged:
        figures["peak_gpu_memory_gb_training_log"] = round(max(logged) * 2**20 / 1e9, 2)
    peak = re.findall(r"VG_SCALE peak_gpu_memory_gb ([\d.]+) reserved_gb ([\d.]+)", output)
    if peak:
        figures["peak_gpu_memory_gb"], figures["peak_gpu_reserved_gb"] = float(peak[-1][0]), float(peak[-1][1])
    return figures


def evaluation_figures(output: str, metrics_file: str) -> dict:
    figures = _peak_memory(output)
    total = re.findall(r"Total inference time: ([\d:.]+) \(([\d.]+) s / iter per device", output)
    batches = re.findall(r"Start inference on (\d+) batches", output)
    pure = re.findall(r"Total inference pure compute time: [\d:.]+ \(([\d.]+) s / iter per device", output)
    if pure:  # the model alone: without data loading and the evaluator's work
        figures["pure_compute_s_per_image"] = float(pure[-1])
    if total:
        figures["inference_s_per_image"] = float(total[-1][1])
        figures["inference_s_per_1000_images"] = round(1000 * float(total[-1][1]), 1)
        figures["inference_total_s"] = round(_hms(total[-1][0]), 1)
    if batches:
        figures["images"] = int(batches[-1])
    coco = re.search(r"copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: ([\d.nan]+),([\d.nan]+)", output)
    if coco:
        figures["box_AP"], figures["box_AP50"] = float(coco.group(1)), float(coco.group(2))
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            metrics = json.load(f)
        figures["sgg"] = {k: v for k, v in metrics["metrics"].items() if re.fullmatch(r"(ng-)?m?R@(50|100)", k)}
        figures["images_with_relations"] = metrics["num_images_with_relations"]
    return figures


def throughput_ratios(steps: dict) -> dict:
    """SGDet throughput as a fraction of the detector's (s/image of the detector / s/image of SGDet), for each SGDet
    evaluation timed in this run; the inference target asks >= 0.6 with all pairs."""
    detector = steps.get("eval_detector", {}).get("inference_s_per_image")
    if not detector:
        return {}
    sgdet = {name: steps.get(f"eval_{name}", {}).get("inference_s_per_image") for name in ("all_pairs", "overlap")}
    return {name: round(detector / s_per_image, 3) for name, s_per_image in sgdet.items() if s_per_image}


# ---------------------------------------------------------------------------------------------- the run
class VGScaleRun:
    NAME = "vg_scale"  # the scratch folder output/<NAME> of the workdir, and the <out>/<NAME>.{log,json} names

    def __init__(self, args):
        self.args = args
        os.makedirs(args.out, exist_ok=True)
        self.scratch = os.path.join(args.workdir, "output", self.NAME)
        os.makedirs(os.path.join(self.scratch, "logs"), exist_ok=True)
        self.state_file = os.path.join(self.scratch, "state.json")
        self.state = {"steps": {}}
        if os.path.isfile(self.state_file):
            with open(self.state_file) as f:
                self.state = json.load(f)
        self.start = time.perf_counter()
        self.log = open(os.path.join(args.out, f"{self.NAME}.log"), "a")
        self.smoke_opts = ["MODEL.DEVICE", "cuda" if _cuda_available() else "cpu", *SMOKE_OPTS] if args.smoke else []
        self.env = dict(os.environ, KERN_DATASETS=os.path.join(args.workdir, "datasets"),
                        KERN_VG_NUM_VAL=str(args.num_val), KERN_VG_MISSING_IMAGES="skip",
                        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))

    def say(self, text: str):
        line = f"[{self.NAME} {time.perf_counter() - self.start:6.0f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run_part(self, parts: dict):
        """Run ``parts[args.part]`` (a list of methods) and, whatever happens, save the state with the part's wall
        time and say where the results are."""
        try:
            for step in parts[self.args.part]:
                step()
        finally:
            self.state["wall_s_part_" + self.args.part] = round(time.perf_counter() - self.start, 1)
            self.save()
            self.summary()
            self.say(f"part {self.args.part}: {time.perf_counter() - self.start:.0f} s; results in "
                     f"{self.args.out}/{self.NAME}.json")

    def summary(self):
        """Printed after a part, before its last line (nothing here; subclasses print their table)."""

    def save(self):
        self.state["device"] = _device_name()
        self.state["smoke"] = self.args.smoke
        for path in (self.state_file, os.path.join(self.args.out, f"{self.NAME}.json")):
            with open(path, "w") as f:
                json.dump(self.state, f, indent=1)

    def log_file(self, step: str) -> str:
        return os.path.join(self.scratch, "logs", f"{step}.log")

    def tool(self, step: str, tool: str, *args: str, timeout: float = None) -> str:
        """Run a project tool (in-process under ``--exec``, for its peak GPU memory) from the workdir; keep its
        output in the workdir's output/vg_scale/logs/<step>.log and its key lines in the run's log. Raises on
        failure."""
        command = [sys.executable, os.path.abspath(__file__), "--exec", os.path.join(ROOT, "tools", tool), *args]
        self.say(f"{step}: {tool} {' '.join(args)}")
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=self.args.workdir, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
            output, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc = "timeout"
        wall = time.perf_counter() - start
        with open(self.log_file(step), "w") as f:
            f.write(output)
        keep = (r"Overall training speed|Total inference|max_mem|WARNING|Error|error:|copypaste|VG_SCALE|Wrote|rows:"
                r"|boxes|relations:|predicates:|images,|Calibrated|R@")
        for line in output.splitlines():
            if re.search(keep, line) and "FutureWarning" not in line:
                self.log.write(f"  {line[:300]}\n")
        self.state["steps"][step] = {"command": f"{tool} {' '.join(args)}", "wall_s": round(wall, 1), "rc": rc}
        if rc != 0:
            self.log.write("".join(f"  | {line}\n" for line in output.splitlines()[-40:]))
            self.save()
            raise RuntimeError(f"{step} failed (rc {rc}); its log: {self.log_file(step)}")
        self.say(f"{step}: done in {wall:.0f} s")
        return output

    def s_per_iter(self, phase: str) -> float:
        """This run's measured s/iter of ``phase`` (also from part 1, in the same workdir), else a guess scaled by
        the measured PredCls step."""
        steps = self.state["steps"]
        if steps.get(phase, {}).get("s_per_iter"):
            return steps[phase]["s_per_iter"]
        if phase in ("sgcls", "sgdet") and steps.get("predcls", {}).get("s_per_iter"):
            return steps["predcls"]["s_per_iter"] * GUESS_S_PER_ITER[phase] / GUESS_S_PER_ITER["predcls"]
        return GUESS_S_PER_ITER[phase]

    def eval_s(self, name: str) -> float:
        """Estimated seconds of an evaluation (SGDet or the detector alone) on the test split."""
        measured = self.state["steps"].get(f"eval_{name}", {}).get("inference_s_per_image")
        return STARTUP_S + self.args.test_images * (measured or GUESS_EVAL_S_PER_IMAGE[name])

    def fit_iters(self, phase: str, wanted: int, reserve_s: float) -> int:
        """``wanted`` iterations, or fewer (at least MIN_ITERS) when the budget, less ``reserve_s`` for the steps
        after this one, does not hold them at the estimated s/iter."""
        budget = self.args.budget_s
        if budget is None:
            return wanted
        left = budget - (time.perf_counter() - self.start) - reserve_s - STARTUP_S
        iters = max(min(wanted, int(left / self.s_per_iter(phase))), min(MIN_ITERS, wanted))
        if iters < wanted:
            self.say(f"{phase}: {iters} iterations instead of {wanted} to fit the budget of {budget:.0f} s "
                     f"(~{self.s_per_iter(phase):.2f} s/iter, {reserve_s:.0f} s kept for the steps after it)")
            self.state.setdefault("iterations_cut_for_budget", {})[phase] = {"wanted": wanted, "ran": iters}
        return iters

    # ------------------------------------------------------------------------------------------ steps
    def data(self, train_images: int):
        a = self.args
        wanted = {"rows": a.rows, "train_images": train_images, "test_images": a.test_images}
        marker = os.path.join(a.workdir, "datasets", "vg", "standin.json")
        if os.path.isfile(marker):
            with open(marker) as f:
                there = json.load(f)
            same = there["rows"] == a.rows and there["test_images"] == a.test_images
            if same and there["train_images"] >= train_images:
                self.say("data: the stand-in is already there")
                self._read_dataset_summary()
                return
        shutil.rmtree(os.path.join(a.workdir, "datasets", "vg"), ignore_errors=True)
        self.tool("data", "make_vg_standin.py", "--output", "datasets/vg", "--rows", str(a.rows), "--train-images",
                  str(train_images), "--test-images", str(a.test_images),
                  "--summary-json", os.path.join(self.scratch, "standin_summary.json"))
        with open(marker, "w") as f:
            json.dump(wanted, f)
        self._read_dataset_summary()

    def _read_dataset_summary(self):
        path = os.path.join(self.scratch, "standin_summary.json")
        if os.path.isfile(path):
            with open(path) as f:
                self.state["dataset"] = json.load(f)
            self.save()

    def train(self, phase: str, iters: int, *extra: str, step: str = None):
        """Train ``phase`` with its config; ``step`` names a second run of it (own output folder and figures)."""
        a = self.args
        step = step or phase
        output_dir = os.path.join(a.workdir, OUTPUT_DIRS[phase] if step == phase else f"output/vg_{step}")
        shutil.rmtree(output_dir, ignore_errors=True)  # a fresh run: its metrics.json is this run's alone
        opts = ["SOLVER.MAX_ITER", str(iters), *extra, "OUTPUT_DIR", output_dir, *self.smoke_opts]
        output = self.tool(step, "train_net.py", "--config-file", os.path.join(ROOT, CONFIGS[phase]), *opts)
        batch = 2 if a.smoke else _config_value(CONFIGS[phase], "SOLVER.IMS_PER_BATCH")
        self.state["steps"][step].update(iters=iters, images_per_batch=batch,
                                         **training_figures(output, output_dir, batch))
        self.save()

    def loader_check(self, workers: int, iters: int = None):
        """PredCls once more (``iters``, default as many as the first PredCls run) with ``workers`` loader workers:
        the data-loader wait share side by side with the other PredCls runs (same data, machine and run). From
        the detector of this workdir, else from random init (the step's cost does not depend on its weights)."""
        iters = iters or self.state["steps"].get("predcls", {}).get("iters", MIN_ITERS)
        weights = [] if self.done("detector") else ["MODEL.WEIGHTS", "", "MODEL.UNTRAINED_DETECTOR", "calibrate"]
        self.train("predcls", iters, "DATASETS.TEST", "()", "DATASETS.SGG.VAL", "()", "TEST.EVAL_PERIOD", "0", *weights,
                   "DATALOADER.NUM_WORKERS", str(workers), step=f"predcls_workers{workers}")

    def loader_part(self):
        a = self.args
        self.data(a.train_images)
        if not os.path.isfile(os.path.join(a.workdir, PRIORS_FILE)):
            self.priors()
        for workers in (int(w) for w in a.loader_workers.split(",")):
            self.loader_check(workers, iters=a.kern_iters)

    def detector(self, iters: int):
        # The detector ends with a COCO evaluation on vg150_val when pycocotools is there (its AP), else none.
        # From random init with FrozenBN the config's learning rate can diverge (NaN losses): then once more with a
        # tenth of it, recorded as a deviation from the config.
        opts = ["MODEL.WEIGHTS", "", "MODEL.UNTRAINED_DETECTOR", "calibrate"]
        opts += [] if _has_pycocotools() else ["DATASETS.TEST", "()"]
        base_lr = self.args.detector_base_lr
        if base_lr is None and self.args.smoke:
            base_lr = 0.002  # the smoke run's few iterations ramp the warmup steeply
        if base_lr is not None:
            self.state["detector_base_lr_set"] = float(base_lr)
        for attempt in range(2):
            lr = ["SOLVER.BASE_LR", str(base_lr)] if base_lr else []
            try:
                return self.train("detector", iters, *opts, *lr)
            except RuntimeError:
                with open(self.log_file("detector")) as f:
                    diverged = "FloatingPointError" in f.read()
                if attempt or not diverged:
                    raise
                diverged_lr = base_lr or _config_value(CONFIGS["detector"], "SOLVER.BASE_LR")
                base_lr = diverged_lr / 10
                self.say(f"detector: diverged at SOLVER.BASE_LR {diverged_lr}; again with {base_lr}")
                self.state["detector_diverged_at_base_lr"] = diverged_lr

    def priors(self):
        self.tool("priors", "compute_priors.py", "--dataset", "vg150_train", "--released", "--output", PRIORS_FILE)

    def kern(self, mode: str, iters: int):
        # End-of-training evaluation on the small vg150_val, not the whole test split (the eval step does that).
        self.train(mode, iters, "DATASETS.TEST", "('vg150_val',)")
        metrics = os.path.join(self.args.workdir, OUTPUT_DIRS[mode], "inference", "vg150_val", "sgg_metrics.json")
        if os.path.isfile(metrics):
            with open(metrics) as f:
                self.state["steps"][mode]["val_sgg"] = {
                    k: v for k, v in json.load(f)["metrics"].items() if re.fullmatch(r"(ng-)?m?R@(50|100)", k)}
            self.save()

    def evaluate(self, name: str):
        """``--eval-only`` on vg150_test: SGDet (``name`` overlap / all_pairs) or the detector alone (detector)."""
        a = self.args
        output_dir = os.path.join(a.workdir, f"output/vg_eval_{name}")
        shutil.rmtree(output_dir, ignore_errors=True)
        phase = "detector" if name == "detector" else "sgdet"
        opts = ["MODEL.WEIGHTS", f"{OUTPUT_DIRS[phase]}/model_final.pth", "OUTPUT_DIR", output_dir]
        if phase == "detector":
            opts += ["DATASETS.TEST", "('vg150_test',)"]
        if name == "all_pairs":
            opts += ["MODEL.ROI_RELATION_HEAD.REQUIRE_OVERLAP", "False"]
        output = self.tool(f"eval_{name}", "train_net.py", "--config-file", os.path.join(ROOT, CONFIGS[phase]),
                           "--eval-only", *opts, *self.smoke_opts)
        metrics = os.path.join(output_dir, "inference", "vg150_test", "sgg_metrics.json")
        step = self.state["steps"][f"eval_{name}"]
        step.update(evaluation_figures(output, metrics))
        if "images" in step:
            step["wall_s_per_1000_images"] = round(1000 * step["wall_s"] / step["images"], 1)
        for path in glob.glob(os.path.join(output_dir, "inference", "vg150_test", "sgg_*")):
            shutil.copy(path, os.path.join(a.out, f"sgdet_{name}_{os.path.basename(path)}"))
        self.state["sgdet_throughput_vs_detector"] = throughput_ratios(self.state["steps"])
        self.save()

    # ------------------------------------------------------------------------------------------ parts
    def part1(self, redo: bool = False):
        a = self.args
        self.state["redone" if redo else "part1"] = True
        self.data(a.redo_train_images if redo else a.train_images)
        if redo:  # only what is missing
            if not self.done("detector"):
                self.detector(a.redo_detector_iters)
            if not os.path.isfile(os.path.join(a.workdir, PRIORS_FILE)):
                self.priors()
            for mode in ("predcls", "sgcls"):
                if not self.done(mode):
                    self.kern(mode, a.redo_predcls_iters)
            return
        later = {m: STARTUP_S + MIN_ITERS * self.s_per_iter(m) for m in ("predcls", "sgcls")}
        self.detector(self.fit_iters("detector", a.detector_iters, PRIORS_S + later["predcls"] + later["sgcls"]))
        self.priors()
        self.kern("predcls", self.fit_iters("predcls", a.kern_iters, later["sgcls"]))
        self.kern("sgcls", self.fit_iters("sgcls", a.kern_iters, 0))

    def done(self, phase: str) -> bool:
        return os.path.isfile(os.path.join(self.args.workdir, OUTPUT_DIRS[phase], "model_final.pth"))

    def part2(self):
        a = self.args
        iters = a.kern_iters
        if not (self.done("sgcls") and os.path.isfile(os.path.join(a.workdir, PRIORS_FILE))):
            self.say("part 2: part 1's results are not all here (a fresh machine?): redoing what is missing, small")
            self.part1(redo=True)
            iters = a.redo_kern_iters
        evaluations = ("all_pairs", "detector", "overlap")
        loader_check_s = self.state["steps"].get("predcls", {}).get("wall_s", STARTUP_S)  # PredCls, once more
        self.kern("sgdet", self.fit_iters("sgdet", iters, sum(map(self.eval_s, evaluations)) + loader_check_s))
        # Over the test split, the costliest first: SGDet with all pairs, the detector alone on the same images
        # (side by side, for the throughput ratio); PredCls with 8 loader workers; SGDet with overlapping pairs
        # (the default).
        self.evaluate("all_pairs")
        self.evaluate("detector")
        self.loader_check(workers=8)
        self.evaluate("overlap")


def _config_value(config: str, key: str):
    """The value of ``key`` (dotted) in a project config file."""
    from detectron2.config import get_cfg

    sys.path.insert(0, ROOT)
    from kern_d2.config import add_kern_config

    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_pycocotools() -> bool:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        return False
    return True


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if _cuda_available() else "cpu"


def main(argv=None):
    args = parse_args(argv)
    if args.exec:
        return exec_tool(args.exec)
    run = VGScaleRun(args)
    run.say(f"part {args.part}{' (smoke)' if args.smoke else ''}: workdir {args.workdir}, out {args.out}")
    run.run_part({"1": [run.part1], "2": [run.part2], "all": [run.part1, run.part2], "loader": [run.loader_part]})


if __name__ == "__main__":
    main()
