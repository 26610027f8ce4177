"""tools/predict.py with the KERN models trained on the toy dataset (SGDet on a folder of images, PredCls with
--boxes-json), SceneGraphPredictor against it and the README's Python snippet, and tools/visualize_data.py on the
toy train split; subprocesses, CPU."""
import json
import os
import shutil
import uuid

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from kern_d2 import add_kern_config
from kern_d2.data import register_toy
from kern_d2.data.datasets.vg import SPLITS
from kern_d2.engine import SceneGraphPredictor
from kern_d2.utils.image_io import collect_image_files, read_image

from tests.helpers.tool_modules import load_tool
from tests.helpers.toy_tools import MODE_CONFIGS, MODE_OPTS, NUM_TEST

pytestmark = pytest.mark.slow  # every test runs the tools in subprocesses (the session fixture toy_tools)

TOP_K = 20  # predict.py's default --top-k


@pytest.fixture(scope="module")
def toy_splits(toy_tools):
    """{split: (dataset dicts, thing_classes, predicate_classes), "prefix": the name prefix} of the session's toy
    dataset, registered in this process as ``<prefix>_train`` etc."""
    prefix = f"predict_e2e_{uuid.uuid4().hex[:8]}"
    register_toy(toy_tools.toy_root, prefix=prefix)
    splits = {"prefix": prefix}
    for split in SPLITS:
        dicts = DatasetCatalog.get(f"{prefix}_{split}")
        meta = MetadataCatalog.get(f"{prefix}_{split}")
        splits[split] = (dicts, list(meta.thing_classes), list(meta.predicate_classes))
    yield splits
    for split in SPLITS:
        DatasetCatalog.remove(f"{prefix}_{split}")
        MetadataCatalog.remove(f"{prefix}_{split}")


def _predict(toy_tools, mode, inputs, *args, opts=()):
    """predict.py with the model trained in ``mode``; returns (output folder, summary)."""
    output = os.path.join(toy_tools.scratch(f"predict_{mode}"), "out")
    weights = os.path.join(toy_tools.trained(mode), "model_final.pth")
    toy_tools.run("predict.py", "--config-file", MODE_CONFIGS[mode], "--input", *inputs, "--output", output,
                  "--num-workers", "0", *args, "--opts", *toy_tools.kern_opts(), *MODE_OPTS[mode],
                  "MODEL.WEIGHTS", weights, *opts)
    with open(os.path.join(output, "summary.json")) as f:
        return output, json.load(f)


def _check_picture(path):
    picture = cv2.imread(path)
    assert picture is not None, path
    assert picture.ndim == 3 and picture.shape[0] >= 400 and picture.shape[1] >= 400
    assert picture.std() > 10  # not a blank canvas


def _check_record(record, image, thing_classes, predicate_classes, mode):
    """The JSON of one image against its dataset dict and the class lists (schema in tools/predict.py)."""
    assert record["mode"] == mode and os.path.basename(record["file"]) == os.path.basename(image["file_name"])
    width, height = record["width"], record["height"]
    assert (width, height) == (image["width"], image["height"])
    boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    assert n >= 2 and len(record["labels"]) == len(record["label_ids"]) == len(record["scores"]) == n
    assert (boxes[:, :2] >= -0.01).all() and (boxes[:, 2] <= width + 0.01).all() and (boxes[:, 3] <= height + 0.01).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    assert record["labels"] == [thing_classes[i] for i in record["label_ids"]]
    assert all(0.0 <= s <= 1.0 for s in record["scores"])

    triplets = record["triplets"]
    assert 0 < len(triplets) <= min(TOP_K, record["num_candidate_pairs"]) and record["num_candidate_pairs"] <= n * (n - 1)
    assert [t["score"] for t in triplets] == sorted((t["score"] for t in triplets), reverse=True)
    assert len({(t["subject"], t["object"]) for t in triplets}) == len(triplets)  # one predicate per pair
    for t in triplets:
        s, o = t["subject"], t["object"]
        assert s != o and 0 <= s < n and 0 <= o < n
        assert (t["subject_label"], t["object_label"]) == (record["labels"][s], record["labels"][o])
        assert 1 <= t["predicate_id"] < len(predicate_classes) and t["predicate"] == predicate_classes[t["predicate_id"]]
        expected = t["predicate_score"] * record["scores"][s] * record["scores"][o]
        assert t["score"] == pytest.approx(expected, rel=1e-4, abs=2e-6)
    return boxes


def test_predict_sgdet_on_a_folder_of_test_images(toy_tools, toy_splits):
    test_dicts, thing_classes, predicate_classes = toy_splits["test"]
    folder = toy_tools.scratch("images")
    for image in test_dicts:
        shutil.copy(image["file_name"], folder)
    output, summary = _predict(toy_tools, "sgdet", [folder], opts=[
        "MODEL.ROI_RELATION_HEAD.USE_GT_BOX", "False", "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "False"])

    assert summary["mode"] == "sgdet" and summary["failed"] == [] and len(summary["processed"]) == NUM_TEST
    by_name = {os.path.basename(d["file_name"]): d for d in test_dicts}
    for entry in summary["processed"]:
        with open(entry["json"]) as f:
            record = json.load(f)
        boxes = _check_record(record, by_name[os.path.basename(entry["file"])], thing_classes, predicate_classes,
                              "sgdet")
        assert len(boxes) <= 16  # MODEL.ROI_RELATION_HEAD.MAX_DETECTIONS
        assert entry["num_triplets"] == len(record["triplets"]) and entry["num_boxes"] == len(boxes)
        _check_picture(entry["png"])
        assert os.path.dirname(entry["png"]) == output


def test_predict_predcls_with_given_boxes_and_labels(toy_tools, toy_splits):
    test_dicts, thing_classes, predicate_classes = toy_splits["test"]
    given = {}
    for image in test_dicts:
        anns = image["annotations"]
        given[os.path.basename(image["file_name"])] = {
            "boxes": [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
            "labels": [thing_classes[a["category_id"]] for a in anns],
        }
    boxes_json = os.path.join(toy_tools.scratch("boxes"), "boxes.json")
    with open(boxes_json, "w") as f:
        json.dump(given, f)
    _, summary = _predict(toy_tools, "predcls", [d["file_name"] for d in test_dicts], "--boxes-json", boxes_json)

    assert summary["mode"] == "predcls" and summary["failed"] == [] and len(summary["processed"]) == NUM_TEST
    for entry, image in zip(summary["processed"], test_dicts):
        with open(entry["json"]) as f:
            record = json.load(f)
        spec = given[os.path.basename(image["file_name"])]
        boxes = _check_record(record, image, thing_classes, predicate_classes, "predcls")
        np.testing.assert_allclose(boxes, spec["boxes"], atol=0.02)  # the given boxes, at the image's size
        assert record["labels"] == spec["labels"] and record["scores"] == [1.0] * len(boxes)
        n = len(boxes)
        assert record["num_candidate_pairs"] == n * (n - 1) and len(record["triplets"]) == min(TOP_K, n * (n - 1))
        _check_picture(entry["png"])


def test_predict_on_a_registered_dataset_uses_its_gt_boxes(toy_tools, toy_splits):
    # In this process (the dataset is registered here under a private name), as tools/run_demo.py runs it.
    predict = load_tool("predict")
    test_dicts, thing_classes, predicate_classes = toy_splits["test"]
    output = os.path.join(toy_tools.scratch("predict_dataset"), "out")
    weights = os.path.join(toy_tools.trained("predcls"), "model_final.pth")
    args = ["--config-file", MODE_CONFIGS["predcls"], "--dataset", f"{toy_splits['prefix']}_test", "--num-images", "2",
            "--output", output, "--num-workers", "0", "--opts", *toy_tools.kern_opts(), "MODEL.WEIGHTS", weights]
    assert predict.main(args) == 0
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    assert [entry["file"] for entry in summary["processed"]] == [d["file_name"] for d in test_dicts[:2]]
    for entry, image in zip(summary["processed"], test_dicts):
        with open(entry["json"]) as f:
            record = json.load(f)
        boxes = _check_record(record, image, thing_classes, predicate_classes, "predcls")
        gt = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in image["annotations"]]
        np.testing.assert_allclose(boxes, gt, atol=0.02)
        assert record["label_ids"] == [a["category_id"] for a in image["annotations"]]
    assert predict.main(args[:2] + ["--dataset", "no_such_dataset_e2e"] + args[4:]) == 2


def test_visualize_data_draws_the_ground_truth(toy_tools, toy_splits):
    output = os.path.join(toy_tools.scratch("visualize"), "out")
    toy_tools.run("visualize_data.py", "--dataset", "toy_train", "--output", output, "--num-images", "3")
    train_dicts = toy_splits["train"][0]
    expected = sorted(f"{d['image_id']}.png" for d in train_dicts[:3])
    assert sorted(os.listdir(output)) == expected
    for name in expected:
        _check_picture(os.path.join(output, name))


SGDET_OPTS = ["MODEL.ROI_RELATION_HEAD.USE_GT_BOX", "False", "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "False"]


def test_predictor_gives_the_cli_json_and_batches_equal_single_images(toy_tools, toy_splits, monkeypatch):
    folder = toy_tools.scratch("images_api")
    for image in toy_splits["test"][0]:
        shutil.copy(image["file_name"], folder)
    # The tool's process computes with this process's thread count (other counts round sums differently).
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    _, summary = _predict(toy_tools, "sgdet", [folder], "--no-pictures", "--top-k", "0", opts=SGDET_OPTS)
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(MODE_CONFIGS["sgdet"])
    weights = os.path.join(toy_tools.trained("sgdet"), "model_final.pth")
    cfg.merge_from_list(toy_tools.kern_opts() + MODE_OPTS["sgdet"] + ["MODEL.WEIGHTS", weights] + SGDET_OPTS)
    predictor = SceneGraphPredictor(cfg, top_k=0, batch_size=4)  # the CLI's default batches, in its order
    files, _ = collect_image_files([folder])
    graphs = predictor(files)
    assert [entry["file"] for entry in summary["processed"]] == files
    for graph, entry in zip(graphs, summary["processed"]):
        with open(entry["json"]) as f:
            assert graph.to_dict() == json.load(f)
    assert sum(len(g.triplets) for g in graphs) > 0

    # Images of one size (a batch pads to its largest image, which moves the detector's output): a batch of 4
    # gives the one-by-one results up to float rounding.
    arrays = [np.ascontiguousarray(read_image(path).rgb[:150, :150, ::-1]) for path in files[:4]]
    batch = predictor(arrays)
    for array, graph in zip(arrays, batch):
        single = predictor(array)
        assert graph.labels == single.labels and graph.num_candidate_pairs == single.num_candidate_pairs
        np.testing.assert_allclose(graph.boxes, single.boxes, atol=1e-3)
        np.testing.assert_allclose(graph.scores, single.scores, rtol=1e-4)
        by_pair = {(t.subject, t.object): t for t in single.triplets}
        assert set(by_pair) == {(t.subject, t.object) for t in graph.triplets}
        for t in graph.triplets:
            assert t.predicate == by_pair[t.subject, t.object].predicate
            assert t.score == pytest.approx(by_pair[t.subject, t.object].score, rel=1e-4)


