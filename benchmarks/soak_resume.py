#!/usr/bin/env python
"""Soak test of resumption (not part of CI): toy KERN PredCls training killed with SIGKILL at random moments and
resumed with ``--resume`` until it reaches SOLVER.MAX_ITER; then checks that nothing was lost.

Each run starts ``tools/train_net.py --resume`` (the first one finds no checkpoint and starts at iteration 0) and is
killed after a random delay, or (every third kill, from the second) right when it logs that a checkpoint save
starts, to hit the window around saving. A last run goes to the end. Checks:

- every resumed run starts at the iteration after the checkpoint that ``last_checkpoint`` named when the previous
  run died, and the last run writes model_final.pth for iteration MAX_ITER-1 with the scheduler at MAX_ITER steps;
- every checkpoint loads with ``torch.load(weights_only=True)`` and holds finite weights; no partial file is left;
- metrics.json: every iteration Detectron2 writes (each 20th and the last) is there, the only repeats are the
  iterations redone after a kill, every loss is finite and every learning rate follows the schedule;
- the data-loader workers of a killed run exit on their own.

    python benchmarks/soak_resume.py                                        # 3000 iterations, 20 kills
    python benchmarks/soak_resume.py --iters 200 --kills 3 --checkpoint-period 30   # a few minutes on CPU

The toy dataset, a toy detector (a few iterations) and the priors are made in ``--work`` by the tools themselves.
Exit status 0 when every check holds.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_LR, GAMMA, WRITE_PERIOD = 0.01, 0.1, 20  # lr set on the command line; Detectron2's defaults
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATASETS.TEST", "()"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "output", "soak_resume"), help="working folder")
    parser.add_argument("--iters", type=int, default=3000, help="SOLVER.MAX_ITER")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs before the run that finishes")
    parser.add_argument("--checkpoint-period", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="DATALOADER.NUM_WORKERS")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--fresh", action="store_true", help="start the training from scratch (keeps the data)")
    return parser.parse_args(argv)


class Soak:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.datasets = os.path.join(self.work, "datasets")
        self.detector = os.path.join(self.work, "detector", "model_final.pth")
        self.priors = os.path.join(self.work, "priors.npz")
        self.output = os.path.join(self.work, "kern_predcls")
        self.env = dict(os.environ, KERN_DATASETS=self.datasets)
        self.lr_step = max(1, int(args.iters * 0.8))
        self.rng = random.Random(args.seed)

    # ------------------------------------------------------------------------------------------- preparation
    def tool(self, *args, log_name):
        with open(os.path.join(self.work, log_name), "w") as log:
            code = subprocess.run([sys.executable, *args], cwd=self.work, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        if code != 0:
            sys.exit(f"{' '.join(args)} failed (exit {code}); see {os.path.join(self.work, log_name)}")

    def prepare(self):
        os.makedirs(self.work, exist_ok=True)
        if not os.path.isfile(os.path.join(self.datasets, "toy", "VG-SGG.h5")):
            self.tool(os.path.join(ROOT, "tools", "make_toy_dataset.py"), "--output",
                      os.path.join(self.datasets, "toy"), "--num-train", "24", "--num-val", "4", "--num-test", "4",
                      log_name="make_toy_dataset.log")
        if not os.path.isfile(self.detector):
            self.tool(os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
                      os.path.join(ROOT, "configs", "toy", "toy_detector.yaml"), "OUTPUT_DIR",
                      os.path.dirname(self.detector), "SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "1",
                      "DATALOADER.NUM_WORKERS", "0", *SMALL, log_name="detector.log")
        if not os.path.isfile(self.priors):
            self.tool(os.path.join(ROOT, "tools", "compute_priors.py"), "--dataset", "toy_train", "--output",
                      self.priors, log_name="priors.log")
        if self.args.fresh and os.path.isdir(self.output):
            shutil.rmtree(self.output)

    # ------------------------------------------------------------------------------------------- runs
    def command(self):
        a = self.args
        return [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--resume", "--config-file",
                os.path.join(ROOT, "configs", "toy", "kern_predcls.yaml"), "OUTPUT_DIR", self.output,
                "MODEL.WEIGHTS", self.detector, "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", self.priors, *SMALL,
                "SOLVER.MAX_ITER", str(a.iters), "SOLVER.CHECKPOINT_PERIOD", str(a.checkpoint_period),
                "SOLVER.STEPS", f"({self.lr_step},)", "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.WARMUP_ITERS", "0",
                "DATALOADER.NUM_WORKERS", str(a.workers), "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", "16"]

    def last_checkpoint(self):
        """(file name, iteration) that last_checkpoint names, or (None, -1)."""
        path = os.path.join(self.output, "last_checkpoint")
        if not os.path.isfile(path):
            return None, -1
        name = open(path).read().strip()
        return name, torch.load(os.path.join(self.output, name), map_location="cpu", weights_only=True)["iteration"]

    @staticmethod
    def children(pid):
        """pids whose parent is ``pid`` (the data-loader workers), from /proc."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            found.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return found

    def run_once(self, index, kills_left):
        """One run, killed unless ``kills_left`` is 0: every third kill (from the second) when the run logs that a
        checkpoint save starts, the others after a random delay that leaves on average an equal share of the
        remaining iterations to each of the ``kills_left`` kills and the final run. Returns the run's record."""
        log_path = os.path.join(self.work, f"run_{index:02d}.log")
        start = time.time()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.command(), cwd=self.work, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)
        record = {"run": index, "log": log_path}
        started = self.wait_for(proc, log_path, r"Starting training from iteration (\d+)")
        record["start_iter"] = int(started.group(1)) if started else None
        if kills_left and started and proc.poll() is None:
            at_save = index % 3 == 1
            if at_save:
                saves = len(re.findall("Saving checkpoint to", open(log_path).read()))
                self.wait_for(proc, log_path, "Saving checkpoint to", count=saves + 1)
            else:
                # Detectron2 logs the iteration and the seconds per iteration every 20 iterations.
                progress = self.wait_for(proc, log_path, r"\biter: (\d+)\s.*?\btime: ([\d.]+)")
                if progress:
                    left = self.args.iters - int(progress.group(1)) - 1
                    time.sleep(self.rng.uniform(0, 2 * float(progress.group(2)) * left / (kills_left + 1)))
            workers = self.children(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                record.update(killed="at a checkpoint save" if at_save else "after a random delay",
                              workers=len(workers))
            proc.wait()
            record["orphans_left"] = self.wait_gone(workers)
        else:
            proc.wait()
        record["exit"] = proc.returncode
        record["seconds"] = round(time.time() - start, 1)
        iters = [int(m) for m in re.findall(r"\biter: (\d+)", open(log_path).read())]
        record["reached_iter"] = max(iters) if iters else None
        record["last_checkpoint"], record["checkpoint_iter"] = self.last_checkpoint()
        return record

    @staticmethod
    def wait_for(proc, log_path, pattern, count=1, timeout=1800):
        """The ``count``-th match of ``pattern`` in the run's log, once it appears (None if the run ends first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            matches = list(re.finditer(pattern, open(log_path).read()))
            if len(matches) >= count:
                return matches[count - 1]
            if proc.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    @staticmethod
    def wait_gone(pids, timeout=20.0):
        deadline = time.time() + timeout
        alive = list(pids)
        while alive and time.time() < deadline:
            alive = [p for p in alive if os.path.exists(f"/proc/{p}") and "Z" not in Soak.state(p)]
            time.sleep(0.1)
        return len(alive)

    @staticmethod
    def state(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "gone"

    def soak(self):
        runs = []
        for index in range(self.args.kills):
            runs.append(self.run_once(index, kills_left=self.args.kills - index))
            print(json.dumps(runs[-1]), flush=True)
            if runs[-1]["exit"] == 0:  # finished before the kill
                break
        if not runs or runs[-1]["exit"] != 0:
            runs.append(self.run_once(len(runs), kills_left=0))
            print(json.dumps(runs[-1]), flush=True)
        return runs

    # ------------------------------------------------------------------------------------------- checks
    def expected_lr(self, iteration):
        return BASE_LR * (GAMMA if iteration >= self.lr_step else 1.0)

    def check(self, runs):
        iters, problems = self.args.iters, []
        if runs[-1]["exit"] != 0:
            problems.append(f"the last run exited with {runs[-1]['exit']}")
        previous_checkpoint = -1
        for record in runs:
            if record["start_iter"] is not None and record["start_iter"] != previous_checkpoint + 1:
                problems.append(f"run {record['run']} started at {record['start_iter']}, expected "
                                f"{previous_checkpoint + 1}")
            if record.get("orphans_left"):
                problems.append(f"run {record['run']}: {record['orphans_left']} data-loader workers outlived it")
            previous_checkpoint = record["checkpoint_iter"]
        name, iteration = self.last_checkpoint()
        if (name, iteration) != ("model_final.pth", iters - 1):
            problems.append(f"last_checkpoint names {name} (iteration {iteration}), expected model_final.pth")
        checkpoints = sorted(n for n in os.listdir(self.output) if n.endswith(".pth"))
        for n in checkpoints:
            data = torch.load(os.path.join(self.output, n), map_location="cpu", weights_only=True)
            if not all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point()):
                problems.append(f"{n} holds non-finite weights")
            if n == "model_final.pth" and data["trainer"]["hooks"]["LRScheduler"]["last_epoch"] != iters:
                problems.append(f"model_final.pth: scheduler at {data['trainer']['hooks']['LRScheduler']} steps")
        partial = [n for n in os.listdir(self.output) if n.startswith(".tmp_")]
        if partial:
            problems.append(f"partial files left: {partial}")

        with open(os.path.join(self.output, "metrics.json")) as f:
            lines = [json.loads(line) for line in f if '"total_loss"' in line]
        seen = [line["iteration"] for line in lines]
        expected = {i for i in range(iters) if (i + 1) % WRITE_PERIOD == 0} | {iters - 1}
        if set(seen) != expected:
            problems.append(f"metrics.json misses iterations {sorted(expected - set(seen))[:10]} or has extra "
                            f"{sorted(set(seen) - expected)[:10]}")
        rewinds = [(a, b) for a, b in zip(seen, seen[1:]) if b <= a]
        if len(rewinds) > len(runs) - 1:
            problems.append(f"{len(rewinds)} rewinds of the iteration in metrics.json for {len(runs) - 1} resumes")
        bad_lr = [line["iteration"] for line in lines
                  if not math.isclose(line["lr"], self.expected_lr(line["iteration"]))]
        if bad_lr:
            problems.append(f"learning rate off the schedule at iterations {bad_lr[:10]}")
        if not all(math.isfinite(line["total_loss"]) for line in lines):
            problems.append("a non-finite loss in metrics.json")
        summary = {
            "iters": iters, "kills": sum(1 for r in runs if r.get("killed")),
            "kills_at_save": sum(1 for r in runs if r.get("killed") == "at a checkpoint save"),
            "runs": len(runs), "checkpoints": checkpoints,
            "metrics_lines": len(lines), "repeated_metric_lines": len(seen) - len(set(seen)),
            "metrics_rewinds": len(rewinds),
            "partial_files_removed": sum(open(r["log"]).read().count("a partial checkpoint left by an interrupted run")
                                         for r in runs),
            "wall_seconds": round(sum(r["seconds"] for r in runs), 1),
            "problems": problems,
        }
        return summary


def main(argv=None):
    soak = Soak(parse_args(argv))
    soak.prepare()
    runs = soak.soak()
    summary = soak.check(runs)
    with open(os.path.join(soak.work, "soak_report.json"), "w") as f:
        json.dump({"runs": runs, "summary": summary}, f, indent=1)
    print(json.dumps(summary, indent=1))
    print("OK: nothing lost" if not summary["problems"] else "FAILED")
    return 0 if not summary["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
