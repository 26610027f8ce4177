"""The released construction of the knowledge priors (compute_priors(..., construction="released")): against an
independent per-image-loop reference (tests/helpers/released_port_priors.py), against hand-derived numbers, the npz
field ``construction`` and the refusal of a file built otherwise than the config asks."""
import uuid

import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import kern_d2.modeling.priors as priors_module
from kern_d2 import add_kern_config
from kern_d2.modeling.priors import KnowledgePriors, build_priors, compute_priors, load_priors, save_priors

from tests.helpers.released_port_priors import drop_background, released_priors
from tests.helpers.tool_modules import load_tool

THINGS = ["cat", "dog", "hat", "cup"]
CAT, DOG, HAT, CUP = range(4)
PREDICATES = ["__no_relation__", "on", "near"]
ON, NEAR = 1, 2


def _image(name, height, width, boxes, classes, relations):
    return {
        "file_name": f"{name}.jpg", "image_id": len(name), "height": height, "width": width,
        "annotations": [{"bbox": list(map(float, b)), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}
                        for b, c in zip(boxes, classes)],
        "relations": np.array(relations, dtype=np.int64).reshape(-1, 3),
    }


def hand_dataset():
    """Six images; boxes at the released box scale (longer side 1024) except in E.

    A: a0 cat, a1 dog overlap; a2 cat and a3 hat are 1 pixel apart (x2 = 30, x1 = 31: +1-convention width 0, no
       overlap); a2 cat and a4 cup touch (x2 = x1 = 30: width 1, overlap, though their true area is 0); a3 hat and
       a4 cup overlap. Relations: (a0, a1, on) twice, (a2, a3, near) (dropped), (a2, a4, on), (a4, a2, near).
    B: its only relation is between boxes 1 pixel apart: the image is dropped.
    C: no relation: dropped.
    D: classes hat, hat, cat, dog (the first K = 3 boxes hold hat twice); d0/d1 and d2/d3 overlap.
    E: longer side 512 (factor 2): e0 and e1 are 0.5 true pixels apart, i.e. 1 pixel at the box scale (no
       overlap, though the +1 convention at the true size would say overlap); e2 touches e0 (1 pixel at box scale)
       and overlaps e1. Relations: (e0, e1, on) dropped, (e0, e2, near).
    F: cup, cup, dog, pairwise apart; its only relation is (f0, f0, on), a box with itself, which overlaps: kept,
       and with no overlapping pair every ordered pair counts as background.
    """
    return [
        _image("a", 768, 1024,
               [[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [31, 20, 40, 30], [30, 25, 50, 40]],
               [CAT, DOG, CAT, HAT, CUP],
               [[0, 1, ON], [0, 1, ON], [2, 3, NEAR], [2, 4, ON], [4, 2, NEAR]]),
        _image("b", 1024, 1024, [[0, 0, 10, 10], [12, 0, 20, 10]], [DOG, HAT], [[0, 1, NEAR]]),
        _image("c", 1024, 800, [[0, 0, 5, 5]], [CUP], []),
        _image("d", 1024, 1024,
               [[0, 0, 100, 100], [50, 50, 150, 150], [200, 0, 300, 100], [250, 50, 260, 60]],
               [HAT, HAT, CAT, DOG],
               [[3, 2, ON], [1, 0, NEAR]]),
        _image("e", 512, 300, [[0, 0, 10, 10], [10.5, 0, 20, 10], [10, 5, 15, 10]], [CAT, DOG, HAT],
               [[0, 1, ON], [0, 2, NEAR]]),
        _image("f", 1024, 1024, [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], [CUP, CUP, DOG],
               [[0, 0, ON]]),
    ]


def random_dataset(seed, num_images=30, num_classes=5, num_predicates=4):
    """Integer boxes at the box scale (often touching or 1 pixel apart), some images at half scale, duplicated and
    self relations, images without relations."""
    rng = np.random.default_rng(seed)
    dicts = []
    for index in range(num_images):
        n = int(rng.integers(0, 8))
        xy = rng.integers(0, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(0, 15, size=(n, 2))], axis=1).astype(np.float64)
        height, width = (1024, int(rng.integers(300, 1025))) if index % 3 else (int(rng.integers(200, 513)), 512)
        boxes = boxes * max(height, width) / 1024  # exact: the scale factor is 1 or 1/2
        r = int(rng.integers(0, 6)) if n else 0
        rels = np.stack([rng.integers(0, n, r), rng.integers(0, n, r), rng.integers(1, num_predicates, r)], 1)
        if r:
            rels = np.concatenate([rels, rels[:1]])  # a duplicate
        dicts.append(_image(str(index), height, width, boxes, rng.integers(0, num_classes, n), rels))
    return dicts


def test_hand_dataset_matches_the_reference():
    cooc, rel = compute_priors(hand_dataset(), 4, 3, construction="released")
    assert cooc.dtype == np.float32 and rel.dtype == np.float32 and rel.shape == (4, 4, 3)
    ref_cooc, ref_rel = released_priors(hand_dataset(), 4, 3)
    # Background row and column: zero in the co-occurrence, only the +1 of column 0 in the predicate prior.
    assert not ref_cooc[0].any() and not ref_cooc[:, 0].any()
    np.testing.assert_array_equal(ref_rel[0, :, 0], 1.0)
    np.testing.assert_array_equal(ref_rel[:, 0, 0], 1.0)
    assert not ref_rel[0, :, 1:].any() and not ref_rel[:, 0, 1:].any()
    np.testing.assert_allclose(cooc, drop_background(ref_cooc), rtol=0, atol=1e-6)
    np.testing.assert_allclose(rel, drop_background(ref_rel), rtol=0, atol=1e-6)
    # float64 internals against the reference to 1e-10.
    cooc64, rel64 = priors_module._released_priors(hand_dataset(), 4, 3, 1024.0)
    np.testing.assert_allclose(cooc64, drop_background(ref_cooc), rtol=0, atol=1e-10)
    np.testing.assert_allclose(rel64, drop_background(ref_rel), rtol=0, atol=1e-10)


def test_hand_derived_numbers():
    # Kept images A, D, E, F (B: no overlapping relation, C: none). Images with cat: A, D, E; dog: A, D, E, F;
    # hat: A, D, E; cup: A, F.
    cooc, rel = priors_module._released_priors(hand_dataset(), 4, 3, 1024.0)
    # Co-occurrence, executed line. A: K = 4, first boxes cat, dog, cat, hat -> (cat, cat) 2 + 1 (two cats),
    # (cat, dog) 2, (cat, hat) 2, (dog, cat) 2, (dog, hat) 1, (hat, cat) 2, (hat, dog) 1. D: K = 3, first boxes hat,
    # hat, cat -> (hat, hat) 2 + 1, (hat, cat) 2, (cat, hat) 2. E: K = 3, every ordered pair of cat, dog, hat once.
    # F: K = 2, first boxes cup, cup -> (cup, cup) 2 + 1.
    expected_cooc = np.array([
        [3 / 3, 3 / 3, 5 / 3, 0],
        [3 / 4, 0, 2 / 4, 0],
        [5 / 3, 2 / 3, 3 / 3, 0],
        [0, 0, 0, 3 / 2],
    ])
    np.testing.assert_allclose(cooc, expected_cooc, rtol=0, atol=1e-12)
    # Predicate prior: [column 0 = overlapping ordered pairs + 1, on, near] / sum.
    # (cat, dog): A's (a0, a1) and D's (d2, d3) overlap -> 2 + 1; "on" twice (duplicate counted).
    np.testing.assert_allclose(rel[CAT, DOG], np.array([3, 2, 0]) / 5, atol=1e-12)
    # (cat, cup): A's touching (a2, a4) -> 1 + 1; "on" once.
    np.testing.assert_allclose(rel[CAT, CUP], np.array([2, 1, 0]) / 3, atol=1e-12)
    # (cat, hat): E's (e0, e2), 1 pixel at box scale -> 1 + 1; "near" once. A's (a2, a3) is no pair and its
    # relation was dropped.
    np.testing.assert_allclose(rel[CAT, HAT], np.array([2, 0, 1]) / 3, atol=1e-12)
    # (dog, cat): A's (a1, a0) and D's (d3, d2) -> 2 + 1; "on" once (D).
    np.testing.assert_allclose(rel[DOG, CAT], np.array([3, 1, 0]) / 4, atol=1e-12)
    # (hat, hat): D's (d0, d1) both ways -> 2 + 1; "near" once.
    np.testing.assert_allclose(rel[HAT, HAT], np.array([3, 0, 1]) / 4, atol=1e-12)
    # (cup, cup): F has no overlapping pair -> all ordered pairs: (f0, f1), (f1, f0) -> 2 + 1; "on" (self) once.
    np.testing.assert_allclose(rel[CUP, CUP], np.array([3, 1, 0]) / 4, atol=1e-12)
    # (cup, dog): F's fallback pairs (f0, f2), (f1, f2) -> 2 + 1. (dog, hat): E's (e1, e2) -> 1 + 1.
    np.testing.assert_allclose(rel[CUP, DOG], np.array([1, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(rel[DOG, HAT], np.array([1, 0, 0]), atol=1e-12)
    # Unseen pair: only the +1 of column 0.
    np.testing.assert_allclose(rel[CAT, CAT], np.array([1, 0, 0]), atol=1e-12)
    # E's boxes tested in the dicts' own coordinates (box_scale=None): e0 and e1 (0.5 apart) now overlap.
    _, rel_true_size = priors_module._released_priors(hand_dataset(), 4, 3, None)
    np.testing.assert_allclose(rel_true_size[CAT, DOG], np.array([4, 3, 0]) / 7, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_datasets_match_the_reference(seed, monkeypatch):
    dicts = random_dataset(seed)  # classes 0..4 of 6: class 5 never occurs
    ref_cooc, ref_rel = released_priors(dicts, 6, 4)
    cooc, rel = priors_module._released_priors(dicts, 6, 4, 1024.0)
    # A class absent from the kept images: NaN row in the released code (0 / 0), 0 here.
    absent = np.isnan(drop_background(ref_cooc)).any(axis=1)
    assert absent[5] and not cooc[absent].any()
    np.testing.assert_allclose(cooc[~absent], drop_background(ref_cooc)[~absent], rtol=0, atol=1e-10)
    np.testing.assert_allclose(rel, drop_background(ref_rel), rtol=0, atol=1e-10)
    monkeypatch.setattr(priors_module, "_PAIRS_PER_CHUNK", 3)  # many chunks, split inside images
    chunked = priors_module._released_priors(dicts, 6, 4, 1024.0)
    np.testing.assert_array_equal(chunked[0], cooc)
    np.testing.assert_array_equal(chunked[1], rel)


def test_intended_line_is_kern_d2_per_class_pair_on_the_kept_images():
    dicts = random_dataset(3)
    intended, _ = released_priors(dicts, 5, 4, intended=True)
    kept_names = [d["file_name"] for d in dicts if _kept(d)]
    kern_d2_cooc, _ = compute_priors([d for d in dicts if d["file_name"] in kept_names], 5, 4)
    present = ~np.isnan(intended[1:, 1])
    np.testing.assert_allclose(kern_d2_cooc[present], drop_background(intended)[present], atol=1e-6)


def _kept(d):
    """The reference's image filter, for one image (released_port_priors.ReleasedTrainSet)."""
    from tests.helpers.released_port_priors import ReleasedTrainSet

    return len(ReleasedTrainSet([d], 5, 4)) == 1


def test_released_argument_checks():
    with pytest.raises(ValueError, match="construction must be one of"):
        compute_priors(hand_dataset(), 4, 3, construction="paper")
    with pytest.raises(ValueError, match="per_box_pair is a kern_d2 option"):
        compute_priors(hand_dataset(), 4, 3, per_box_pair=True, construction="released")
    dicts = hand_dataset()
    del dicts[3]["height"]
    with pytest.raises(ValueError, match="image d.jpg has no height/width"):
        compute_priors(dicts, 4, 3, construction="released")


def _save(path, construction=None):
    cooc, rel = compute_priors(hand_dataset(), 4, 3, construction=construction or "kern_d2")
    if construction is None:  # a file written before kern_d2 recorded the construction
        save_priors(path, cooc, rel, THINGS, PREDICATES)
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files if k != "construction"}
        np.savez(path, **arrays)
    else:
        save_priors(path, cooc, rel, THINGS, PREDICATES, construction=construction)
    return path


def test_construction_field_round_trip_and_old_files(tmp_path):
    released = _save(str(tmp_path / "released.npz"), "released")
    kern_d2 = _save(str(tmp_path / "kern_d2.npz"), "kern_d2")
    old = _save(str(tmp_path / "old.npz"))
    with np.load(old) as data:
        assert "construction" not in data.files
    with np.load(released, allow_pickle=False) as data:
        assert str(data["construction"]) == "released" and data["construction"].dtype.kind == "U"
    assert load_priors(released)["construction"] == "released"
    assert load_priors(kern_d2)["construction"] == "kern_d2"
    assert load_priors(old)["construction"] == "kern_d2"
    assert KnowledgePriors.from_file(released).construction == "released"
    assert KnowledgePriors.from_file(old, construction="kern_d2").construction == "kern_d2"
    assert "construction" not in KnowledgePriors.from_file(released).state_dict()
    with pytest.raises(ValueError, match="construction must be one of"):
        save_priors(str(tmp_path / "bad.npz"), np.zeros((4, 4)), np.full((4, 4, 3), 1 / 3), THINGS, PREDICATES,
                    construction="paper")


@pytest.mark.parametrize("made, asked", [("kern_d2", "released"), ("released", "kern_d2"), (None, "released")])
def test_mismatching_construction_is_refused(tmp_path, made, asked):
    path = _save(str(tmp_path / "priors.npz"), made)
    found = made or "kern_d2"
    fix = "with --released" if asked == "released" else "without --released"
    pattern = (rf"priors\.npz holds priors of the '{found}' construction, but the config asks for '{asked}' "
               rf"\(MODEL\.ROI_RELATION_HEAD\.PRIOR_CONSTRUCTION.*tools/compute_priors\.py {fix}.*"
               rf"PRIOR_CONSTRUCTION {found}")
    with pytest.raises(ValueError, match=pattern):
        KnowledgePriors.from_file(path, THINGS, PREDICATES, construction=asked)


@pytest.fixture
def registered():
    name = f"test_priors_released_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, hand_dataset)
    MetadataCatalog.get(name).set(thing_classes=THINGS, predicate_classes=PREDICATES)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("made", ["kern_d2", "released"])
@pytest.mark.parametrize("keys", [{}, {"VARIANT": "released"}, {"PRIOR_CONSTRUCTION": "released"},
                                  {"VARIANT": "released", "PRIOR_CONSTRUCTION": "kern_d2"}])
def test_build_priors_checks_the_config(tmp_path, registered, made, keys):
    path = _save(str(tmp_path / "priors.npz"), made)
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (registered,), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = 4, 3
    cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE = path
    for key, value in keys.items():
        cfg.MODEL.ROI_RELATION_HEAD[key] = value
    asked = keys.get("PRIOR_CONSTRUCTION") or ("released" if keys.get("VARIANT") == "released" else "kern_d2")
    if asked == made:
        assert build_priors(cfg).construction == made
    else:
        with pytest.raises(ValueError, match=f"config asks for '{asked}'"):
            build_priors(cfg)


def test_compute_priors_tool_released(tmp_path, registered, capsys):
    tool = load_tool("compute_priors")
    output = str(tmp_path / "released.npz")
    tool.main(["--dataset", registered, "--output", output, "--released"])
    assert "released construction" in capsys.readouterr().out
    loaded = load_priors(output, THINGS, PREDICATES)
    assert loaded["construction"] == "released"
    expected_cooc, expected_rel = compute_priors(hand_dataset(), 4, 3, construction="released")
    np.testing.assert_array_equal(loaded["obj_cooccurrence"], expected_cooc)
    np.testing.assert_array_equal(loaded["rel_prior"], expected_rel)
    ref_cooc, ref_rel = released_priors(hand_dataset(), 4, 3)
    np.testing.assert_allclose(loaded["rel_prior"], drop_background(ref_rel), atol=1e-6)
    np.testing.assert_allclose(loaded["obj_cooccurrence"], drop_background(ref_cooc), atol=1e-6)
    plain = str(tmp_path / "kern_d2.npz")
    tool.main(["--dataset", registered, "--output", plain])
    assert "kern_d2 construction, co-occurrence per class pair" in capsys.readouterr().out
    assert load_priors(plain)["construction"] == "kern_d2"
    with pytest.raises(SystemExit):  # argparse: --released and --per-box-pair exclude each other
        tool.get_parser().parse_args(["--released", "--per-box-pair"])



def test_inexact_box_scale_keeps_the_integer_grid():
    """VG dicts hold the h5's integer 1024-scale boxes times max(height, width) / 1024: brought back to the box scale
    they miss the integers by rounding errors, which must not make adjacent boxes (+1-convention width 0) overlap."""
    exact, scaled = [], []
    for longer in range(600, 1025):  # most of these factors are not exact binary fractions
        start = longer % 7
        boxes = [[start + 7 * i, 0, start + 7 * i + 6, 10] for i in range(20)]  # box i + 1 starts at x2 + 1 of box i
        boxes.append([0, 0, 200, 10])  # overlaps every box
        classes = [i % 4 for i in range(20)] + [4]
        relations = [[20, 0, ON], [0, 1, NEAR]]  # the second is between adjacent boxes: dropped
        exact.append(_image(f"exact{longer}", 1024, 512, boxes, classes, relations))
        scaled.append(_image(f"scaled{longer}", longer, 300, np.array(boxes, dtype=np.float64) * (longer / 1024),
                             classes, relations))
    ref_cooc, ref_rel = released_priors(exact, 6, 3)
    cooc, rel = priors_module._released_priors(scaled, 6, 3, 1024.0)
    absent = np.isnan(drop_background(ref_cooc)).any(axis=1)
    np.testing.assert_allclose(cooc[~absent], drop_background(ref_cooc)[~absent], rtol=0, atol=1e-10)
    np.testing.assert_allclose(rel, drop_background(ref_rel), rtol=0, atol=1e-10)
    assert rel[0, 1, 0] == 1.0 and rel[0, 1, NEAR] == 0.0  # no adjacent pair counted, their relation dropped
