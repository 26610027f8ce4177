"""An empty VG split is a clear error naming the split, the counts and the val size; the builtin val size and
missing-image policy come from the environment; tools/compute_priors.py refuses an empty dataset."""
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.data import DatasetFormatError, load_vg_sgg, register_vg_sgg
from kern_d2.data.datasets.builtin import vg150_settings_from_env

from tests.helpers import REPO_ROOT
from tests.helpers.tool_modules import load_tool

CLASSES, PREDICATES = ["person", "hat"], ["wears"]


def small_vg(tmp_path, vg_writer, num_train=3, num_test=2, **kwargs):
    """``num_train`` + ``num_test`` images, each with two boxes and one relation; one more train image without
    relations (not usable)."""
    image = dict(width=200, height=100, boxes=[[10, 10, 50, 60], [40, 5, 90, 30]], labels=[1, 2],
                 relations=[[0, 1, 1]])
    images = [dict(image, split=0)] * num_train + [dict(image, split=2)] * num_test
    images.append(dict(width=200, height=100, split=0, boxes=[[10, 10, 50, 60]], labels=[1]))
    return vg_writer(str(tmp_path), images, CLASSES, PREDICATES, **kwargs)


def load(paths, split, **kwargs):
    return load_vg_sgg(paths["h5_file"], paths["dicts_file"], paths["image_data_file"], paths["image_root"], split,
                       **kwargs)


def test_train_split_swallowed_by_val_names_split_counts_and_setting(tmp_path, vg_writer):
    paths = small_vg(tmp_path, vg_writer)
    with pytest.raises(DatasetFormatError) as error:
        load(paths, "train", num_val_images=5000, missing_images="ignore", dataset_name="my_vg_train")
    message = str(error.value)
    assert "dataset my_vg_train" in message and "[train]" in message
    assert "3 usable train-split images" in message and "2 usable test-split images" in message
    assert "num_val_images=5000" in message and "KERN_VG_NUM_VAL" in message
    # with a val size that leaves images, the same files load: 3 usable - 1 val = 2 train images
    assert len(load(paths, "train", num_val_images=1, missing_images="ignore")) == 2


def test_registered_empty_split_fails_on_first_load_with_its_name(tmp_path, vg_writer):
    paths = small_vg(tmp_path, vg_writer, num_train=2)
    register_vg_sgg("empty_split_val0", paths["h5_file"], paths["dicts_file"], paths["image_data_file"],
                    paths["image_root"], "val", num_val_images=0, missing_images="ignore")
    with pytest.raises(DatasetFormatError, match=r"dataset empty_split_val0 .* num_val_images=0"):
        DatasetCatalog.get("empty_split_val0")


def test_split_emptied_by_missing_images_says_so(tmp_path, vg_writer):
    paths = small_vg(tmp_path, vg_writer)  # no image files written
    with pytest.raises(DatasetFormatError, match=r"\[test\] has no images.*2 rows were all dropped"):
        load(paths, "test", missing_images="skip")


def test_builtin_settings_from_the_environment():
    assert vg150_settings_from_env({}) == {"num_val_images": 5000, "missing_images": "error"}
    assert vg150_settings_from_env({"KERN_VG_NUM_VAL": "100", "KERN_VG_MISSING_IMAGES": "skip"}) == {
        "num_val_images": 100, "missing_images": "skip"}
    with pytest.raises(ValueError, match="KERN_VG_NUM_VAL must be a non-negative integer"):
        vg150_settings_from_env({"KERN_VG_NUM_VAL": "-3"})
    with pytest.raises(ValueError, match="KERN_VG_MISSING_IMAGES must be one of"):
        vg150_settings_from_env({"KERN_VG_MISSING_IMAGES": "drop"})


def test_builtin_vg150_uses_the_environment(tmp_path, vg_writer):
    """A fresh process with $KERN_DATASETS, $KERN_VG_NUM_VAL and $KERN_VG_MISSING_IMAGES: vg150_val has the set
    size and vg150_train skips the one train image whose file was removed."""
    paths = small_vg(tmp_path / "vg", vg_writer, num_train=4, write_images=True)
    os.remove(os.path.join(paths["image_root"], "4.jpg"))  # the last usable train image
    code = ("import kern_d2.data; from detectron2.data import DatasetCatalog; "
            "print(len(DatasetCatalog.get('vg150_val')), len(DatasetCatalog.get('vg150_train')))")
    env = dict(os.environ, KERN_DATASETS=str(tmp_path), KERN_VG_NUM_VAL="1", KERN_VG_MISSING_IMAGES="skip",
               PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "2"]  # 4 usable: 1 val, 3 train of which one file is missing


@pytest.mark.parametrize("dicts", [[], [{"file_name": "a.jpg", "annotations": [], "relations": np.zeros((0, 3))}]])
def test_compute_priors_refuses_a_dataset_without_images_or_relations(tmp_path, dicts):
    name = f"priors_empty_{len(dicts)}"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=CLASSES, predicate_classes=["__no_relation__"] + PREDICATES)
    output = tmp_path / "priors.npz"
    with pytest.raises(ValueError, match=rf"dataset {name} has {len(dicts)} images and 0 relations: refusing"):
        load_tool("compute_priors").main(["--dataset", name, "--output", str(output)])
    assert not output.exists()
