"""The toy work folder of the end-to-end tests of tools/ (the session fixture ``toy_tools`` of tests/conftest.py).

Everything runs the real tools as subprocesses of this Python, with ``KERN_DATASETS`` pointing at a toy dataset
written by ``tools/make_toy_dataset.py``: a toy detector trained for a few iterations, the knowledge priors
from ``tools/compute_priors.py``, and KERN trained briefly in each mode. Sizes are tiny (128 px images, 2 images
per batch, no loader workers) so that the whole set of end-to-end tests takes a few minutes on 2 CPU cores.
"""
import json
import os
import subprocess
import sys
import uuid
from typing import Dict, List

import pytest

from tests.helpers import REPO_ROOT

NUM_TRAIN, NUM_VAL, NUM_TEST = 16, 4, 6
DETECTOR_ITERS = 10
KERN_ITERS = 4  # PredCls: checkpoints every 2 iterations and evaluates every 2 (best-model keeping)

# Command-line overrides that make every run small.
SMALL_RUN = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
]
MODE_CONFIGS = {mode: os.path.join(REPO_ROOT, "configs", "toy", f"kern_{mode}.yaml")
                for mode in ("predcls", "sgcls", "sgdet")}
MODE_OPTS = {
    "predcls": ["SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2"],
    "sgcls": [],
    "sgdet": ["MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS", "16"],  # 240 pairs per image instead of 4,032
}


class ToyTools:
    """Runs the tools on the toy dataset in ``work`` (datasets in ``work/datasets/toy``)."""

    def __init__(self, work: str):
        self.work = work
        self.datasets = os.path.join(work, "datasets")
        self.toy_root = os.path.join(self.datasets, "toy")
        self.detector = os.path.join(work, "detector", "model_final.pth")
        self.priors = os.path.join(work, "priors.npz")
        self._runs: Dict[str, str] = {}
        self._evaluations: Dict[tuple, str] = {}

    def scratch(self, name: str) -> str:
        """A new empty folder in ``work`` (name made unique)."""
        path = os.path.join(self.work, f"{name}_{uuid.uuid4().hex[:6]}")
        os.makedirs(path)
        return path

    def run(self, tool: str, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        """``python tools/<tool> args`` in ``work``; with ``check`` a non-zero exit fails with the output's tail."""
        python_path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, KERN_DATASETS=self.datasets, PYTHONPATH=python_path)
        proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", tool), *args], cwd=self.work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"{tool} {' '.join(args)} exited with {proc.returncode}:\n{proc.stdout[-5000:]}")
        return proc

    def kern_opts(self) -> List[str]:
        """Overrides of every KERN run: small sizes, the session's detector and priors."""
        return SMALL_RUN + ["MODEL.WEIGHTS", self.detector, "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", self.priors]

    def train_net(self, config: str, output_dir: str, *opts: str, args=(), check: bool = True):
        """tools/train_net.py on ``config`` into ``output_dir``; ``args`` go before the config overrides."""
        return self.run("train_net.py", *args, "--config-file", config, "OUTPUT_DIR", output_dir,
                        *self.kern_opts(), *opts, check=check)

    def trained(self, mode: str) -> str:
        """OUTPUT_DIR of KERN trained for KERN_ITERS iterations in ``mode`` (trained once per session)."""
        if mode not in self._runs:
            output_dir = os.path.join(self.work, f"kern_{mode}")
            self.train_net(MODE_CONFIGS[mode], output_dir, "SOLVER.MAX_ITER", str(KERN_ITERS), *MODE_OPTS[mode])
            self._runs[mode] = output_dir
        return self._runs[mode]

    def evaluated(self, mode: str, processes: int = 1) -> str:
        """OUTPUT_DIR of ``--eval-only`` of ``trained(mode)``'s model_final.pth in ``processes`` CPU processes."""
        key = (mode, processes)
        if key not in self._evaluations:
            output_dir = os.path.join(self.work, f"eval_{mode}_{processes}proc")
            weights = os.path.join(self.trained(mode), "model_final.pth")
            self.train_net(MODE_CONFIGS[mode], output_dir, *MODE_OPTS[mode], "MODEL.WEIGHTS", weights,
                           args=["--eval-only", *distributed_args(processes)])
            self._evaluations[key] = output_dir
        return self._evaluations[key]


def distributed_args(processes: int) -> List[str]:
    """train_net.py arguments for ``processes`` processes on this machine (gloo on CPU), on a free port."""
    return [] if processes == 1 else ["--num-gpus", str(processes), "--dist-url", "auto"]


def prepare_toy_tools(tools: ToyTools) -> ToyTools:
    """Make the toy dataset, train the toy detector and compute the priors in ``tools.work``."""
    tools.run("make_toy_dataset.py", "--output", tools.toy_root, "--num-train", str(NUM_TRAIN),
              "--num-val", str(NUM_VAL), "--num-test", str(NUM_TEST))
    tools.run("train_net.py", "--config-file", os.path.join(REPO_ROOT, "configs", "toy", "toy_detector.yaml"),
              "OUTPUT_DIR", os.path.dirname(tools.detector), "SOLVER.MAX_ITER", str(DETECTOR_ITERS),
              "DATASETS.TEST", "()", *SMALL_RUN)
    tools.run("compute_priors.py", "--dataset", "toy_train", "--output", tools.priors)
    return tools


def read_json_lines(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_sgg_metrics(output_dir: str, dataset: str = "toy_test") -> dict:
    with open(os.path.join(output_dir, "inference", dataset, "sgg_metrics.json")) as f:
        return json.load(f)
