import json
import logging
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import kern_d2.data  # noqa: F401  (builtin names)
from kern_d2.data import DatasetFormatError, filter_images_without_overlapping_pairs, load_vg_sgg, register_vg_sgg

CLASSES = ["person", "hat", "cup"]
PREDICATES = ["on", "wears"]

# Rows of a small h5: split 0 train / 2 test; boxes (xc, yc, w, h) at the 1024 scale; labels 1-based.
IMAGES = [
    dict(width=512, height=256, split=0, boxes_1024=[[100, 60, 40, 20], [300, 200, 100, 50]], labels=[1, 2],
         relations=[[0, 1, 2], [1, 0, 1]]),
    dict(width=300, height=600, split=2, boxes_1024=[[400, 512, 100, 200], [200, 300, 50, 60]], labels=[3, 1],
         relations=[[1, 0, 1]]),
    dict(width=400, height=400, split=0, boxes_1024=[[500, 500, 80, 80]], labels=[2]),  # no relations
    dict(width=640, height=480, split=0, boxes_1024=[[100, 100, 50, 50], [200, 200, 60, 40], [600, 500, 100, 90]],
         labels=[1, 3, 3], relations=[[2, 0, 1], [0, 1, 1], [0, 1, 2]]),
    dict(width=200, height=100, split=2, boxes_1024=[[300, 200, 100, 100]], labels=[2], relations=[[0, 0, 1]]),
    dict(width=100, height=100, split=0, boxes_1024=[[300, 300, 200, 200], [700, 700, 100, 100]], labels=[1, 1],
         relations=[[1, 0, 2]]),
    dict(width=100, height=100, split=0),  # no boxes at all
]


def expected_xyxy(image):
    b = np.asarray(image["boxes_1024"], dtype=np.float64)
    scale = max(image["width"], image["height"]) / 1024
    x1, y1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2
    return np.stack([x1, y1, x1 + b[:, 2], y1 + b[:, 3]], axis=1) * scale


@pytest.fixture
def vg(tmp_path, vg_writer):
    return vg_writer(str(tmp_path), IMAGES, CLASSES, PREDICATES, write_images=True)


def load(paths, split, **kwargs):
    return load_vg_sgg(paths["h5_file"], paths["dicts_file"], paths["image_data_file"], paths["image_root"], split,
                       **kwargs)


def test_round_trip_boxes_labels_relations(vg):
    train_and_val = load(vg, "train", num_val_images=0)
    assert [d["image_id"] for d in train_and_val] == [1, 4, 6]
    first = train_and_val[0]
    assert (first["width"], first["height"]) == (512, 256)
    assert first["file_name"] == f"{vg['image_root']}/1.jpg"
    # scale 512 / 1024 = 0.5: (100, 60, 40, 20) -> (80, 50, 120, 70) at 1024 -> (40, 25, 60, 35)
    assert first["annotations"][0]["bbox"] == [40.0, 25.0, 60.0, 35.0]
    assert first["annotations"][1]["bbox"] == [125.0, 87.5, 175.0, 112.5]
    assert [a["category_id"] for a in first["annotations"]] == [0, 1]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in first["annotations"])
    assert first["relations"].dtype == np.int64
    np.testing.assert_array_equal(first["relations"], [[0, 1, 2], [1, 0, 1]])
    # relations are stored with global box indices: image row 3 starts at box 5
    with h5py.File(vg["h5_file"]) as f:
        assert f["relationships"][f["img_to_first_rel"][3]].tolist() == [5 + 2, 5 + 0]
    row3 = train_and_val[1]
    np.testing.assert_allclose([a["bbox"] for a in row3["annotations"]], expected_xyxy(IMAGES[3]))
    np.testing.assert_array_equal(row3["relations"], IMAGES[3]["relations"])
    assert [a["category_id"] for a in row3["annotations"]] == [0, 2, 2]


def test_test_split_and_box_conversion(vg):
    test = load(vg, "test")
    assert [d["image_id"] for d in test] == [2, 5]
    # 300x600: scale 600/1024; (400, 512, 100, 200) -> (350, 412, 450, 612) * 600/1024
    np.testing.assert_allclose(test[0]["annotations"][0]["bbox"], np.array([350, 412, 450, 612]) * 600 / 1024)
    np.testing.assert_allclose([a["bbox"] for a in test[1]["annotations"]], expected_xyxy(IMAGES[4]))
    assert [a["category_id"] for a in test[0]["annotations"]] == [2, 0]


def test_val_is_first_images_of_train_split_after_filtering(vg):
    assert [d["image_id"] for d in load(vg, "val", num_val_images=2)] == [1, 4]
    assert [d["image_id"] for d in load(vg, "train", num_val_images=2)] == [6]
    # without the empty-relation filter, image 3 (boxes but no relations) counts; image 7 (no boxes) never does
    assert [d["image_id"] for d in load(vg, "val", num_val_images=2, filter_empty_rels=False)] == [1, 3]
    kept = load(vg, "train", num_val_images=2, filter_empty_rels=False)
    assert [d["image_id"] for d in kept] == [4, 6]
    assert [len(d["relations"]) for d in kept] == [3, 1]


def test_num_val_images_from_h5_attribute(tmp_path, vg_writer):
    paths = vg_writer(str(tmp_path), IMAGES, CLASSES, PREDICATES, h5_attrs={"num_val_images": 1})
    assert [d["image_id"] for d in load(paths, "val", num_val_images=None, missing_images="ignore")] == [1]
    assert [d["image_id"] for d in load(paths, "train", num_val_images=None, missing_images="ignore")] == [4, 6]


def test_num_val_images_none_without_attribute_is_an_error(vg):
    with pytest.raises(DatasetFormatError, match="num_val_images"):
        load(vg, "val", num_val_images=None)


def test_corrupt_ids_dropped_to_align_image_data(tmp_path, vg_writer):
    paths = vg_writer(str(tmp_path), IMAGES, CLASSES, PREDICATES, pad_corrupt_ids=True)
    with open(paths["image_data_file"]) as f:
        assert len(json.load(f)) == len(IMAGES) + 4
    test = load(paths, "test", missing_images="ignore")
    assert [(d["image_id"], d["width"], d["height"]) for d in test] == [(2, 300, 600), (5, 200, 100)]
    np.testing.assert_allclose(test[1]["annotations"][0]["bbox"], expected_xyxy(IMAGES[4])[0])


def test_image_data_count_mismatch_is_an_error(vg):
    with open(vg["image_data_file"]) as f:
        entries = json.load(f)
    with open(vg["image_data_file"], "w") as f:
        json.dump(entries[:-1], f)
    with pytest.raises(DatasetFormatError, match=r"image_data\.json: 6 entries .* has 7 image rows"):
        load(vg, "train")


def test_file_name_from_url_basename_else_image_id(vg):
    with open(vg["image_data_file"]) as f:
        entries = json.load(f)
    entries[0]["url"] = "https://example.org/VG_100K_2/other.jpg"
    del entries[1]["url"]
    with open(vg["image_data_file"], "w") as f:
        json.dump(entries, f)
    assert load(vg, "train", num_val_images=0, missing_images="ignore")[0]["file_name"].endswith("VG_100K/other.jpg")
    assert load(vg, "test")[0]["file_name"].endswith("VG_100K/2.jpg")


def test_attribute_variant_loads(tmp_path, vg_writer):
    paths = vg_writer(str(tmp_path), IMAGES, CLASSES, PREDICATES, with_attributes=True, write_images=True)
    assert paths["h5_file"].endswith("VG-SGG-with-attri.h5")
    with h5py.File(paths["h5_file"]) as f:
        assert "attributes" in f
    with open(paths["dicts_file"]) as f:
        assert "idx_to_attribute" in json.load(f)
    test = load(paths, "test")
    assert [d["image_id"] for d in test] == [2, 5]
    np.testing.assert_allclose([a["bbox"] for a in test[1]["annotations"]], expected_xyxy(IMAGES[4]))


def test_degenerate_boxes_dropped_with_their_relations_and_counted(tmp_path, vg_writer, caplog):
    images = [
        # 200x100, scale 200/1024: box 1 lies fully right of the image; box 2 sticks out left and is clipped
        dict(width=200, height=100, boxes_1024=[[100, 100, 40, 40], [1500, 100, 40, 40], [10, 100, 60, 40],
                                                [300, 100, 0, 30]],
             labels=[1, 2, 3, 1], relations=[[0, 1, 1], [2, 0, 2], [1, 2, 1], [3, 0, 1]]),
    ]
    paths = vg_writer(str(tmp_path), images, CLASSES, PREDICATES)
    with caplog.at_level(logging.WARNING):
        (d,) = load(paths, "train", num_val_images=0, missing_images="ignore")
    assert "dropped 2 degenerate boxes" in caplog.text and "3 relations" in caplog.text
    s = 200 / 1024
    np.testing.assert_allclose([a["bbox"] for a in d["annotations"]], [[80 * s, 80 * s, 120 * s, 120 * s],
                                                                       [0, 80 * s, 40 * s, 120 * s]])
    assert [a["category_id"] for a in d["annotations"]] == [0, 2]
    np.testing.assert_array_equal(d["relations"], [[1, 0, 2]])  # (2, 0) renumbered; the others used dropped boxes


def test_filter_non_overlap(tmp_path, vg_writer):
    images = [
        dict(width=1024, height=512, boxes=[[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40], [10, 0, 20, 10]],
             labels=[1, 2, 3, 1], relations=[[0, 1, 1], [0, 2, 2], [0, 3, 1]]),  # (0, 3) only touch: no overlap
        dict(width=1024, height=512, boxes=[[0, 0, 10, 10], [30, 30, 40, 40]], labels=[1, 2], relations=[[0, 1, 1]]),
    ]
    paths = vg_writer(str(tmp_path), images, CLASSES, PREDICATES)
    kept = load(paths, "train", num_val_images=0, filter_non_overlap=True, missing_images="ignore")
    assert [d["image_id"] for d in kept] == [1]
    np.testing.assert_array_equal(kept[0]["relations"], [[0, 1, 1]])
    assert len(kept[0]["annotations"]) == 4  # boxes stay
    everything = load(paths, "train", num_val_images=0, missing_images="ignore")
    assert len(everything) == 2
    # the same filter on loaded dicts (the trainer's DATASETS.SGG.FILTER_NON_OVERLAP path), input untouched
    filtered = filter_images_without_overlapping_pairs(everything)
    assert [d["image_id"] for d in filtered] == [1]
    np.testing.assert_array_equal(filtered[0]["relations"], [[0, 1, 1]])
    assert filtered[0]["annotations"] == kept[0]["annotations"] and len(everything[0]["relations"]) == 3


def test_missing_images_error_skip_ignore(vg):
    os.remove(os.path.join(vg["image_root"], "5.jpg"))
    with pytest.raises(FileNotFoundError, match=r"1 of 2 image files are missing: .*VG_100K/5\.jpg"):
        load(vg, "test")
    assert [d["image_id"] for d in load(vg, "test", missing_images="skip")] == [2]
    assert [d["image_id"] for d in load(vg, "test", missing_images="ignore")] == [2, 5]
    with pytest.raises(ValueError, match="missing_images must be one of"):
        load(vg, "test", missing_images="warn")


def test_bad_split_name(vg):
    with pytest.raises(ValueError, match="split must be one of"):
        load(vg, "training")


@pytest.mark.parametrize("which", ["h5_file", "dicts_file", "image_data_file"])
def test_missing_file_is_named(vg, which):
    os.remove(vg[which])
    with pytest.raises(FileNotFoundError, match=re.escape(vg[which])):
        load(vg, "train")


def rewrite_h5(path, **fields):
    with h5py.File(path, "a") as f:
        for key, value in fields.items():
            del f[key]
            if value is not None:
                f[key] = np.asarray(value)


def h5_field(path, key):
    with h5py.File(path) as f:
        return f[key][()]


def test_missing_h5_keys_are_listed(vg):
    rewrite_h5(vg["h5_file"], boxes_1024=None, predicates=None)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: missing h5 datasets \['boxes_1024', 'predicates'\]"):
        load(vg, "train")


def test_first_box_after_last_box(vg):
    first = h5_field(vg["h5_file"], "img_to_first_box")
    first[3] = first[3] + 5
    rewrite_h5(vg["h5_file"], img_to_first_box=first)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: image row 3 \(image_id 4\): img_to_first_box=10, "
                                                 r"img_to_last_box=7 out of bounds"):
        load(vg, "train")


def test_last_box_beyond_dataset(vg):
    last = h5_field(vg["h5_file"], "img_to_last_box")
    last[5] = 100
    rewrite_h5(vg["h5_file"], img_to_last_box=last)
    with pytest.raises(DatasetFormatError, match=r"image row 5 .*img_to_last_box=100 out of bounds \(11 boxes"):
        load(vg, "train")


def test_last_rel_beyond_dataset(vg):
    last = h5_field(vg["h5_file"], "img_to_last_rel")
    last[4] = 50
    rewrite_h5(vg["h5_file"], img_to_last_rel=last)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: image row 4 .*img_to_last_rel=50 out of bounds"):
        load(vg, "test")


def test_relation_outside_its_image_boxes(vg):
    rels = h5_field(vg["h5_file"], "relationships")
    rels[0] = [0, 2]  # box 2 belongs to image row 1
    rewrite_h5(vg["h5_file"], relationships=rels)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: relation 0 of image row 0 \(image_id 1\) points at "
                                                 r"boxes \[0, 2\] outside the image's boxes \[0, 1\]"):
        load(vg, "test")


def test_label_outside_class_list(vg):
    labels = h5_field(vg["h5_file"], "labels")
    labels[4] = 4
    rewrite_h5(vg["h5_file"], labels=labels)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: 'labels' must be in 1\.\.3 .* box 4 has 4"):
        load(vg, "train")


@pytest.mark.parametrize("bad", [0, 3])
def test_predicate_outside_predicate_list(vg, bad):
    preds = h5_field(vg["h5_file"], "predicates")
    preds[2] = bad
    rewrite_h5(vg["h5_file"], predicates=preds)
    message = rf"VG-SGG\.h5: 'predicates' must be in 1\.\.2 .* relation 2 has {bad}"
    with pytest.raises(DatasetFormatError, match=message):
        load(vg, "train")


def test_mismatched_h5_counts(vg):
    labels = h5_field(vg["h5_file"], "labels")
    rewrite_h5(vg["h5_file"], labels=labels[:-1])
    with pytest.raises(DatasetFormatError, match=r"VG-SGG\.h5: mismatched counts of boxes"):
        load(vg, "train")


def test_bad_split_value(vg):
    split = h5_field(vg["h5_file"], "split")
    split[2] = 3
    rewrite_h5(vg["h5_file"], split=split)
    with pytest.raises(DatasetFormatError, match=r"'split' must be 0 \(train\), 1 \(unused\) or 2 \(test\); row 2 "):
        load(vg, "train")


def test_rows_of_split_1_are_not_used(vg, caplog):
    split = h5_field(vg["h5_file"], "split")
    split[[0, 1]] = 1
    rewrite_h5(vg["h5_file"], split=split)
    with caplog.at_level(logging.WARNING):
        assert [d["image_id"] for d in load(vg, "train", num_val_images=0)] == [4, 6]
    assert "2 image rows have split 1" in caplog.text
    assert [d["image_id"] for d in load(vg, "test")] == [5]


def test_dicts_with_gap_in_keys(vg):
    with open(vg["dicts_file"]) as f:
        data = json.load(f)
    data["idx_to_predicate"] = {"1": "on", "3": "wears"}
    with open(vg["dicts_file"], "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetFormatError, match=r"VG-SGG-dicts\.json: 'idx_to_predicate' keys must be exactly 1\.\.2"):
        load(vg, "train")


def test_register_sets_metadata_now_when_dicts_exist(vg):
    register_vg_sgg("test_vg_now_train", vg["h5_file"], vg["dicts_file"], vg["image_data_file"], vg["image_root"],
                    "train", num_val_images=1, priors_file="/p.npz")
    try:
        meta = MetadataCatalog.get("test_vg_now_train")
        assert meta.thing_classes == CLASSES
        assert meta.predicate_classes == ["__no_relation__"] + PREDICATES
        assert meta.evaluator_type == "sgg" and meta.h5_file == vg["h5_file"] and meta.priors_file == "/p.npz"
        assert [d["image_id"] for d in DatasetCatalog.get("test_vg_now_train")] == [4, 6]
    finally:
        DatasetCatalog.remove("test_vg_now_train")
        MetadataCatalog.remove("test_vg_now_train")


def test_register_sets_classes_lazily_when_dicts_absent(tmp_path, vg_writer):
    root = str(tmp_path)
    paths = {k: f"{root}/{v}" for k, v in dict(h5_file="VG-SGG.h5", dicts_file="VG-SGG-dicts.json",
                                                 image_data_file="image_data.json", image_root="VG_100K").items()}
    register_vg_sgg("test_vg_lazy_test", split="test", **paths)
    try:
        meta = MetadataCatalog.get("test_vg_lazy_test")
        assert meta.evaluator_type == "sgg" and meta.get("thing_classes") is None
        with pytest.raises(FileNotFoundError, match="VG-SGG-dicts.json"):
            DatasetCatalog.get("test_vg_lazy_test")
        vg_writer(root, IMAGES, CLASSES, PREDICATES, write_images=True)
        assert len(DatasetCatalog.get("test_vg_lazy_test")) == 2
        assert meta.thing_classes == CLASSES
    finally:
        DatasetCatalog.remove("test_vg_lazy_test")
        MetadataCatalog.remove("test_vg_lazy_test")


def test_importing_the_model_registers_no_dataset_and_the_builtins_register_once():
    """``import kern_d2.modeling`` leaves the catalog alone; ``import kern_d2.data`` registers the builtins, and a
    reload of the builtin module skips the names registered already (no "already registered" error)."""
    code = (
        "import importlib; import kern_d2.modeling; from detectron2.data import DatasetCatalog\n"
        "assert not any(n.startswith(('vg150', 'toy', 'synth', 'oiv', 'gqa200')) for n in DatasetCatalog.list())\n"
        "import kern_d2.data.datasets.builtin as builtin; names = DatasetCatalog.list()\n"
        "assert 'vg150_train' in names\n"
        "importlib.reload(builtin); assert DatasetCatalog.list() == names\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_builtin_names_registered():
    for name in ("vg150_train", "vg150_val", "vg150_test", "toy_train", "toy_val", "toy_test"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "sgg"
    assert MetadataCatalog.get("vg150_val").h5_file.endswith(".h5")
