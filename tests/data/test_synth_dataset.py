"""The synth benchmark generator: VG format through the real loader, determinism, and the design's statistics."""
import itertools
import os
from collections import Counter

import h5py
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.config import add_kern_config
from kern_d2.data import register_toy
from kern_d2.data.generators.synth import (
    CONTACT_RULES,
    HELD_OUT_TRIPLETS,
    LOOK_ALIKES,
    PREDICATES,
    SCENES,
    THING_CLASSES,
    _APPEARANCES,
    generate_synth_dataset,
    generate_synth_images,
    geometric_relation,
    synth_statistics,
)

from tests.helpers import REPO_ROOT



def read_h5(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


@pytest.fixture(scope="module")
def sample():
    """600 train-split and 150 test images of seed 0, not written (the statistics' sample)."""
    images = generate_synth_images(seed=0, num_train=600, num_test=150)
    return images[:600], images[600:]


def test_round_trip_through_the_vg_loader(tmp_path):
    root = str(tmp_path / "synth")
    generate_synth_dataset(root, num_train=12, num_test=5, num_val=3, seed=1, workers=1)
    expected = generate_synth_images(seed=1, num_train=12, num_test=5)
    register_toy(root, prefix="pytest_synth")
    try:
        train, test = DatasetCatalog.get("pytest_synth_train"), DatasetCatalog.get("pytest_synth_test")
        assert len(DatasetCatalog.get("pytest_synth_val")) == 3 and len(train) == 9 and len(test) == 5
        assert MetadataCatalog.get("pytest_synth_train").thing_classes == THING_CLASSES
        assert MetadataCatalog.get("pytest_synth_train").predicate_classes[1:] == PREDICATES
        for d, image in zip(train + test, expected[3:]):
            assert (d["width"], d["height"]) == (image.width, image.height)
            assert [a["category_id"] for a in d["annotations"]] == image.classes.tolist()
            # boxes pass through the 1024 scale of the h5 (rounded to integers there)
            tolerance = max(image.width, image.height) / 1024
            np.testing.assert_allclose([a["bbox"] for a in d["annotations"]], image.boxes, atol=tolerance)
            assert sorted(map(tuple, d["relations"].tolist())) == sorted(map(tuple, image.relations.tolist()))
            assert os.path.isfile(d["file_name"])
    finally:
        for split in ("train", "val", "test"):
            DatasetCatalog.remove(f"pytest_synth_{split}")
            MetadataCatalog.remove(f"pytest_synth_{split}")


def test_same_seed_same_files_for_any_number_of_workers(tmp_path):
    generate_synth_dataset(str(tmp_path / "a"), num_train=6, num_test=3, num_val=2, seed=5, workers=1)
    generate_synth_dataset(str(tmp_path / "b"), num_train=6, num_test=3, num_val=2, seed=5, workers=2)
    generate_synth_dataset(str(tmp_path / "c"), num_train=6, num_test=3, num_val=2, seed=6, workers=1)
    a, b, c = (read_h5(str(tmp_path / n / "VG-SGG.h5")) for n in "abc")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["labels"].shape != c["labels"].shape or (a["labels"] != c["labels"]).any()
    for name in ("image_data.json", "VG-SGG-dicts.json", "VG_100K/1.jpg", "VG_100K/9.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_look_alikes_are_drawn_alike_and_never_share_a_scene():
    for seen, twin in LOOK_ALIKES:
        assert _APPEARANCES[seen] == _APPEARANCES[twin]
        assert not any(seen in classes and twin in classes for classes in SCENES.values()), (seen, twin)
    appearances = Counter(_APPEARANCES[name][:2] for name in THING_CLASSES)
    assert sum(count == 2 for count in appearances.values()) == len(LOOK_ALIKES)
    assert max(appearances.values()) == 2


def test_look_alikes_get_other_predicates_for_the_same_partner_and_layout():
    """Where only the class decides the predicate: a look-alike pair, one partner, one layout, two names."""
    named = {}
    for layout, subjects, objects, predicates, _ in CONTACT_RULES:
        for s, o in itertools.product(subjects, objects):
            named.setdefault((layout, s, o), max(predicates, key=predicates.get))
    decided = {(named[(lay, a, o)], named[(lay, b, o)])
               for a, b in LOOK_ALIKES for (lay, s, o) in named if s == a and (lay, b, o) in named
               if named[(lay, a, o)] != named[(lay, b, o)]}
    assert ("sitting on", "on") in decided and ("wearing", "has") in decided and ("lying on", "on") in decided


def test_geometric_relations_by_hand():
    a = np.array([0, 0, 20, 20])
    assert geometric_relation(a, np.array([30, 5, 50, 25])) == "left of"
    assert geometric_relation(np.array([30, 5, 50, 25]), a) is None  # the right one is not "left of"
    assert geometric_relation(a, np.array([2, 40, 22, 60])) == "above"
    assert geometric_relation(np.array([2, 40, 22, 60]), a) == "under"
    assert geometric_relation(a, np.array([30, 30, 50, 50])) == "near"
    assert geometric_relation(a, np.array([200, 200, 220, 220])) is None


def test_statistics_of_the_design(sample):
    train, test = sample
    stats = synth_statistics(train, test)
    assert 20 <= len(THING_CLASSES) <= 40 and 20 <= len(PREDICATES) <= 30
    assert stats["objects_per_image"]["min"] >= 6 and stats["objects_per_image"]["max"] <= 20
    assert stats["pairs_with_relation"] < 0.1  # sparse graphs
    shares = stats["predicate_share"]
    assert max(shares, key=shares.get) == "on" and shares["on"] >= 0.25  # head
    assert sum(0 < share < 0.01 for share in shares.values()) >= 3  # tail
    assert all(256 <= im.width <= 512 and 256 <= im.height <= 512 for im in train + test)


def test_some_pairs_carry_two_predicates(sample):
    train, _ = sample
    multi = sum(
        max(Counter(map(tuple, im.relations[:, :2].tolist())).values(), default=0) > 1 for im in train
    )
    assert multi > 0.05 * len(train)


def test_held_out_triplets_only_in_test(sample):
    train, test = sample

    def triplets(images):
        return {(THING_CLASSES[im.classes[s]], PREDICATES[p - 1], THING_CLASSES[im.classes[o]])
                for im in images for s, o, p in im.relations.tolist()}

    assert not triplets(train) & HELD_OUT_TRIPLETS
    assert triplets(test) & HELD_OUT_TRIPLETS
    assert synth_statistics(train, test)["zero_shot_test_triplets"] > 0


@pytest.mark.parametrize("config", ["configs/synth/Base-Synth-KERN.yaml", "configs/synth/synth_detector.yaml"])
def test_configs_match_the_generator(config):
    cfg = add_kern_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO_ROOT, config))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(THING_CLASSES)
    if "KERN" in config:
        assert cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES == len(PREDICATES) + 1
