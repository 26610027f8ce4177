"""Bad data gets a clear error naming the file, the image and the problem, or a counted, logged skip where the user
asked for one. Complements tests/data/test_vg_loader.py (index ranges, foreign boxes, labels, degenerate boxes, missing
images and keys) with broken files, wrong dtypes, problems that reach the mapper inside a data-loader worker,
class lists that disagree with the config or the priors, and predict_files' reading of awkward image files.
"""
import json
import logging
import os
import re
import uuid

import cv2
import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.common import MapDataset
from detectron2.structures import Boxes

from kern_d2.config import add_kern_config
from kern_d2.data import DatasetFormatError, SGGDatasetMapper, load_vg_sgg
from kern_d2.engine import ImageFiles, SceneGraphPredictor, predict_files
from kern_d2.modeling.priors import build_priors, save_priors
from kern_d2.structures import SceneGraphInstances, set_relation_predictions
from kern_d2.utils.image_io import collect_image_files

CLASSES = ["person", "hat", "cup"]
PREDICATES = ["on", "wears"]
IMAGES = [
    dict(width=64, height=48, boxes=[[4, 4, 30, 40], [20, 2, 40, 20]], labels=[1, 2], relations=[[0, 1, 2]]),
    dict(width=80, height=60, boxes=[[10, 10, 50, 50], [40, 20, 70, 40]], labels=[3, 1], relations=[[1, 0, 1]]),
    dict(width=50, height=50, boxes=[[0, 0, 20, 20], [10, 10, 45, 45]], labels=[2, 2], relations=[[0, 1, 1]]),
]


@pytest.fixture
def vg(tmp_path, vg_writer):
    return vg_writer(str(tmp_path), IMAGES, CLASSES, PREDICATES, write_images=True)


def load(paths, **kwargs):
    return load_vg_sgg(paths["h5_file"], paths["dicts_file"], paths["image_data_file"], paths["image_root"], "train",
                       num_val_images=0, **kwargs)


def replace_h5_field(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        f[key] = value


def h5_field(path, key):
    with h5py.File(path) as f:
        return f[key][()]


# ------------------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_h5_is_named(vg, damage):
    with open(vg["h5_file"], "rb") as f:
        data = f.read()
    with open(vg["h5_file"], "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    with pytest.raises(DatasetFormatError, match=re.escape(vg["h5_file"]) + ": cannot read the h5 file, it is "
                                                 "truncated or corrupt"):
        load(vg)


@pytest.mark.parametrize("key, value, message", [
    ("labels", np.array([[1.0], [2.5], [3], [1], [2], [2]]), r"'labels' must hold integers; it is float64 with "
                                                             r"non-integral .*\(flat index 1 is 2\.5"),
    ("labels", np.array([[b"person"]] * 6), r"'labels' must hold integers, got dtype \|S6"),
    ("predicates", np.array([[np.nan], [1], [1]]), r"'predicates' must hold integers; .*\(flat index 0 is nan"),
    ("img_to_first_box", np.array([b"0", b"2", b"4"]), r"'img_to_first_box' must hold integers, got dtype \|S1"),
    ("boxes_1024", np.array([[b"a", b"b", b"c", b"d"]] * 6), r"'boxes_1024' must hold numbers, got dtype \|S1"),
    ("boxes_1024", np.array([[100, 100, 50, 50]] * 5 + [[100, np.inf, 50, 50]]),
     r"'boxes_1024' box 5 is \[100\.0, inf, 50\.0, 50\.0\] \(not finite\)"),
])
def test_wrong_dtypes_are_named(vg, key, value, message):
    replace_h5_field(vg["h5_file"], key, value)
    with pytest.raises(DatasetFormatError, match=re.escape(vg["h5_file"]) + ": " + message):
        load(vg)


def test_integral_floats_load_like_integers(vg):
    expected = load(vg)
    for key in ("labels", "boxes_1024", "relationships", "img_to_first_box"):
        replace_h5_field(vg["h5_file"], key, h5_field(vg["h5_file"], key).astype(np.float32))
    loaded = load(vg)
    assert [d["annotations"] for d in loaded] == [d["annotations"] for d in expected]
    for a, b in zip(loaded, expected):
        np.testing.assert_array_equal(a["relations"], b["relations"])


def test_image_data_with_non_numeric_size_is_named(vg):
    with open(vg["image_data_file"]) as f:
        text = f.read().replace('"width": 80', '"width": "eighty"')
    with open(vg["image_data_file"], "w") as f:
        f.write(text)
    with pytest.raises(DatasetFormatError, match=r"image_data\.json: every entry needs an integer 'image_id' .*"
                                                 r"'width' and 'height' .*eighty"):
        load(vg)


def test_images_without_boxes_or_relations_are_left_out_counted_and_logged(tmp_path, vg_writer, caplog):
    images = IMAGES + [dict(width=40, height=40), dict(width=40, height=40, boxes=[[0, 0, 9, 9]], labels=[1]),
                       dict(width=40, height=40, boxes=[[0, 0, 9, 9]], labels=[1])]
    paths = vg_writer(str(tmp_path), images, CLASSES, PREDICATES, write_images=True)
    with caplog.at_level(logging.INFO, logger="kern_d2.data.datasets.vg"):
        assert [d["image_id"] for d in load(paths)] == [1, 2, 3]
    assert re.search(r"VG-SGG\.h5 \[train\]: left out 1 images without boxes and 2 images without relations",
                     caplog.text)
    assert [d["image_id"] for d in load(paths, filter_empty_rels=False)] == [1, 2, 3, 5, 6]


# ------------------------------------------------------------------------------------------------- the mapper


def test_unreadable_image_in_a_loader_worker_names_file_and_image(vg):
    dicts = load(vg)
    broken = dicts[1]["file_name"]
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    mapper = SGGDatasetMapper(False, augmentations=[], image_format="BGR")
    loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=1)
    with pytest.raises(OSError, match=r"DataLoader worker(.|\n)*cannot read image " + re.escape(broken) +
                                      r" \(image_id 2\)"):
        for _ in loader:
            pass


def test_unreadable_images_skipped_in_training_when_asked(vg, caplog):
    dicts = load(vg)
    os.remove(dicts[1]["file_name"])
    mapper = SGGDatasetMapper(True, augmentations=[], image_format="BGR", unreadable_images="skip")
    with caplog.at_level(logging.WARNING, logger="kern_d2.data.mapper"):
        assert mapper(dicts[1]) is None
        # Detectron2's MapDataset draws another image when the mapper returns None.
        replaced = MapDataset(dicts, mapper)[1]
    assert replaced["image_id"] in (1, 3) and mapper.num_skipped == 2
    assert f"skipped image_id 2: SGGDatasetMapper: cannot read image {dicts[1]['file_name']}" in caplog.text
    assert "(2 unreadable images skipped so far in this process)" in caplog.text
    with pytest.raises(ValueError, match="for training only"):
        SGGDatasetMapper(False, augmentations=[], image_format="BGR", unreadable_images="skip")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][1].update(category_id=3), r"category_id 3 is outside \[0, 3\) "
                                                          r"\(MODEL\.ROI_HEADS\.NUM_CLASSES\)"),
    (lambda d: d.update(relations=np.array([[0, 2, 1]])), r"relation \[0, 2, 1\] points at a box outside the "
                                                          r"image's 2 annotations"),
    (lambda d: d.update(relations=np.array([[0, 1, 3]])), r"relation \[0, 1, 3\] has predicate 3, outside 1\.\.2"),
    (lambda d: d.update(relations=np.array([[0, 1, 0]])), r"relation \[0, 1, 0\] has predicate 0, .*'no relation'"),
])
def test_annotations_from_other_loaders_are_checked_per_image(change, message):
    # A dataset registered by other code reaches the mapper unchecked; the image file is not even read.
    record = {"file_name": "/no/such/image.jpg", "image_id": 42, "height": 10, "width": 10,
              "annotations": [{"bbox": [0, 0, 5, 5], "bbox_mode": 0, "category_id": 0},
                              {"bbox": [2, 2, 9, 9], "bbox_mode": 0, "category_id": 2}],
              "relations": np.array([[0, 1, 1]])}
    change(record)
    mapper = SGGDatasetMapper(True, augmentations=[], image_format="BGR", num_classes=3, num_predicates=3)
    with pytest.raises(DatasetFormatError, match=r"/no/such/image\.jpg \(image_id 42\): " + message):
        mapper(record)


# ------------------------------------------------------------------------------------------------- class lists


@pytest.fixture
def registered():
    """Register metadata-only datasets: ``registered(thing_classes, predicate_classes) -> name``."""
    names = []

    def register(things, predicates):
        name = f"test_reliability_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(thing_classes=things, predicate_classes=predicates)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def sgg_cfg(train_name, num_classes, num_predicates, priors_file=""):
    cfg = add_kern_config(get_cfg())
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_name,), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = num_classes, num_predicates
    cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE = priors_file
    return cfg


def test_dataset_classes_must_match_the_config_before_training(registered):
    name = registered(CLASSES, ["__no_relation__"] + PREDICATES)
    SGGDatasetMapper(sgg_cfg(name, 3, 3), is_train=True)
    with pytest.raises(ValueError, match=rf"dataset {name} has 3 object classes but MODEL\.ROI_HEADS\.NUM_CLASSES "
                                         r"is 150"):
        SGGDatasetMapper(sgg_cfg(name, 150, 3), is_train=True)
    with pytest.raises(ValueError, match=rf"dataset {name} has 3 predicates \('no relation' included\) but "
                                         r"MODEL\.ROI_RELATION_HEAD\.NUM_PREDICATES is 51"):
        SGGDatasetMapper(sgg_cfg(name, 3, 51), is_train=True)


def test_priors_of_another_dataset_are_refused(tmp_path, registered):
    predicates = ["__no_relation__"] + PREDICATES
    priors = str(tmp_path / "priors.npz")
    save_priors(priors, np.full((3, 3), 0.5), np.full((3, 3, 3), 1 / 3), CLASSES, predicates)
    assert build_priors(sgg_cfg(registered(CLASSES, predicates), 3, 3, priors)).num_classes == 3
    other_names = registered(["person", "cup", "hat"], predicates)  # same counts, other order
    with pytest.raises(ValueError, match=r"priors\.npz: thing_classes\[1\] is 'hat' but the dataset's is 'cup'"):
        build_priors(sgg_cfg(other_names, 3, 3, priors))
    more_classes = registered(CLASSES + ["dog"], predicates)
    with pytest.raises(ValueError, match=r"priors\.npz: 3 thing_classes but the dataset has 4"):
        build_priors(sgg_cfg(more_classes, 4, 3, priors))
    with pytest.raises(ValueError, match=r"priors\.npz: rel_prior has shape \(3, 3, 3\) but the config asks for 3 "
                                         r"classes .* and 5 predicates"):
        build_priors(sgg_cfg("unregistered_dataset", 3, 5, priors))


# --------------------------------------------------------------------------------------------- predict_files I/O


class WholeImageModel(torch.nn.Module):
    """Stands in for the model: per image, boxes [whole image, its top-left quarter] and the pair (0, 1)."""

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            h, w = x["height"], x["width"]
            result = SceneGraphInstances((h, w), pred_boxes=Boxes(torch.tensor([[0.0, 0, w, h], [0, 0, w / 2, h / 2]])),
                                         pred_classes=torch.tensor([0, 1]), scores=torch.tensor([0.9, 0.8]))
            set_relation_predictions(result, torch.tensor([[0, 1]]), torch.tensor([[0.1, 0.2, 0.7]]))
            outputs.append({"instances": result})
        return outputs


def test_predict_reads_awkward_images_in_loader_workers_and_reports_the_bad_ones(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8)).save(folder / "alpha.png")
    Image.fromarray(np.full((24, 32), 77, np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8)).save(folder / "one.png")
    cv2.imwrite(str(folder / "huge.jpg"), np.full((1200, 10000, 3), 128, np.uint8))
    good = cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 3])

    cfg = add_kern_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 128
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_RELATION_HEAD.USE_GT_BOX = cfg.MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL = False
    files, _ = collect_image_files([str(folder)])
    predictor = SceneGraphPredictor(cfg, model=WholeImageModel(), thing_classes=CLASSES,
                                    predicate_classes=["__no_relation__"] + PREDICATES)
    images = ImageFiles(files, predictor.prepare)
    summary = predict_files(predictor, images, str(tmp_path / "out"), batch_size=2, num_workers=1)

    processed = {os.path.basename(p["file"]): p for p in summary["processed"]}
    assert sorted(processed) == ["alpha.png", "gray.jpg", "huge.jpg", "one.png"]
    assert [os.path.basename(f["file"]) for f in summary["failed"]] == ["corrupt.jpg"]
    assert "corrupt.jpg" in summary["failed"][0]["reason"]
    records = {}
    for name, entry in processed.items():
        with open(entry["json"]) as f:
            records[name] = json.load(f)
    # Sizes and boxes are those of the original files, whatever size the pixels were decoded at.
    expected_sizes = {"alpha.png": (40, 30), "gray.jpg": (32, 24), "one.png": (1, 1), "huge.jpg": (10000, 1200)}
    for name, (w, h) in expected_sizes.items():
        assert (records[name]["width"], records[name]["height"]) == (w, h)
        assert records[name]["boxes"][0] == [0, 0, w, h]
        assert records[name]["triplets"][0]["predicate"] == "wears"
        assert os.path.isfile(processed[name]["png"])
