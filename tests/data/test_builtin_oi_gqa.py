"""Issue 24, the builtins and configs of Open Images / GQA-200 users: one missing-image policy for every builtin
name of a downloaded dataset (``$KERN_MISSING_IMAGES``), the Open Images V4 configs, and the README's command that
links PySGG's ``datasets/openimages/open_image_v6/`` into kern_d2's layout."""
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid

import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.config import add_kern_config
from kern_d2.data import register_open_images
from kern_d2.data.datasets.builtin import missing_images_from_env, vg150_settings_from_env
from kern_d2.data.testing import oi_image_stem, random_scene_graph_dicts, write_gqa_layout, write_oi_layout
from kern_d2.data.datasets.registration import sgg_dataset_classes

from tests.helpers import REPO_ROOT

THINGS = ["person", "horse", "hat", "cup"]
PREDICATES = ["__no_relation__", "riding", "wears", "near"]


def _dicts(n=2, seed=0):
    """``n`` random scene graphs with relations (images without any are dropped by the OI / GQA loaders)."""
    dicts = random_scene_graph_dicts(np.random.default_rng(seed), 4 * n, len(THINGS), len(PREDICATES), max_boxes=5)
    return [d for d in dicts if len(d["relations"])][:n]


def _jpeg(path, d):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((d["height"], d["width"], 3), 128, np.uint8))


def _remove(names):
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.keys():
            MetadataCatalog.remove(name)


# ------------------------------------------------------------------------------ one missing-image policy for all
def test_missing_image_policy_from_the_environment():
    assert missing_images_from_env({}) == "error"
    assert missing_images_from_env({"KERN_MISSING_IMAGES": "skip"}) == "skip"
    # the earlier VG-only name: read for vg150_* only, and only when the common one is not set
    assert missing_images_from_env({"KERN_VG_MISSING_IMAGES": "skip"}) == "error"
    assert vg150_settings_from_env({"KERN_VG_MISSING_IMAGES": "ignore"})["missing_images"] == "ignore"
    assert vg150_settings_from_env({"KERN_MISSING_IMAGES": "skip"})["missing_images"] == "skip"
    assert vg150_settings_from_env({"KERN_MISSING_IMAGES": "skip", "KERN_VG_MISSING_IMAGES": "ignore"})[
        "missing_images"] == "skip"
    with pytest.raises(ValueError, match=r"\$KERN_MISSING_IMAGES must be one of \('error', 'skip', 'ignore'\), "
                                         r"got 'drop'"):
        missing_images_from_env({"KERN_MISSING_IMAGES": "drop"})


def test_every_downloaded_builtin_follows_kern_missing_images(tmp_path, vg_writer):
    """A fresh process with ``$KERN_DATASETS`` and ``KERN_MISSING_IMAGES=skip``: in vg150_test, oiv6_test, oiv4_test
    and gqa200_train (two images each, the second without its file) the image without a file is dropped."""
    dicts = _dicts()
    paths = vg_writer(str(tmp_path / "vg"), [
        {"image_id": d["image_id"], "width": d["width"], "height": d["height"], "split": 2,
         "boxes": [a["bbox"] for a in d["annotations"]], "labels": [a["category_id"] + 1 for a in d["annotations"]],
         "relations": d["relations"]} for d in dicts], THINGS, PREDICATES[1:], write_images=True)
    os.remove(os.path.join(paths["image_root"], f"{dicts[1]['image_id']}.jpg"))
    for version in ("oiv6", "oiv4"):
        write_oi_layout(str(tmp_path / version), {"test": dicts}, THINGS, PREDICATES, copy_images=False)
        _jpeg(str(tmp_path / version / "images" / f"{oi_image_stem(dicts[0]['image_id'])}.jpg"), dicts[0])
    write_gqa_layout(str(tmp_path / "gqa"), dicts, dicts, THINGS, PREDICATES, copy_images=False)
    _jpeg(str(tmp_path / "gqa" / "images" / f"{dicts[0]['image_id']}.jpg"), dicts[0])

    names = ["vg150_test", "oiv6_test", "oiv4_test", "gqa200_train"]
    code = ("import kern_d2.data; from detectron2.data import DatasetCatalog; "
            f"print(*[len(DatasetCatalog.get(n)) for n in {names!r}])")
    env = dict(os.environ, KERN_DATASETS=str(tmp_path), KERN_MISSING_IMAGES="skip",
               PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
    for name in ("KERN_VG_MISSING_IMAGES", "KERN_REGISTER"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "1", "1"], out.stdout


def test_the_missing_image_error_names_the_variable(tmp_path):
    from kern_d2.data import load_oi_sgg
    from kern_d2.data.datasets.oi import oi_files

    write_oi_layout(str(tmp_path), {"test": _dicts()}, THINGS, PREDICATES, copy_images=False)
    with pytest.raises(FileNotFoundError, match=r"2 of 2 image files are missing: .*KERN_MISSING_IMAGES=skip"):
        load_oi_sgg(*oi_files(str(tmp_path), "test"))


# ---------------------------------------------------------------------------------------- Open Images V4 configs
def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}.") if hasattr(value, "items") else {f"{prefix}{key}": value})
    return out


def _load(name):
    cfg = add_kern_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "OI-KERN", name))
    return cfg


V4_KEYS = {"DATASETS.TRAIN", "DATASETS.TEST", "MODEL.ROI_HEADS.NUM_CLASSES", "OUTPUT_DIR"}
V4_RELATION_KEYS = V4_KEYS | {"DATASETS.SGG.VAL", "MODEL.WEIGHTS", "MODEL.ROI_RELATION_HEAD.NUM_PREDICATES",
                              "MODEL.ROI_RELATION_HEAD.PRIORS_FILE"}


@pytest.mark.parametrize("v6", ["faster_rcnn_R_101_FPN.yaml", "kern_predcls.yaml", "kern_sgcls.yaml",
                                "kern_sgdet.yaml"])
def test_open_images_v4_configs_are_the_v6_ones_on_the_v4_dataset(v6):
    """The V4 config of each phase differs from V6's in exactly the keys the README lists, all naming V4."""
    old, new = _flat(_load(v6)), _flat(_load(f"oiv4_{v6}"))
    changed = {key for key in old if old[key] != new[key]}
    assert changed == (V4_KEYS if v6.startswith("faster") else V4_RELATION_KEYS)
    for key in changed - {"MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_RELATION_HEAD.NUM_PREDICATES"}:
        assert "oiv4" in str(new[key]) and "oiv6" not in str(new[key]), (key, new[key])
    assert new["MODEL.ROI_HEADS.NUM_CLASSES"] == 57
    if v6.startswith("kern"):
        assert new["MODEL.ROI_RELATION_HEAD.NUM_PREDICATES"] == 10
        phase = {"kern_predcls.yaml": "oiv4_detection_R101_FPN", "kern_sgcls.yaml": "oiv4_kern_predcls",
                 "kern_sgdet.yaml": "oiv4_kern_sgcls"}[v6]
        assert new["MODEL.WEIGHTS"] == f"output/{phase}/model_final.pth"  # the previous V4 phase


def test_v4_class_counts_are_those_the_loader_reads_from_a_v4_categories_file(tmp_path):
    """V4's categories_dict.json has 57 object and 9 predicate names (PySGG's e2e_relBGNN_oiv4.yaml: 58 / 10 with
    background): the loader's C and P ("no relation" added) are the V4 configs' NUM_CLASSES and NUM_PREDICATES."""
    annotations = tmp_path / "oiv4" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "categories_dict.json").write_text(json.dumps(
        {"obj": [f"object{i}" for i in range(57)], "rel": [f"predicate{i}" for i in range(9)]}))
    prefix = f"pytest_oiv4_{uuid.uuid4().hex[:6]}"
    register_open_images(str(tmp_path / "oiv4"), prefix)
    try:
        things, predicates = sgg_dataset_classes(f"{prefix}_train")
    finally:
        _remove([f"{prefix}_{split}" for split in ("train", "val", "test")])
    cfg = _load("oiv4_kern_predcls.yaml")
    assert (len(things), len(predicates)) == (cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                                              cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES)


# --------------------------------------------------------------------------------- PySGG's folder, linked
def test_the_readme_command_links_pysggs_open_images_folders_into_kern_d2s_layout(tmp_path):
    """The README's ``ln -s`` block, run as written with PySGG's checkout at a temporary path: the builtin-style
    registration of ``datasets/oiv6`` (and ``oiv4``) loads PySGG's files and finds its images."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    (block,) = [textwrap.dedent(body) for _, body in re.findall(r"^( *)```bash\n(.*?)^\1```", readme, re.S | re.M)
                if "ln -s" in body and "openimages" in body]
    pysgg = tmp_path / "PySGG"
    dicts = _dicts(n=3)
    for version in ("open_image_v6", "open_image_v4"):  # PySGG's layout (pysgg/config/paths_catalog.py)
        root = pysgg / "datasets" / "openimages" / version
        write_oi_layout(str(root), {"train": dicts, "val": dicts, "test": dicts}, THINGS, PREDICATES,
                        copy_images=False)
        for d in dicts:
            _jpeg(str(root / "images" / f"{oi_image_stem(d['image_id'])}.jpg"), d)
    work = tmp_path / "kern_d2"
    work.mkdir()
    script = block.replace("/path/to/PySGG", str(pysgg))
    out = subprocess.run(["bash", "-euc", script], cwd=str(work), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for version in ("oiv6", "oiv4"):
        prefix = f"pytest_{version}_{uuid.uuid4().hex[:6]}"
        register_open_images(str(work / "datasets" / version), prefix)  # what the builtin oiv6_* / oiv4_* do
        try:
            records = DatasetCatalog.get(f"{prefix}_test")  # missing images are an error by default
            assert len(records) == len(dicts)
            assert all(os.path.isfile(r["file_name"]) for r in records)
            assert MetadataCatalog.get(f"{prefix}_test").thing_classes == THINGS
        finally:
            _remove([f"{prefix}_{split}" for split in ("train", "val", "test")])
