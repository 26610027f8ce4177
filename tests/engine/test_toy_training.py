"""Short training runs on a generated toy dataset, with the frozen (untrained) toy detector.

PredCls KERN must learn: its relation loss falls and its R@50 on held-out images clearly beats FREQ (the
predicate prior of the class pair alone), which the toy predicates are built to defeat (geometry decides them as
much as the classes). SGCls and SGDet train a few iterations and produce scene graphs the metrics accept.
"""
from typing import List

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from kern_d2.data.generators.toy import generate_toy_dataset
from kern_d2.evaluation.sgg_evaluator import gt_from_dataset_dict, prediction_from_output
from kern_d2.evaluation.sgg_metrics import compute_sgg_metrics

from tests.helpers.toy_models import map_dicts, register_toy_with_priors, toy_kern_cfg

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NUM_TRAIN, NUM_TEST = 120, 40
BATCH_SIZE = 8
PREDCLS_ITERS, LEARNING_RATE = 200, 2e-3


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_training")
    generate_toy_dataset(str(root), num_train=NUM_TRAIN, num_test=NUM_TEST, num_val=0, seed=3)
    return register_toy_with_priors(str(root), str(root / "priors.npz"))


def train(model, cfg, dicts: List[dict], iters: int, seed: int = 0) -> List[dict]:
    """Adam on the trainable parameters, random batches of BATCH_SIZE images mapped once (random flips and
    duplicate-predicate draws of the mapper seeded too); the losses of every iteration."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    inputs = map_dicts(cfg, dicts, is_train=True)
    rng = np.random.RandomState(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    model.train()
    history = []
    for _ in range(iters):
        losses = model([inputs[i] for i in rng.choice(len(inputs), BATCH_SIZE, replace=False)])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


def evaluate(model, cfg, dicts, mode: str) -> dict:
    inputs = map_dicts(cfg, dicts, is_train=False)
    model.eval()
    with torch.no_grad():
        outputs = [o for start in range(0, len(inputs), BATCH_SIZE) for o in model(inputs[start : start + BATCH_SIZE])]
    predictions = [prediction_from_output(o, d["image_id"]) for o, d in zip(outputs, dicts)]
    return compute_sgg_metrics([gt_from_dataset_dict(d) for d in dicts], predictions, mode)


def test_predcls_kern_learns_and_beats_the_frequency_baseline(toy):
    torch.manual_seed(0)
    cfg = toy_kern_cfg(toy, "predcls", "kern")
    model = build_model(cfg)
    history = train(model, cfg, toy.train, PREDCLS_ITERS)
    loss = [h["loss_relation"] for h in history]
    first, last = np.mean(loss[:10]), np.mean(loss[-10:])
    kern = evaluate(model, cfg, toy.test, "predcls")

    freq_cfg = toy_kern_cfg(toy, "predcls", "freq")
    freq = evaluate(build_model(freq_cfg), freq_cfg, toy.test, "predcls")
    print(f"\nPredCls toy training: loss_relation {first:.3f} (first 10 its) -> {last:.3f} (last 10); "
          f"R@50 on {NUM_TEST} held-out images: KERN {kern['R@50']:.3f}, FREQ {freq['R@50']:.3f}; "
          f"mR@50 KERN {kern['mR@50']:.3f}, FREQ {freq['mR@50']:.3f}")
    assert last < 0.3 * first
    assert kern["R@50"] >= freq["R@50"] + 0.2
    assert kern["mR@50"] > freq["mR@50"]


@pytest.mark.parametrize("mode", ["sgcls", "sgdet"])
def test_sgcls_and_sgdet_train_and_produce_relations(toy, mode):
    torch.manual_seed(0)
    cfg = toy_kern_cfg(toy, mode, "kern", **{"MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS": 16})
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.roi_heads.relation_head.state_dict().items()}
    history = train(model, cfg, toy.train, 5)
    assert all(np.isfinite(v) for h in history for v in h.values())
    assert set(history[0]) == {"loss_relation", "loss_object"}
    after = model.roi_heads.relation_head.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)

    test = toy.test[:8]
    metrics = evaluate(model, cfg, test, mode)
    assert all(0.0 <= metrics[f"{name}@{k}"] <= 1.0 for name in ("R", "ng-R") for k in (20, 50, 100))
    model.eval()
    with torch.no_grad():
        outputs = model(map_dicts(cfg, test, is_train=False))
    assert all(len(o["instances"].rel_pair_idxs) > 0 for o in outputs)
