"""The toy-sized trainer and evaluator on the toy dataset written in the Open Images and GQA-200 layouts (CPU).

The registered loaders feed ``SGGTrainer`` unchanged; on the Open Images dataset the evaluator adds the Open Images
metrics (its metadata's ``evaluator_type`` is ``sgg_oi``), on GQA-200 it reports the recall metrics only.
"""
import json
import os
import uuid

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.data import register_gqa_sgg, register_oi_sgg
from kern_d2.data.testing import toy_in_layout
from kern_d2.engine import SGGTrainer
from kern_d2.modeling.priors import compute_priors, save_priors

from tests.helpers.toy_models import toy_kern_cfg

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NUM_TRAIN, NUM_VAL, NUM_TEST = 20, 4, 6


def _register(root: str, layout: str):
    """Register the three splits of the toy dataset written in ``layout`` under a fresh prefix; write its priors."""
    toy_in_layout(root, layout, num_train=NUM_TRAIN, num_test=NUM_TEST, num_val=NUM_VAL, seed=1)
    prefix = f"{layout}_toy_{uuid.uuid4().hex[:6]}"
    for split in ("train", "val", "test"):
        if layout == "oi":
            register_oi_sgg(f"{prefix}_{split}", root, split)
        else:
            register_gqa_sgg(f"{prefix}_{split}", root, split, num_val_images=NUM_VAL)
    meta = MetadataCatalog.get(f"{prefix}_train")
    priors_file = os.path.join(root, "priors.npz")
    train = DatasetCatalog.get(f"{prefix}_train")
    cooccurrence, rel_prior = compute_priors(train, len(meta.thing_classes), len(meta.predicate_classes))
    save_priors(priors_file, cooccurrence, rel_prior, meta.thing_classes, meta.predicate_classes)
    return prefix, priors_file


@pytest.mark.parametrize("layout", ["oi", "gqa"])
def test_trainer_and_evaluator_run_on_each_layout(tmp_path, layout):
    prefix, priors_file = _register(str(tmp_path / layout), layout)
    assert len(DatasetCatalog.get(f"{prefix}_val")) == NUM_VAL
    toy = type("Toy", (), {"prefix": prefix, "priors_file": priors_file})
    output_dir = str(tmp_path / "output")
    cfg = toy_kern_cfg(toy, "predcls", "kern", **{
        "DATASETS.TEST": (f"{prefix}_val",), "SOLVER.MAX_ITER": 3, "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.WARMUP_ITERS": 1, "DATALOADER.NUM_WORKERS": 0, "OUTPUT_DIR": output_dir,
        "MODEL.UNTRAINED_DETECTOR": "allow"})  # a random toy detector: the layouts are under test, not the model
    trainer = SGGTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = SGGTrainer.test(cfg, trainer.model)["sgg"]

    assert all(0.0 <= results[f"R@{k}"] <= 100.0 for k in (20, 50, 100))
    oi_metrics = {"oi-R@50", "wmAP_rel", "wmAP_phr", "score_wtd"}
    with open(os.path.join(output_dir, "inference", f"{prefix}_val", "sgg_metrics.json")) as f:
        report = json.load(f)
    assert report["num_images"] == NUM_VAL
    if layout == "oi":
        assert oi_metrics <= set(results) and report["evaluator_type"] == "sgg_oi"
        assert results["score_wtd"] == pytest.approx(
            0.2 * results["oi-R@50"] + 0.4 * results["wmAP_rel"] + 0.4 * results["wmAP_phr"])
    else:
        assert not oi_metrics & set(results) and report["evaluator_type"] == "sgg"
    assert os.path.isfile(os.path.join(output_dir, "model_final.pth"))
