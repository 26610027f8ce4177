import copy
import json
import os
import re

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from kern_d2.data import DatasetFormatError, load_sgg_json, register_sgg_json

DATA = {
    "categories": ["person", "hat", "cup"],
    "predicates": ["wears", "holding"],
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48,
         "objects": [{"bbox": [1, 2, 30, 40], "category": "person"}, {"bbox": [5, 0, 20, 8], "category": "hat"},
                     {"bbox": [30, 20, 70, 30], "category": "cup"}],
         "relations": [{"subject": 0, "object": 1, "predicate": "wears"},
                       {"subject": 0, "object": 2, "predicate": "holding"}]},
        {"id": 11, "file_name": "sub/b.jpg", "width": 32, "height": 32,
         "objects": [{"bbox": [0, 0, 10, 10], "category": "cup"}]},
    ],
}


def write(tmp_path, data, images=True):
    path = os.path.join(tmp_path, "train.json")
    with open(path, "w") as f:
        json.dump(data, f)
    if images:
        for im in data["images"]:
            file_name = os.path.join(tmp_path, "images", im["file_name"])
            os.makedirs(os.path.dirname(file_name), exist_ok=True)
            cv2.imwrite(file_name, np.zeros((im["height"], im["width"], 3), np.uint8))
    return path, os.path.join(tmp_path, "images")


def test_round_trip(tmp_path):
    json_file, root = write(tmp_path, DATA)
    dicts = load_sgg_json(json_file, root)
    assert [d["image_id"] for d in dicts] == [10, 11]
    first = dicts[0]
    assert first["file_name"] == os.path.join(root, "a.jpg") and (first["width"], first["height"]) == (64, 48)
    # the cup's box is clipped to the 64 px wide image
    assert [a["bbox"] for a in first["annotations"]] == [[1, 2, 30, 40], [5, 0, 20, 8], [30, 20, 64, 30]]
    assert [a["category_id"] for a in first["annotations"]] == [0, 1, 2]
    assert first["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS
    np.testing.assert_array_equal(first["relations"], [[0, 1, 1], [0, 2, 2]])
    assert dicts[1]["relations"].shape == (0, 3) and dicts[1]["file_name"] == os.path.join(root, "sub/b.jpg")
    assert [d["image_id"] for d in load_sgg_json(json_file, root, filter_empty_rels=True)] == [10]


def test_degenerate_box_dropped_with_its_relations(tmp_path):
    data = copy.deepcopy(DATA)
    data["images"][0]["objects"][1]["bbox"] = [5, 3, 5, 8]  # zero width
    json_file, root = write(tmp_path, data)
    first = load_sgg_json(json_file, root)[0]
    assert [a["category_id"] for a in first["annotations"]] == [0, 2]
    np.testing.assert_array_equal(first["relations"], [[0, 1, 2]])


def test_register_metadata(tmp_path):
    json_file, root = write(tmp_path, DATA)
    register_sgg_json("test_sgg_json_reg", json_file, root, filter_empty_rels=True)
    try:
        meta = MetadataCatalog.get("test_sgg_json_reg")
        assert meta.thing_classes == ["person", "hat", "cup"]
        assert meta.predicate_classes == ["__no_relation__", "wears", "holding"]
        assert meta.evaluator_type == "sgg" and meta.sgg_json_file == json_file
        assert meta.get("json_file") is None  # Detectron2's COCOEvaluator would read it as a COCO file
        assert len(DatasetCatalog.get("test_sgg_json_reg")) == 1
    finally:
        DatasetCatalog.remove("test_sgg_json_reg")
        MetadataCatalog.remove("test_sgg_json_reg")


def edited(edit):
    data = copy.deepcopy(DATA)
    edit(data)
    return data


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("predicates"), r"missing top-level keys \['predicates'\]"),
        (lambda d: d["categories"].append("person"), r"'categories' has duplicate names"),
        (lambda d: d["predicates"].append("__no_relation__"), r"'predicates' must not list '__no_relation__'"),
        (lambda d: d["images"][1].pop("width"), r"image #1: every image needs keys"),
        (lambda d: d["images"][0]["objects"][2].update(category="dog"), r"image 10: unknown category 'dog'"),
        (lambda d: d["images"][0]["relations"][1].update(predicate="eats"),
         r"image 10: relation 1 has unknown predicate 'eats'"),
        (lambda d: d["images"][0]["relations"][0].update(object=3),
         r"image 10: relation 0 points at objects \[0, 3\] outside its 3 objects"),
        (lambda d: d["images"][0]["objects"][1].update(bbox=[5, 10, 20, 8]),
         r"image 10: object 1 bbox .* x2 < x1 or y2 < y1"),
        (lambda d: d["images"][0]["objects"][1].update(bbox=[5, 10, 20]),
         r"image 10: object 1: 'bbox' must be 4 finite numbers \[x1, y1, x2, y2\]"),
        (lambda d: d["images"][0]["objects"][0].update(bbox=[1, 2, "x", 4]),
         r"image 10: object 0: 'bbox' must be 4 finite numbers"),
        (lambda d: d["images"][1].update(id=10), r"image ids must be unique"),
        (lambda d: d["images"][1].update(height=0), r"image 11: width and height must be positive"),
    ],
)
def test_bad_input_names_file_and_problem(tmp_path, edit, message):
    json_file, root = write(tmp_path, edited(edit), images=False)
    with pytest.raises(DatasetFormatError, match=re.escape(json_file) + ": " + message):
        load_sgg_json(json_file, root, missing_images="ignore")


def test_missing_json_and_missing_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="SGG json not found: .*nope.json"):
        load_sgg_json(os.path.join(tmp_path, "nope.json"), str(tmp_path))
    json_file, root = write(tmp_path, DATA)
    os.remove(os.path.join(root, "sub", "b.jpg"))
    with pytest.raises(FileNotFoundError, match=r"train\.json: 1 of 2 image files are missing: .*sub/b\.jpg"):
        load_sgg_json(json_file, root)
    assert [d["image_id"] for d in load_sgg_json(json_file, root, missing_images="skip")] == [10]
