"""tools/train_net.py end to end on the toy dataset (subprocesses, CPU): each mode, --eval-only, --resume,
best-model keeping, the FREQ baseline, and 2-process (gloo) training and evaluation."""
import math
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kern_d2.engine import best_metric_key

from tests.helpers import REPO_ROOT
from tests.helpers.toy_tools import (
    KERN_ITERS,
    MODE_CONFIGS,
    MODE_OPTS,
    NUM_TEST,
    NUM_VAL,
    distributed_args,
    read_json_lines,
    read_sgg_metrics,
)


HEADLINE_METRICS = [f"{name}@{k}" for name in ("R", "mR", "ng-R", "ng-mR", "zR", "ng-zR") for k in (20, 50, 100)]


def _load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _training_lines(output_dir):
    return [line for line in read_json_lines(os.path.join(output_dir, "metrics.json")) if "total_loss" in line]


def _read(path):
    with open(path) as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_training_writes_the_final_model_and_the_scene_graph_metrics(toy_tools, mode):
    output_dir = toy_tools.trained(mode)
    checkpoint = _load_checkpoint(os.path.join(output_dir, "model_final.pth"))
    assert checkpoint["iteration"] == KERN_ITERS - 1
    # The priors travel inside the checkpoint.
    with np.load(toy_tools.priors) as priors:
        for name in ("obj_cooccurrence", "rel_prior"):
            np.testing.assert_allclose(checkpoint["model"][f"roi_heads.priors.{name}"].numpy(), priors[name])

    report = read_sgg_metrics(output_dir)
    assert (report["dataset"], report["mode"], report["num_images"]) == ("toy_test", mode, NUM_TEST)
    assert set(HEADLINE_METRICS) <= set(report["metrics"])
    assert all(0.0 <= v <= 100.0 for v in report["metrics"].values())
    assert os.path.isfile(os.path.join(output_dir, "inference", "toy_test", "sgg_per_predicate.png"))

    last = _training_lines(output_dir)[-1]
    assert last["iteration"] == KERN_ITERS - 1 and math.isfinite(last["total_loss"]) and last["total_loss"] > 0
    # One loss in PredCls (relations); SGCls and SGDet also learn the object labels.
    assert ("loss_object" in last) == (mode != "predcls")


@pytest.mark.slow
def test_eval_only_from_the_checkpoint_reproduces_the_end_of_training_metrics(toy_tools):
    # PredCls: the only mode whose recalls are not all zero after a few iterations on top of a detector trained
    # for a few iterations (SGDet and SGCls need object labels the toy models do not get right yet).
    trained = read_sgg_metrics(toy_tools.trained("predcls"))
    evaluated = read_sgg_metrics(toy_tools.evaluated("predcls"))
    assert trained["metrics"]["ng-R@100"] > 0
    assert evaluated["metrics"] == trained["metrics"]
    assert evaluated["per_predicate"] == trained["per_predicate"]


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(toy_tools):
    output_dir = os.path.join(toy_tools.scratch("resume"), "run")
    shutil.copytree(toy_tools.trained("predcls"), output_dir)  # keeps file times
    assert _read(os.path.join(output_dir, "last_checkpoint")) == "model_final.pth"
    periodic = {name: os.stat(os.path.join(output_dir, name)).st_mtime_ns
                for name in ("model_0000001.pth", "model_0000003.pth")}
    log_before = _read(os.path.join(output_dir, "log.txt"))
    lines_before = len(read_json_lines(os.path.join(output_dir, "metrics.json")))

    toy_tools.train_net(MODE_CONFIGS["predcls"], output_dir, *MODE_OPTS["predcls"], "SOLVER.MAX_ITER", "6",
                        args=["--resume"])

    log = _read(os.path.join(output_dir, "log.txt"))[len(log_before):]
    assert f"Loading from {output_dir}/model_final.pth" in log
    assert re.search(r"Starting training from iteration 4\b", log)
    new_lines = read_json_lines(os.path.join(output_dir, "metrics.json"))[lines_before:]
    assert [line["iteration"] for line in new_lines if "total_loss" in line] == [5]
    assert min(line["iteration"] for line in new_lines) >= 4
    assert _load_checkpoint(os.path.join(output_dir, "model_final.pth"))["iteration"] == 5
    # Iterations 0-3 were not run again: their periodic checkpoints are untouched; iteration 5 wrote its own.
    assert {name: os.stat(os.path.join(output_dir, name)).st_mtime_ns for name in periodic} == periodic
    assert os.path.isfile(os.path.join(output_dir, "model_0000005.pth"))


@pytest.mark.slow
def test_best_checkpoint_is_kept_by_the_evaluators_mr100(toy_tools):
    # The PredCls run evaluates after iterations 1 (EVAL_PERIOD 2) and 3 (the end of training).
    output_dir = toy_tools.trained("predcls")
    log = _read(os.path.join(output_dir, "log.txt"))
    assert "does not seem to be computed" not in log
    evaluations = [line for line in read_json_lines(os.path.join(output_dir, "metrics.json"))
                   if "sgg/mR@100" in line]
    assert [line["iteration"] for line in evaluations] == [1, KERN_ITERS]
    first = evaluations[0]
    assert f"Saved first model at {first['sgg/mR@100']:0.5f} @ 1 steps" in log
    best = _load_checkpoint(os.path.join(output_dir, "model_best.pth"))
    later = evaluations[1]["sgg/mR@100"]
    assert best["iteration"] == (KERN_ITERS if later > first["sgg/mR@100"] else 1)
    # --resume continues from the training's own checkpoint, not from the best model.
    assert _read(os.path.join(output_dir, "last_checkpoint")) == "model_final.pth"


def test_best_metric_key_follows_the_evaluator_results():
    def cfg(metric, tests=("toy_test",), ks=(20, 50, 100), val=()):
        return SimpleNamespace(TEST=SimpleNamespace(SGG=SimpleNamespace(BEST_METRIC=metric, KS=ks)),
                               DATASETS=SimpleNamespace(TEST=tests, SGG=SimpleNamespace(VAL=val)))

    assert best_metric_key(cfg("mR@100")) == "sgg/mR@100"
    assert best_metric_key(cfg("ng-R@50", tests=("a", "b"))) == "a/sgg/ng-R@50"
    # Training evaluates DATASETS.SGG.VAL when it is set: its results are the ones in storage.
    assert best_metric_key(cfg("R@50", tests=("a", "b"), val=("v",))) == "sgg/R@50"
    assert best_metric_key(cfg("R@50", tests=("a",), val=("v", "w"))) == "v/sgg/R@50"
    with pytest.raises(ValueError, match="DATASETS.SGG.VAL and DATASETS.TEST are empty"):
        best_metric_key(cfg("R@50", tests=()))
    for metric, ks in [("mR@100", (20, 50)), ("mR", (20,)), ("mR@x", (20,))]:
        with pytest.raises(ValueError, match="TEST.SGG.BEST_METRIC"):
            best_metric_key(cfg(metric, ks=ks))


@pytest.mark.slow
def test_training_evaluates_the_val_split_and_eval_only_the_test_split(toy_tools):
    # DATASETS.SGG.VAL: the evaluations during training (iteration 1 by EVAL_PERIOD 2, and the end) and the best
    # model are the val split's; --eval-only of the same config reports DATASETS.TEST.
    scratch = toy_tools.scratch("val")
    train_dir, eval_dir = os.path.join(scratch, "train"), os.path.join(scratch, "eval")
    val = ["DATASETS.SGG.VAL", "('toy_val',)"]
    toy_tools.train_net(MODE_CONFIGS["predcls"], train_dir, *MODE_OPTS["predcls"], "SOLVER.MAX_ITER", "3", *val)
    assert os.listdir(os.path.join(train_dir, "inference")) == ["toy_val"]
    assert read_sgg_metrics(train_dir, "toy_val")["num_images"] == NUM_VAL
    evaluations = [line for line in read_json_lines(os.path.join(train_dir, "metrics.json")) if "sgg/mR@100" in line]
    assert [line["iteration"] for line in evaluations] == [1, 3]
    assert os.path.isfile(os.path.join(train_dir, "model_best.pth"))

    toy_tools.train_net(MODE_CONFIGS["predcls"], eval_dir, *MODE_OPTS["predcls"], *val, "MODEL.WEIGHTS",
                        os.path.join(train_dir, "model_final.pth"), args=["--eval-only"])
    assert os.listdir(os.path.join(eval_dir, "inference")) == ["toy_test"]
    assert read_sgg_metrics(eval_dir)["num_images"] == NUM_TEST


@pytest.mark.slow
def test_freq_training_is_refused_and_its_evaluation_works(toy_tools):
    freq = os.path.join(REPO_ROOT, "configs", "toy", "freq_predcls.yaml")
    scratch = toy_tools.scratch("freq")
    refused = toy_tools.train_net(freq, os.path.join(scratch, "train"), "SOLVER.MAX_ITER", "2", check=False)
    assert refused.returncode != 0
    assert "FREQ" in refused.stdout and "--eval-only" in refused.stdout and "Traceback" not in refused.stdout
    assert not os.path.exists(os.path.join(scratch, "train"))

    toy_tools.train_net(freq, os.path.join(scratch, "eval"), args=["--eval-only"])
    report = read_sgg_metrics(os.path.join(scratch, "eval"))
    assert (report["mode"], report["num_images"]) == ("predcls", NUM_TEST)
    assert set(HEADLINE_METRICS) <= set(report["metrics"])


@pytest.mark.slow
def test_two_cpu_processes_train_and_the_loss_falls(toy_tools):
    output_dir = toy_tools.scratch("ddp")
    toy_tools.train_net(MODE_CONFIGS["predcls"], output_dir, "SOLVER.MAX_ITER", "40", args=distributed_args(2))
    assert "World size: 2" in _read(os.path.join(output_dir, "log.txt"))
    assert "Starting training from iteration 0" in _read(os.path.join(output_dir, "log.txt.rank1"))
    # Logged every 20 iterations: total_loss is the median over each window of 20.
    lines = _training_lines(output_dir)
    assert [line["iteration"] for line in lines] == [19, 39]
    assert lines[1]["total_loss"] < 0.9 * lines[0]["total_loss"]
    assert read_sgg_metrics(output_dir)["num_images"] == NUM_TEST


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(toy_tools):
    one = read_sgg_metrics(toy_tools.evaluated("predcls", processes=1))
    two_dir = toy_tools.evaluated("predcls", processes=2)
    assert "World size: 2" in _read(os.path.join(two_dir, "log.txt"))
    two = read_sgg_metrics(two_dir)
    assert two["num_images"] == NUM_TEST and one["metrics"]["ng-R@100"] > 0
    assert two == one
