"""SceneGraphEvaluator: gt from a registered dataset, outputs as the model returns them, files written, and
results equal to compute_sgg_metrics, whether images are split across processes or not."""
import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.structures import Boxes, BoxMode, Instances
from matplotlib.image import imread

from kern_d2.config import add_kern_config
from kern_d2.engine import close_process_group
from kern_d2.evaluation import (
    SceneGraphEvaluator,
    compute_sgg_metrics,
    gt_from_dataset_dict,
    merge_image_hits,
    mode_from_cfg,
)

THING_CLASSES = ["person", "horse", "hat", "grass"]
PREDICATE_CLASSES = ["__no_relation__", "on", "has", "riding", "near"]


class RelationField:
    """A relation array that fits in Instances (len = number of boxes), as a model may store it."""

    def __init__(self, tensor, num_boxes):
        self.tensor, self.num_boxes = tensor, num_boxes

    def __len__(self):
        return self.num_boxes


def make_dataset(seed, num_images=6):
    """Dataset dicts with relations (one image without any, one with XYWH boxes) and matching fake outputs."""
    rng = np.random.default_rng(seed)
    dicts, outputs = [], []
    for index in range(num_images):
        num_boxes = int(rng.integers(2, 6))
        xy = rng.integers(0, 60, (num_boxes, 2)).astype(float)
        boxes = np.concatenate([xy, xy + rng.integers(5, 40, (num_boxes, 2))], axis=1)
        labels = rng.integers(0, len(THING_CLASSES), num_boxes)
        num_rel = 0 if index == 1 else int(rng.integers(1, 5))
        relations = np.stack([rng.integers(0, num_boxes, num_rel), rng.integers(0, num_boxes, num_rel),
                              rng.integers(1, len(PREDICATE_CLASSES), num_rel)], axis=1).reshape(-1, 3)
        xywh = index == 2
        annotations = [{"bbox": (b if not xywh else [b[0], b[1], b[2] - b[0], b[3] - b[1]]),
                        "bbox_mode": BoxMode.XYWH_ABS if xywh else BoxMode.XYXY_ABS, "category_id": int(c)}
                       for b, c in zip(boxes.tolist(), labels)]
        dicts.append({"file_name": f"img{index}.jpg", "image_id": 100 + index, "height": 100, "width": 100,
                      "annotations": annotations, "relations": relations})

        # Detections: the gt boxes slightly moved (a quarter far off) plus one extra box, in shuffled order.
        moved = boxes + rng.choice([0.0, 1.0], boxes.shape) + 30.0 * (rng.random((num_boxes, 1)) < 0.25)
        det = np.concatenate([moved, [[0, 0, 99, 99]]])
        order = rng.permutation(det.shape[0])
        det_labels = np.concatenate([labels, [0]])[order]
        det_labels[rng.random(det_labels.shape[0]) < 0.2] = 3
        pairs = np.array([(i, j) for i in range(det.shape[0]) for j in range(det.shape[0]) if i != j])
        rel_scores = (rng.integers(0, 5, (pairs.shape[0], len(PREDICATE_CLASSES))) / 4).astype(np.float32)
        position = np.argsort(order)  # where gt box i went among the detections
        for s, o, p in relations[rng.random(num_rel) < 0.6]:  # some signal, so that some triplets are hit
            if s != o:
                rel_scores[(pairs[:, 0] == position[s]) & (pairs[:, 1] == position[o]), p] = 1.5
        instances = Instances((100, 100))
        instances.pred_boxes = Boxes(torch.tensor(det[order], dtype=torch.float32))
        instances.pred_classes = torch.tensor(det_labels)
        instances.scores = torch.tensor(rng.integers(1, 5, det.shape[0]) / 4, dtype=torch.float32)
        output = {"instances": instances}
        if index % 2:  # relation fields next to the instances
            output["rel_pair_idxs"], output["rel_scores"] = torch.tensor(pairs), torch.tensor(rel_scores)
        else:
            instances.rel_pair_idxs = RelationField(torch.tensor(pairs), det.shape[0])
            instances.rel_scores = RelationField(torch.tensor(rel_scores), det.shape[0])
        outputs.append(output)
    return dicts, outputs


def register(dicts, name=None):
    name = name or f"sgg_eval_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=THING_CLASSES, predicate_classes=PREDICATE_CLASSES,
                                  evaluator_type="sgg")
    return name


def as_metric_inputs(dicts, outputs):
    """The same data in compute_sgg_metrics' format."""
    gts = [gt_from_dataset_dict(d) for d in dicts]
    preds = []
    for output in outputs:
        inst = output["instances"]
        fields = {k: output[k] if k in output else inst.get(k).tensor for k in ("rel_pair_idxs", "rel_scores")}
        preds.append({"boxes": inst.pred_boxes.tensor.numpy(), "labels": inst.pred_classes.numpy(),
                      "scores": inst.scores.numpy(), "rel_pairs": fields["rel_pair_idxs"].numpy(),
                      "rel_scores": fields["rel_scores"].numpy()})
    return gts, preds


def run(evaluator, dicts, outputs, indices):
    evaluator.reset()
    for i in indices:
        evaluator.process([{"image_id": dicts[i]["image_id"]}], [outputs[i]])


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_evaluator_equals_compute_sgg_metrics_and_writes_files(mode, tmp_path):
    dicts, outputs = make_dataset(seed=0)
    if mode == "predcls":  # PredCls outputs carry the gt boxes, index-aligned
        generator = torch.Generator().manual_seed(0)  # the scores must not depend on which tests ran before
        for d, output in zip(dicts, outputs):
            output["instances"] = Instances((100, 100))
            output["instances"].pred_boxes = Boxes(torch.tensor(gt_from_dataset_dict(d)["boxes"]))
            num = len(d["annotations"])
            pairs = torch.tensor([(i, j) for i in range(num) for j in range(num) if i != j])
            output["rel_pair_idxs"] = pairs
            output["rel_scores"] = torch.rand(len(pairs), len(PREDICATE_CLASSES), generator=generator)
    name = register(dicts)
    evaluator = SceneGraphEvaluator(name, mode, output_dir=str(tmp_path), ks=(2, 5, 10),
                                    zero_shot_triplets={(0, 1, 1), (1, 2, 3)}, distributed=False)
    run(evaluator, dicts, outputs, range(len(dicts)))
    results = evaluator.evaluate()["sgg"]

    gts, preds = as_metric_inputs(dicts, outputs) if mode == "sgdet" else (
        [gt_from_dataset_dict(d) for d in dicts],
        [{"rel_pairs": o["rel_pair_idxs"].numpy(), "rel_scores": o["rel_scores"].numpy()} for o in outputs])
    expected = compute_sgg_metrics(gts, preds, mode, ks=(2, 5, 10), zero_shot_triplets={(0, 1, 1), (1, 2, 3)})
    assert list(results) == [k for k in expected if k != "per_predicate"]
    for key, value in results.items():
        assert value == pytest.approx(100 * expected[key], nan_ok=True), key
    assert 0 < results["R@10"] <= 100

    saved = json.loads((tmp_path / "sgg_metrics.json").read_text())
    assert saved["mode"] == mode and saved["unit"] == "percent" and saved["num_images"] == len(dicts)
    assert saved["num_images_with_relations"] == len(dicts) - 1
    assert saved["metrics"]["mR@5"] == pytest.approx(results["mR@5"])
    rows = {row["name"]: row for row in saved["per_predicate"]}
    for predicate, recall in expected["per_predicate"]["ng-R@5"].items():
        assert rows[PREDICATE_CLASSES[predicate]]["ng-R@5"] == pytest.approx(100 * recall)
    counts = [row["gt_count"] for row in saved["per_predicate"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == saved["num_gt_triplets"]
    image = imread(str(tmp_path / "sgg_per_predicate.png"))
    assert image.ndim == 3 and image.shape[0] > 100


def test_gt_boxes_from_xywh_annotations():
    dicts, _ = make_dataset(seed=0)
    gt = gt_from_dataset_dict(dicts[2])
    xywh = np.array([a["bbox"] for a in dicts[2]["annotations"]])
    np.testing.assert_allclose(gt["boxes"], np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    with pytest.raises(KeyError, match="image 100.*'relations'"):
        gt_from_dataset_dict({k: v for k, v in dicts[0].items() if k != "relations"}, "toy")


def test_records_split_across_processes_combine_to_the_single_process_result():
    dicts, outputs = make_dataset(seed=1, num_images=9)
    name = register(dicts)
    make = lambda: SceneGraphEvaluator(name, "sgdet", ks=(3, 7), distributed=False)  # noqa: E731
    single = make()
    run(single, dicts, outputs, range(9))
    expected = single.evaluate()
    first, second = make(), make()
    run(first, dicts, outputs, [7, 0, 2, 4, 8])
    run(second, dicts, outputs, [5, 1, 3, 6, 6])  # an image evaluated twice (padding) counts once
    for parts in ([first._accumulator.records, second._accumulator.records],
                  [second._accumulator.records, first._accumulator.records]):
        merged = merge_image_hits(parts)
        assert [r.key for r in merged] == list(range(9))
        combined = single._accumulator.summarize(merged)
        assert {k: 100 * v for k, v in combined.items() if k != "per_predicate"} == dict(expected["sgg"])


def _distributed_worker(name, dicts, outputs, result_file):
    from detectron2.utils import comm

    register(dicts, name)  # spawned processes start with an empty catalog
    evaluator = SceneGraphEvaluator(name, "sgdet", ks=(3, 7))
    run(evaluator, dicts, outputs, range(comm.get_rank(), len(dicts), comm.get_world_size()))
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(result_file, "w") as f:
            json.dump(results["sgg"], f)
    else:
        assert results == {}
    close_process_group()


def test_distributed_gloo_two_processes_equal_single_process(tmp_path):
    dicts, outputs = make_dataset(seed=2, num_images=7)
    name = register(dicts)
    single = SceneGraphEvaluator(name, "sgdet", ks=(3, 7), distributed=False)
    run(single, dicts, outputs, range(7))
    expected = single.evaluate()["sgg"]
    launch(_distributed_worker, 2, dist_url="auto", args=(name, dicts, outputs, str(tmp_path / "r.json")))
    assert json.loads((tmp_path / "r.json").read_text()) == dict(expected)


def test_from_cfg_mode_and_zero_shot_triplets_from_the_training_set():
    test_dicts, outputs = make_dataset(seed=3)
    train_dicts, _ = make_dataset(seed=4, num_images=3)
    train_name, test_name = register(train_dicts), register(test_dicts)
    cfg = add_kern_config(get_cfg())
    cfg.MODEL.ROI_RELATION_HEAD.USE_GT_BOX = False
    cfg.MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL = False
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.TEST.SGG.KS = (4, 8)
    evaluator = SceneGraphEvaluator.from_cfg(cfg, test_name, distributed=False)
    assert evaluator.mode == "sgdet"

    def triplets(dicts):
        out = set()
        for d in dicts:
            labels = [a["category_id"] for a in d["annotations"]]
            out |= {(labels[s], labels[o], p) for s, o, p in d["relations"].tolist()}
        return out

    unseen = triplets(test_dicts) - triplets(train_dicts)
    assert unseen and unseen != triplets(test_dicts)
    assert {tuple(t) for t in evaluator._accumulator.zero_shot_triplets.tolist()} == unseen
    run(evaluator, test_dicts, outputs, range(len(test_dicts)))
    results = evaluator.evaluate()["sgg"]
    expected = compute_sgg_metrics(*as_metric_inputs(test_dicts, outputs), "sgdet", ks=(4, 8),
                                   zero_shot_triplets=unseen)
    assert results["zR@8"] == pytest.approx(100 * expected["zR@8"], nan_ok=True)
    assert results["ng-zR@4"] == pytest.approx(100 * expected["ng-zR@4"], nan_ok=True)

    cfg.DATASETS.TRAIN = ("not_registered_anywhere",)
    assert "zR@4" not in SceneGraphEvaluator.from_cfg(cfg, test_name, distributed=False).evaluate().get("sgg", {})


def test_from_cfg_without_the_train_files_reports_no_zero_shot_recall(tmp_path):
    """--eval-only with DATASETS.TRAIN left at a registered dataset whose files are absent (the config's default,
    say toy_train): no zR@K, instead of a FileNotFoundError after the whole inference."""
    from kern_d2.data import register_toy

    test_dicts, outputs = make_dataset(seed=3)
    test_name, prefix = register(test_dicts), f"absent_{uuid.uuid4().hex[:6]}"
    register_toy(str(tmp_path / "absent"), prefix=prefix)
    cfg = add_kern_config(get_cfg())
    cfg.MODEL.ROI_RELATION_HEAD.USE_GT_BOX = False  # sgdet: the fake outputs' boxes are not the gt boxes
    cfg.MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL = False
    cfg.DATASETS.TRAIN = (f"{prefix}_train",)
    evaluator = SceneGraphEvaluator.from_cfg(cfg, test_name, distributed=False)
    try:
        run(evaluator, test_dicts, outputs, range(len(test_dicts)))
        results = evaluator.evaluate()["sgg"]
    finally:
        for split in ("train", "val", "test"):
            DatasetCatalog.remove(f"{prefix}_{split}")
            MetadataCatalog.remove(f"{prefix}_{split}")
    assert "R@20" in results and not any(key.startswith(("zR", "ng-zR")) for key in results)


def test_mode_from_cfg():
    cfg = add_kern_config(get_cfg())
    rel = cfg.MODEL.ROI_RELATION_HEAD
    for gt_box, gt_label, mode in [(True, True, "predcls"), (True, False, "sgcls"), (False, False, "sgdet")]:
        rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL = gt_box, gt_label
        assert mode_from_cfg(cfg) == mode
    rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL = False, True
    with pytest.raises(ValueError, match="USE_GT_OBJECT_LABEL"):
        mode_from_cfg(cfg)


def test_unknown_image_and_empty_evaluation():
    dicts, outputs = make_dataset(seed=5, num_images=2)
    evaluator = SceneGraphEvaluator(register(dicts), "sgdet", distributed=False)
    with pytest.raises(KeyError, match="image_id 7"):
        evaluator.process([{"image_id": 7}], [outputs[0]])
    assert evaluator.evaluate() == {}
    with pytest.raises(KeyError, match="image 101.*rel_pair_idxs"):  # relation fields left out
        evaluator.process([{"image_id": 101}], [{"instances": outputs[1]["instances"]}])
