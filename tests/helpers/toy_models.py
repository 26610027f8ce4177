"""KERN models on the toy dataset, for the tests of the model and of training: registration of the toy dataset with
its priors, the toy configs at 128 px, model building, a training and an inference step, gt-like detections.

The module-scoped fixture ``toy`` (tests/modeling/conftest.py) is the toy dataset registered with priors and a small
batch; ``single_torch_thread`` (tests/conftest.py) is the thread setting of the modules that run these models."""
import os
import uuid
from types import SimpleNamespace

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from kern_d2.config import add_kern_config
from kern_d2.data import SGGDatasetMapper, register_toy
from kern_d2.modeling.priors import compute_predicate_counts, compute_priors, save_priors

from tests.helpers import REPO_ROOT

MODES = ("predcls", "sgcls", "sgdet")
SMALL_INPUT = {"INPUT.MIN_SIZE_TRAIN": (128,), "INPUT.MAX_SIZE_TRAIN": 192,
               "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 192}


def register_toy_with_priors(root: str, priors_file: str) -> SimpleNamespace:
    """Register the toy dataset in ``root`` under a fresh prefix and write its priors (from the train split) to
    ``priors_file``. Returns prefix, priors_file, train and test dicts, class names."""
    prefix = f"kern_test_{uuid.uuid4().hex[:8]}"
    register_toy(root, prefix=prefix)
    train, test = DatasetCatalog.get(f"{prefix}_train"), DatasetCatalog.get(f"{prefix}_test")
    meta = MetadataCatalog.get(f"{prefix}_train")
    things, predicates = list(meta.thing_classes), list(meta.predicate_classes)
    cooccurrence, rel_prior = compute_priors(train, len(things), len(predicates))
    counts = compute_predicate_counts(train, len(things), len(predicates))
    save_priors(priors_file, cooccurrence, rel_prior, things, predicates, counts)
    return SimpleNamespace(prefix=prefix, priors_file=priors_file, train=train, test=test,
                           thing_classes=things, predicate_classes=predicates)


def toy_kern_cfg(toy: SimpleNamespace, mode: str = "predcls", head: str = "kern", **overrides):
    """configs/toy/<head>_<mode>.yaml on the registered toy dataset, no detector weights, 128 px inputs;
    ``overrides``: {"A.B": value} (the priors file too, as MODEL.ROI_RELATION_HEAD.PRIORS_FILE)."""
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "toy", f"{head}_{mode}.yaml"))
    options = {"DATASETS.TRAIN": (f"{toy.prefix}_train",), "DATASETS.TEST": (f"{toy.prefix}_test",),
               "MODEL.WEIGHTS": "", "MODEL.ROI_RELATION_HEAD.PRIORS_FILE": toy.priors_file, **SMALL_INPUT}
    options.update(overrides)
    for key, value in options.items():
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg


def map_dicts(cfg, dicts, is_train: bool):
    mapper = SGGDatasetMapper(cfg, is_train=is_train)
    return [mapper(d) for d in dicts]


def build(toy, mode="predcls", head="kern", seed=0, **overrides):
    """(cfg, model); seeds torch (weights, pair sampling) and numpy (the train mapper's flips)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = toy_kern_cfg(toy, mode, head, **overrides)
    return cfg, build_model(cfg)


def train_losses(model, inputs):
    model.train()
    return model(inputs)


def infer(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs)


def gt_like_detections(inputs) -> list:
    """Per training input, detections that are the gt boxes shifted by one pixel plus a far-off box of class 0."""
    fake = []
    for x in inputs:
        gt = x["instances"]
        detections = Instances(gt.image_size)
        far_off = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        detections.pred_boxes = Boxes(torch.cat([gt.gt_boxes.tensor + 1.0, far_off]))
        detections.pred_classes = torch.cat([gt.gt_classes, torch.tensor([0])])
        detections.scores = torch.ones(len(gt) + 1)
        fake.append(detections)
    return fake


def toy_detector_cfg(toy):
    """configs/toy/Base-Toy-Detector.yaml on the registered toy dataset."""
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "toy", "Base-Toy-Detector.yaml"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (f"{toy.prefix}_train",), (f"{toy.prefix}_test",)
    return cfg
