"""Issue 24, the data layer of a new user's first hour: Detectron2's COCO evaluation (the detector phase) on every
dataset layout, JSON files read as UTF-8 with every decoding error naming the file, and class names read lazily so
that one broken dataset file breaks only that dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from kern_d2.data import (
    DatasetFormatError,
    read_gqa_classes,
    read_oi_classes,
    read_sgg_json_classes,
    read_vg_classes,
    register_gqa_sgg,
    register_oi_sgg,
    register_sgg_json,
    register_vg_sgg,
)
from kern_d2.data.testing import random_scene_graph_dicts, write_gqa_layout, write_oi_layout
from kern_d2.data.datasets.registration import sgg_dataset_classes, sgg_dataset_names

from tests.helpers import REPO_ROOT

THINGS = ["person", "horse", "hat", "cup"]
PREDICATES = ["__no_relation__", "riding", "wears", "near"]
LAYOUTS = ("vg", "oi", "gqa", "json")


@pytest.fixture
def registered():
    """``registered(name)`` -> name, removed from both catalogs at the end of the test."""
    names = []

    def add(name):
        names.append(name)
        return name

    yield add
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.keys():
            MetadataCatalog.remove(name)


def _dicts(seed=0, n=4):
    dicts = random_scene_graph_dicts(np.random.default_rng(seed), n, len(THINGS), len(PREDICATES), max_boxes=5)
    return [d for d in dicts if len(d["relations"])]


def write_sgg_json(path, dicts):
    images = [{"id": d["image_id"], "file_name": f"{d['image_id']}.jpg", "width": d["width"], "height": d["height"],
               "objects": [{"bbox": a["bbox"], "category": THINGS[a["category_id"]]} for a in d["annotations"]],
               "relations": [{"subject": int(s), "object": int(o), "predicate": PREDICATES[p]}
                             for s, o, p in d["relations"]]} for d in dicts]
    with open(path, "w") as f:
        json.dump({"categories": THINGS, "predicates": PREDICATES[1:], "images": images}, f)


def register_layout(layout, root, name, vg_writer, dicts):
    """Write ``dicts`` as the test split of ``layout`` in ``root`` and register it as ``name`` (no image files)."""
    if layout == "vg":
        images = [{"image_id": d["image_id"], "width": d["width"], "height": d["height"], "split": 2,
                   "boxes": [a["bbox"] for a in d["annotations"]],
                   "labels": [a["category_id"] + 1 for a in d["annotations"]], "relations": d["relations"]}
                  for d in dicts]
        paths = vg_writer(root, images, THINGS, PREDICATES[1:])
        register_vg_sgg(name, paths["h5_file"], paths["dicts_file"], paths["image_data_file"], paths["image_root"],
                        "test", missing_images="ignore", num_val_images=0)
    elif layout == "oi":
        write_oi_layout(root, {"test": dicts}, THINGS, PREDICATES, copy_images=False)
        register_oi_sgg(name, root, "test", missing_images="ignore")
    elif layout == "gqa":
        write_gqa_layout(root, dicts, dicts, THINGS, PREDICATES, copy_images=False)
        register_gqa_sgg(name, root, "test", missing_images="ignore")
    else:
        os.makedirs(root)
        json_file = os.path.join(root, "my_test.json")
        write_sgg_json(json_file, dicts)
        register_sgg_json(name, json_file, root, missing_images="ignore")
    return name


# ------------------------------------------------------------------------- bug 1: the detector phase's COCO evaluation
@pytest.mark.parametrize("layout", LAYOUTS)
def test_detectron2_coco_evaluation_works_on_every_layout(layout, tmp_path, registered, vg_writer):
    """The detector phase evaluates with Detectron2's COCOEvaluator: it must get a COCO file, or none (then it
    converts the dataset dicts itself). The simple-JSON registrar once put its own file in ``json_file``, and
    pycocotools died on it after a whole detector training."""
    name = register_layout(layout, str(tmp_path / "data"), registered(f"pytest_coco_{layout}"), vg_writer, _dicts())
    records = DatasetCatalog.get(name)
    assert records
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "inference"))
    evaluator.reset()
    for record in records:  # a perfect detector: the gt boxes, score 1
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32))
        instances.scores = torch.ones(len(record["annotations"]))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------ bug 5: UTF-8, and the file named
READERS = {
    "vg": (read_vg_classes, "VG-SGG-dicts.json"),
    "oi": (read_oi_classes, "categories_dict.json"),
    "gqa": (read_gqa_classes, "GQA_200_ID_Info.json"),
    "json": (read_sgg_json_classes, "my_train.json"),
}
CLASS_FILES = {
    "vg": {"idx_to_label": {"1": "personne", "2": "café"}, "idx_to_predicate": {"1": "près de"}},
    "oi": {"obj": ["personne", "café"], "rel": ["près de"]},
    "gqa": {"ind_to_classes": ["__background__", "personne", "café"], "ind_to_predicates": ["__background__", "près de"]},
    "json": {"categories": ["personne", "café"], "predicates": ["près de"], "images": []},
}


def test_class_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    code = ["import sys", "import kern_d2.data as d"]
    for layout, (read, file_name) in READERS.items():
        path = tmp_path / layout / file_name
        path.parent.mkdir()
        path.write_bytes(json.dumps(CLASS_FILES[layout], ensure_ascii=False).encode("utf-8"))
        code.append(f"print(ascii(d.{read.__name__}({str(path)!r})))")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONIOENCODING="ascii")
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], env=env, capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(READERS) and all("caf\\xe9" in l and "pr\\xe8s de" in l for l in lines), lines


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("damage", ["zip", "cut_in_character"])
def test_every_decoding_error_names_the_file(layout, damage, tmp_path):
    read, file_name = READERS[layout]
    path = tmp_path / file_name
    if damage == "zip":  # an archive saved under the json's name
        data = b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xb7\x9c\xe1\xff" + bytes(range(256))
    else:  # a download cut inside a multi-byte character
        text = json.dumps(CLASS_FILES[layout], ensure_ascii=False).encode("utf-8")
        data = text[: text.index("é".encode("utf-8")) + 1]
    path.write_bytes(data)
    with pytest.raises(DatasetFormatError, match=str(path).replace(".", r"\.") + ": not a UTF-8 text file"):
        read(str(path))


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "categories_dict.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CLASS_FILES["oi"]).encode("utf-8"))
    assert read_oi_classes(str(path))[0] == ["personne", "café"]


# ------------------------------------------------------------------- bug 6: class names read lazily, per dataset
def test_a_broken_class_file_breaks_only_its_dataset_and_names_the_file(tmp_path, registered):
    """A partial categories_dict.json (OI) or GQA_200_ID_Info.json under $KERN_DATASETS: registering the builtins
    (what ``import kern_d2.data`` does) works, and using that dataset fails naming its file."""
    from kern_d2.data import register_gqa200, register_open_images

    (tmp_path / "oiv6" / "annotations").mkdir(parents=True)
    (tmp_path / "oiv6" / "annotations" / "categories_dict.json").write_text('{"obj": ["person", "ca')
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "GQA_200_ID_Info.json").write_bytes(b'{"ind_to_classes": ["__background__", "caf\xc3')
    for split in ("train", "val", "test"):
        registered(f"pytest_oiv6_{split}"), registered(f"pytest_gqa_{split}")
    register_open_images(str(tmp_path / "oiv6"), "pytest_oiv6")  # used to raise here, at import
    register_gqa200(str(tmp_path / "gqa"), "pytest_gqa")
    with pytest.raises(DatasetFormatError, match=r"categories_dict\.json: not valid JSON"):
        MetadataCatalog.get("pytest_oiv6_train").get("thing_classes")
    with pytest.raises(DatasetFormatError, match=r"GQA_200_ID_Info\.json: not a UTF-8 text file"):
        DatasetCatalog.get("pytest_gqa_test")


def test_class_names_are_read_on_first_use_and_missing_files_are_named(tmp_path, registered, vg_writer):
    root = tmp_path / "vg"
    name = registered("pytest_lazy_vg")
    dicts_file = root / "VG-SGG-dicts.json"
    register_vg_sgg(name, str(root / "VG-SGG.h5"), str(dicts_file), str(root / "image_data.json"),
                    str(root / "VG_100K"), "train")
    assert name in sgg_dataset_names() and "coco_2017_train" not in sgg_dataset_names()
    assert MetadataCatalog.get(name).get("thing_classes") is None  # file absent: no names yet, no error
    with pytest.raises(FileNotFoundError, match="VG dicts json not found: .*VG-SGG-dicts.json"):
        sgg_dataset_classes(name)
    vg_writer(str(root), [{"width": 50, "height": 40, "boxes": [[1, 1, 20, 20]], "labels": [1]}], THINGS,
              PREDICATES[1:])
    assert MetadataCatalog.get(name).thing_classes == THINGS  # read now, on first use
    assert sgg_dataset_classes(name) == (THINGS, PREDICATES)
    dicts_file.write_text("{")
    assert MetadataCatalog.get(name).thing_classes == THINGS  # read once, kept
