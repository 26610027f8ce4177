"""Open Images and GQA-200 loaders: round trips of files written from the documented layouts (boxes in pixels,
labels, relations, splits), the builtin names, and bad input named by file and record."""
import json
import os

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.data import DatasetFormatError, load_gqa_sgg, load_oi_sgg, read_gqa_classes, read_oi_classes
from kern_d2.data.datasets.gqa import gqa_files
from kern_d2.data.testing import oi_image_stem, random_scene_graph_dicts, write_gqa_layout, write_oi_layout
from kern_d2.data.datasets.oi import oi_files

from tests.helpers import REPO_ROOT

THINGS = [f"thing{i}" for i in range(7)]
PREDICATES = ["__no_relation__", "on", "has", "near"]


def _dicts(seed, n):
    return random_scene_graph_dicts(np.random.default_rng(seed), n, len(THINGS), len(PREDICATES))


def _assert_same(loaded, expected, image_root, file_name):
    """``loaded`` (from the loader) equals ``expected`` minus images without relations, in order."""
    expected = [d for d in expected if len(d["relations"])]
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        assert got["file_name"] == os.path.join(image_root, file_name(want))
        assert (got["width"], got["height"]) == (want["width"], want["height"])
        np.testing.assert_array_equal([a["bbox"] for a in got["annotations"]], [a["bbox"] for a in want["annotations"]])
        assert [a["category_id"] for a in got["annotations"]] == [a["category_id"] for a in want["annotations"]]
        np.testing.assert_array_equal(got["relations"], want["relations"])


@pytest.fixture(scope="module")
def oi_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("oi"))
    splits = {"train": _dicts(0, 300), "val": _dicts(1, 40), "test": _dicts(2, 60)}
    write_oi_layout(root, splits, THINGS, PREDICATES, copy_images=False)
    return root, splits


@pytest.fixture(scope="module")
def gqa_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gqa"))
    train, test = _dicts(3, 300), _dicts(4, 80)
    write_gqa_layout(root, train, test, THINGS, PREDICATES, copy_images=False)
    return root, train, test


# ----------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_open_images_round_trip(oi_root, split):
    root, splits = oi_root
    annotation_file, categories_file, image_root = oi_files(root, split)
    loaded = load_oi_sgg(annotation_file, categories_file, image_root, missing_images="ignore")
    _assert_same(loaded, splits[split], image_root, lambda d: f"{oi_image_stem(d['image_id'])}.jpg")
    assert sum(len(d["relations"]) == 0 for d in splits[split]) > 0  # the filter was exercised
    assert read_oi_classes(categories_file) == (THINGS, PREDICATES)


def test_gqa_round_trip_and_splits(gqa_root):
    root, train, test = gqa_root

    def load(split, **kwargs):
        return load_gqa_sgg(*gqa_files(root, split), split, missing_images="ignore", **kwargs)

    def name(d):
        return f"{d['image_id']}.jpg"

    image_root = os.path.join(root, "images")
    _assert_same(load("train"), train, image_root, name)
    _assert_same(load("test"), test, image_root, name)
    # val = the first num_val_images test-file images left after the filters: part of test
    non_empty = [d for d in test if len(d["relations"])]
    _assert_same(load("val", num_val_images=10), non_empty[:10], image_root, name)
    # an excluded test-file row leaves val and test (not train)
    excluded = next(i for i, d in enumerate(test) if len(d["relations"]))
    kept = [d for i, d in enumerate(test) if i != excluded]
    _assert_same(load("test", excluded_test_rows=(excluded,)), kept, image_root, name)
    assert read_gqa_classes(gqa_files(root, "test")[1]) == (THINGS, PREDICATES)


def test_builtin_names_and_metadata():
    import kern_d2.data  # noqa: F401  (registers the builtins)

    for prefix in ("oiv6", "oiv4", "gqa200"):
        for split in ("train", "val", "test"):
            assert f"{prefix}_{split}" in DatasetCatalog.list()
    assert MetadataCatalog.get("oiv6_test").evaluator_type == "sgg_oi"
    assert MetadataCatalog.get("oiv4_val").evaluator_type == "sgg_oi"
    assert MetadataCatalog.get("gqa200_test").evaluator_type == "sgg"
    assert MetadataCatalog.get("gqa200_val").annotation_file.endswith("GQA_200_Test.json")
    if not os.path.isdir(os.path.join(os.environ.get("KERN_DATASETS", "datasets"), "oiv6")):
        with pytest.raises(FileNotFoundError, match="categories_dict.json"):
            DatasetCatalog.get("oiv6_train")


# --------------------------------------------------------------------------------------------------- bad input
def _write(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f)
    return str(path)


def _oi_record(**changes):
    record = {"img_fn": "abc", "img_size": [100, 80], "bbox": [[0, 0, 10, 10], [20, 20, 40, 40]],
              "det_labels": [0, 1], "rel": [[0, 1, 0]]}
    record.update(changes)
    return record


@pytest.mark.parametrize("change, message", [
    ({"bbox": [[10, 0, 0, 10], [20, 20, 40, 40]]}, r"record 1 \(img_fn 'abc'\): box 0 .* x2 < x1"),
    ({"det_labels": [0, 7]}, r"record 1 .*'det_labels' must be in 0..6, got 7"),
    ({"det_labels": [0]}, r"record 1 .*2 entries in 'bbox' but 1 in 'det_labels'"),
    ({"rel": [[0, 2, 0]]}, r"record 1 .*points outside the image's 2 boxes"),
    ({"rel": [[0, 1, 3]]}, r"record 1 .*predicate 3 of 'rel' must be in 0..2"),
    ({"bbox": [[0, 0, 10], [20, 20, 40, 40]]}, r"record 1 .*'bbox' must hold finite numbers, 4 numbers"),
    ({"img_size": [100]}, r"record 1: 'img_size' must be \[width, height\]"),
    ({"img_fn": None, "bbox": None}, r"record 1 .*'bbox' must be a list"),
])
def test_open_images_bad_records_are_named(tmp_path, change, message):
    categories = _write(tmp_path / "categories_dict.json", {"obj": THINGS, "rel": PREDICATES[1:]})
    annotations = _write(tmp_path / "vrd-test-anno.json", [_oi_record(), _oi_record(**change)])
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_oi_sgg(annotations, categories, str(tmp_path), missing_images="ignore")
    assert annotations in str(error.value)


def test_open_images_missing_keys_and_files(tmp_path):
    categories = _write(tmp_path / "categories_dict.json", {"obj": THINGS})
    with pytest.raises(DatasetFormatError, match=r"categories_dict.json: missing keys \['rel'\]"):
        read_oi_classes(categories)
    categories = _write(tmp_path / "categories_dict.json", {"obj": THINGS, "rel": PREDICATES[1:]})
    record = _oi_record()
    del record["rel"]
    annotations = _write(tmp_path / "vrd-train-anno.json", [_oi_record(), record])
    with pytest.raises(DatasetFormatError, match="record 1: every record needs"):
        load_oi_sgg(annotations, categories, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_oi_sgg(str(tmp_path / "nothere.json"), categories, str(tmp_path))


def test_open_images_missing_images_error_or_skip(tmp_path):
    categories = _write(tmp_path / "categories_dict.json", {"obj": THINGS, "rel": PREDICATES[1:]})
    annotations = _write(tmp_path / "vrd-test-anno.json", [_oi_record(img_fn="a"), _oi_record(img_fn="b")])
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros((80, 100, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"1 of 2 image files are missing: .*b\.jpg"):
        load_oi_sgg(annotations, categories, str(images))
    kept = load_oi_sgg(annotations, categories, str(images), missing_images="skip")
    assert [d["file_name"] for d in kept] == [str(images / "a.jpg")]


def test_gqa_bad_input_is_named(tmp_path):
    info = _write(tmp_path / "GQA_200_ID_Info.json", {"ind_to_classes": THINGS, "ind_to_predicates": PREDICATES})
    with pytest.raises(DatasetFormatError, match=r"'ind_to_classes'\[0\] must be '__background__'"):
        read_gqa_classes(info)
    _write(tmp_path / "GQA_200_ID_Info.json", {"ind_to_classes": ["__background__", *THINGS],
                                                "ind_to_predicates": ["__background__", *PREDICATES[1:]]})
    good = {"filenames_all": ["1.jpg", "2.jpg"], "img_info_all": [{"width": 50, "height": 50}] * 2,
            "gt_boxes_all": [[[0, 0, 5, 5], [10, 10, 20, 20]]] * 2, "gt_classes_all": [[1, 2]] * 2,
            "relationships_all": [[[0, 1, 1]]] * 2}
    cases = [
        ({"gt_classes_all": [[1, 2], [0, 2]]}, r"image 1 \(2.jpg\): 'gt_classes_all' must be in 1..7, got 0"),
        ({"relationships_all": [[[0, 1, 1]], [[0, 1, 4]]]}, r"image 1 \(2.jpg\): predicate 4 .* must be in 1..3"),
        ({"img_info_all": [{"width": 50, "height": 50}, {"width": 50}]}, r"img_info_all\[1\] needs 'width'"),
        ({"filenames_all": ["1.jpg"]}, r"the per-image lists must be lists of one length"),
    ]
    for change, message in cases:
        path = _write(tmp_path / "GQA_200_Train.json", {**good, **change})
        with pytest.raises(DatasetFormatError, match=message):
            load_gqa_sgg(path, str(tmp_path / "GQA_200_ID_Info.json"), str(tmp_path), "train", missing_images="ignore")


@pytest.mark.parametrize("folder, prefix, classes, predicates",
                         [("OI-KERN", "", 601, 31), ("OI-KERN", "oiv4_", 57, 10), ("GQA-KERN", "", 200, 101)])
def test_configs_have_the_published_class_counts(folder, prefix, classes, predicates):
    """Open Images V6: 601 classes in categories_dict.json, 30 predicates (PySGG's OI V6 config: 602 / 31 with
    the background); V4 (the ``oiv4_*`` configs): 57 / 9 (PySGG: 58 / 10); GQA-200: 200 / 100 (SHA-GCL)."""
    from detectron2.config import get_cfg

    from kern_d2.config import add_kern_config

    root = os.path.join(REPO_ROOT, "configs", folder)
    names = sorted(n[len(prefix):] for n in os.listdir(root) if n.startswith("oiv4_") == (prefix == "oiv4_"))
    assert {"kern_predcls.yaml", "kern_sgcls.yaml", "kern_sgdet.yaml", "faster_rcnn_R_101_FPN.yaml"} <= set(names)
    for name in names:
        cfg = get_cfg()
        add_kern_config(cfg)
        cfg.merge_from_file(os.path.join(root, prefix + name))
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == classes, name
        assert all(d in DatasetCatalog.list() for d in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST), name
        if name.startswith("kern_"):
            assert cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES == predicates
            assert os.path.basename(cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE).startswith("kern_priors_")
