"""Knowledge priors: computation on a hand-made dataset, .npz round trip, checks, and checkpoint round trip."""
import os
import uuid

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from kern_d2.modeling.priors import (
    KnowledgePriors,
    compute_predicate_counts,
    compute_priors,
    load_priors,
    save_priors,
)

from tests.helpers.tool_modules import load_tool

THINGS = ["cat", "dog", "hat"]
PREDICATES = ["__no_relation__", "on", "near"]


def _ann(box, category, mode=BoxMode.XYXY_ABS):
    return {"bbox": list(map(float, box)), "bbox_mode": mode, "category_id": category}


def hand_dataset():
    """Three images. A: boxes 0 (cat) and 1 (dog) overlap, box 2 (cat) is apart; relations (0,1,on) twice and
    (2,1,near). B: box 0 (dog) and box 1 (hat) only touch (zero area), box 2 (hat, given as XYWH) lies inside box 1;
    relation (2,1,near). C: one hat, no relation."""
    return [
        {"file_name": "a.jpg", "image_id": 1, "height": 40, "width": 40,
         "annotations": [_ann([0, 0, 10, 10], 0), _ann([5, 5, 15, 15], 1), _ann([20, 20, 30, 30], 0)],
         "relations": np.array([[0, 1, 1], [0, 1, 1], [2, 1, 2]], dtype=np.int64)},
        {"file_name": "b.jpg", "image_id": 2, "height": 40, "width": 40,
         "annotations": [_ann([0, 0, 10, 10], 1), _ann([10, 0, 20, 10], 2),
                         _ann([12, 2, 4, 4], 2, BoxMode.XYWH_ABS)],
         "relations": np.array([[2, 1, 2]], dtype=np.int64)},
        {"file_name": "c.jpg", "image_id": 3, "height": 40, "width": 40,
         "annotations": [_ann([0, 0, 4, 4], 2)], "relations": np.zeros((0, 3), dtype=np.int64)},
    ]


def test_cooccurrence_per_class_pair():
    # Images with cat: {A}; dog: {A, B}; hat: {B, C}. Both: cat-dog {A}, dog-hat {B}. >= 2 instances: cat in A,
    # hat in B.
    cooc, _ = compute_priors(hand_dataset(), 3, 3)
    expected = [[1, 1, 0], [1 / 2, 0, 1 / 2], [0, 1 / 2, 1 / 2]]
    np.testing.assert_allclose(cooc, expected, rtol=1e-6)
    assert cooc.dtype == np.float32


def test_cooccurrence_per_box_pair():
    # Boxes: 2 cats, 2 dogs, 3 hats. Ordered box pairs: cat-dog 2 (A), dog-hat 2 (B), cat-cat 2 (A), hat-hat 2 (B).
    cooc, _ = compute_priors(hand_dataset(), 3, 3, per_box_pair=True)
    expected = [[2 / 2, 2 / 2, 0], [2 / 2, 0, 2 / 2], [0, 2 / 3, 2 / 3]]
    np.testing.assert_allclose(cooc, expected, rtol=1e-6)


def test_rel_prior_counts_overlap_background_smoothing():
    _, rel = compute_priors(hand_dataset(), 3, 3)
    assert rel.shape == (3, 3, 3) and rel.dtype == np.float32
    # (cat, dog): 'on' twice (duplicates count), 'near' once (A's box 2 -> 1, not overlapping but related); the
    # overlapping pair (0, 1) is related, so no background. (dog, cat): A's (1, 0) overlaps, unrelated.
    # (hat, hat): B's (1, 2) overlaps unrelated (the XYWH box converted), (2, 1) is 'near'. B's dog/hat touch only.
    expected = np.full((3, 3, 3), 1 / 3)
    expected[0, 1] = np.array([1, 3, 2]) / 6
    expected[1, 0] = np.array([2, 1, 1]) / 4
    expected[2, 2] = np.array([2, 1, 2]) / 5
    np.testing.assert_allclose(rel, expected, rtol=1e-6)
    np.testing.assert_allclose(rel.sum(axis=2), 1.0, rtol=1e-6)


def test_pair_enumeration_chunks_agree(monkeypatch):
    # Random images, counted with chunks of a few pairs (many chunks, split inside images) and in one chunk.
    import kern_d2.modeling.priors as priors_module

    rng = np.random.default_rng(0)
    dicts = []
    for image in range(20):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 50, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 30, size=(n, 2))], axis=1)
        rels = np.stack([rng.integers(0, n, 4), rng.integers(0, n, 4), rng.integers(1, 4, 4)], 1) if n else []
        dicts.append({"file_name": f"{image}.jpg",
                      "annotations": [_ann(b, int(rng.integers(0, 4))) for b in boxes],
                      "relations": np.asarray(rels, dtype=np.int64).reshape(-1, 3)})
    whole = compute_priors(dicts, 4, 4)
    monkeypatch.setattr(priors_module, "_PAIRS_PER_CHUNK", 5)
    chunked = compute_priors(dicts, 4, 4)
    np.testing.assert_array_equal(whole[1], chunked[1])
    # Column 0 against a direct double loop.
    background = np.zeros((4, 4))
    for d in dicts:
        boxes = [a["bbox"] for a in d["annotations"]]
        related = {(int(s), int(o)) for s, o, _ in d["relations"]}
        for i, bi in enumerate(boxes):
            for j, bj in enumerate(boxes):
                w = min(bi[2], bj[2]) - max(bi[0], bj[0])
                h = min(bi[3], bj[3]) - max(bi[1], bj[1])
                if i != j and w > 0 and h > 0 and (i, j) not in related:
                    background[d["annotations"][i]["category_id"], d["annotations"][j]["category_id"]] += 1
    counts = np.zeros((4, 4, 4))
    for d in dicts:
        for s, o, k in d["relations"]:
            counts[d["annotations"][s]["category_id"], d["annotations"][o]["category_id"], k] += 1
    counts[:, :, 0] = background
    np.testing.assert_allclose(whole[1], (counts + 1) / (counts + 1).sum(2, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d[1]["annotations"][0].update(category_id=3), "b.jpg has category_id outside"),
        (lambda d: d.__setitem__(0, {**d[0], "relations": np.array([[0, 3, 1]])}), "a.jpg has a relation"),
        (lambda d: d.__setitem__(0, {**d[0], "relations": np.array([[0, 1, 0]])}), "a.jpg has a predicate"),
    ],
)
def test_bad_annotations_name_the_image(change, message):
    dicts = hand_dataset()
    change(dicts)
    with pytest.raises(ValueError, match=message):
        compute_priors(dicts, 3, 3)


def test_save_load_round_trip(tmp_path):
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    path = str(tmp_path / "priors.npz")
    save_priors(path, cooc, rel, THINGS, PREDICATES)
    assert os.listdir(tmp_path) == ["priors.npz"]  # the temporary file was renamed, nothing left over
    loaded = load_priors(path, THINGS, PREDICATES)
    np.testing.assert_array_equal(loaded["obj_cooccurrence"], cooc)
    np.testing.assert_array_equal(loaded["rel_prior"], rel)
    assert loaded["thing_classes"] == THINGS and loaded["predicate_classes"] == PREDICATES
    with np.load(path, allow_pickle=False) as raw:  # plain numpy arrays, names as unicode
        assert raw["thing_classes"].dtype.kind == "U" and raw["rel_prior"].dtype == np.float32


def test_failed_save_keeps_the_old_file(tmp_path):
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    path = str(tmp_path / "priors.npz")
    save_priors(path, cooc, rel, THINGS, PREDICATES)
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="predicate_classes"):
        save_priors(path, cooc, rel, THINGS, PREDICATES[:2])
    with pytest.raises(ValueError, match="non-finite"):
        save_priors(path, cooc * np.nan, rel, THINGS, PREDICATES)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["priors.npz"]


def test_load_name_mismatches(tmp_path):
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    path = str(tmp_path / "priors.npz")
    save_priors(path, cooc, rel, THINGS, PREDICATES)
    with pytest.raises(ValueError, match=r"priors\.npz: 3 thing_classes but the dataset has 2"):
        load_priors(path, THINGS[:2], PREDICATES)
    with pytest.raises(ValueError, match=r"predicate_classes\[2\] is 'near' but the dataset's is 'under'"):
        load_priors(path, THINGS, ["__no_relation__", "on", "under"])


def test_load_refuses_pickle_and_bad_shapes(tmp_path):
    path = str(tmp_path / "pickled.npz")
    np.savez(path, obj_cooccurrence=np.zeros((3, 3), np.float32), rel_prior=np.zeros((3, 3, 3), np.float32),
             thing_classes=np.array(THINGS, dtype=object), predicate_classes=np.array(PREDICATES, dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_priors(path)
    path = str(tmp_path / "shapes.npz")
    np.savez(path, obj_cooccurrence=np.zeros((3, 3), np.float32), rel_prior=np.zeros((2, 2, 3), np.float32),
             thing_classes=np.array(THINGS), predicate_classes=np.array(PREDICATES))
    with pytest.raises(ValueError, match=r"shapes\.npz: rel_prior must be \[C, C, P\] with C = 3"):
        load_priors(path)


class _Model(nn.Module):
    def __init__(self, priors):
        super().__init__()
        self.priors = priors


def test_knowledge_priors_checkpoint_round_trip(tmp_path):
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    path = str(tmp_path / "priors.npz")
    save_priors(path, cooc, rel, THINGS, PREDICATES)
    model = _Model(KnowledgePriors.from_file(path, THINGS, PREDICATES))
    assert {"priors.obj_cooccurrence", "priors.rel_prior", "priors.sizes"} <= set(model.state_dict())
    model.priors.check_loaded()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")

    fresh = _Model(KnowledgePriors.empty(3, 3))
    with pytest.raises(RuntimeError, match="PRIORS_FILE"):
        fresh.priors.check_loaded()
    DetectionCheckpointer(fresh).load(str(tmp_path / "model.pth"))
    fresh.priors.check_loaded()
    torch.testing.assert_close(fresh.priors.obj_cooccurrence, torch.from_numpy(cooc))
    torch.testing.assert_close(fresh.priors.rel_prior, torch.from_numpy(rel))
    labels = torch.tensor([0, 1, 2])
    expected = torch.from_numpy(rel[[0, 1, 2], [2, 1, 0]])
    torch.testing.assert_close(fresh.priors.pair_prior(labels, labels.flip(0)), expected)


def test_knowledge_priors_shape_mismatch_is_an_error(tmp_path):
    DetectionCheckpointer(_Model(KnowledgePriors.uniform(3, 3)), save_dir=str(tmp_path)).save("model")
    with pytest.raises(ValueError, match="have 3 classes and 3 predicates, but the model has 4 classes and 3"):
        DetectionCheckpointer(_Model(KnowledgePriors.empty(4, 3))).load(str(tmp_path / "model.pth"))
    with pytest.raises(ValueError, match="have 3 classes and 3 predicates, but the model has 3 classes and 5"):
        _Model(KnowledgePriors.empty(3, 5)).load_state_dict(_Model(KnowledgePriors.uniform(3, 3)).state_dict())


def test_uniform_priors():
    priors = KnowledgePriors.uniform(4, 5)
    priors.check_loaded()
    torch.testing.assert_close(priors.obj_cooccurrence, torch.full((4, 4), 0.25))
    torch.testing.assert_close(priors.rel_prior, torch.full((4, 4, 5), 0.2))


def test_compute_priors_tool(tmp_path):
    name = f"test_priors_tool_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, hand_dataset)
    MetadataCatalog.get(name).set(thing_classes=THINGS, predicate_classes=PREDICATES)
    tool = load_tool("compute_priors")
    try:
        output = str(tmp_path / "tool.npz")
        tool.main(["--dataset", name, "--output", output, "--per-box-pair"])
        loaded = load_priors(output, THINGS, PREDICATES)
        expected_cooc, expected_rel = compute_priors(hand_dataset(), 3, 3, per_box_pair=True)
        np.testing.assert_array_equal(loaded["obj_cooccurrence"], expected_cooc)
        np.testing.assert_array_equal(loaded["rel_prior"], expected_rel)
        np.testing.assert_array_equal(loaded["predicate_counts"], [0, 2, 2])
        with pytest.raises(ValueError, match="no output file"):
            tool.main(["--dataset", name])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_predicate_counts_by_hand_and_in_the_file(tmp_path):
    # Relation rows: "on" twice in A (a duplicated row counts twice), "near" once in A and once in B.
    counts = compute_predicate_counts(hand_dataset(), 3, 3)
    assert counts.tolist() == [0, 2, 2] and counts.dtype == np.int64
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    path = str(tmp_path / "priors.npz")
    save_priors(path, cooc, rel, THINGS, PREDICATES, counts)
    assert load_priors(path)["predicate_counts"].tolist() == [0, 2, 2]
    priors = KnowledgePriors.from_file(path)
    assert priors.require_predicate_counts("test").tolist() == [0, 2, 2]
    with pytest.raises(ValueError, match=r"predicate_counts must be \[P\] with P = 3"):
        save_priors(path, cooc, rel, THINGS, PREDICATES, counts[:2])
    with pytest.raises(ValueError, match="non-negative integers"):
        save_priors(path, cooc, rel, THINGS, PREDICATES, np.array([0.5, 1.0, 2.0]))


def test_files_and_checkpoints_without_predicate_counts(tmp_path):
    """Files written before the counts existed still load; what needs the counts says which file lacks them. A
    checkpoint without counts keeps those of the model's priors file."""
    cooc, rel = compute_priors(hand_dataset(), 3, 3)
    old = str(tmp_path / "old.npz")
    save_priors(old, cooc, rel, THINGS, PREDICATES)
    assert load_priors(old)["predicate_counts"] is None
    priors = KnowledgePriors.from_file(old)
    priors.check_loaded()
    with pytest.raises(ValueError, match=r"LOSS_WEIGHTING needs .*priors file .*old\.npz.*compute_priors\.py"):
        priors.require_predicate_counts("LOSS_WEIGHTING")
    with pytest.raises(ValueError, match="uniform priors of MODEL.ROI_RELATION_HEAD.USE_PRIORS False"):
        KnowledgePriors.uniform(3, 3).require_predicate_counts("test")

    new = str(tmp_path / "new.npz")
    save_priors(new, cooc, rel, THINGS, PREDICATES, compute_predicate_counts(hand_dataset(), 3, 3))
    old_checkpoint = _Model(KnowledgePriors.from_file(old)).state_dict()
    model = _Model(KnowledgePriors.from_file(new))
    model.load_state_dict(old_checkpoint)
    assert model.priors.require_predicate_counts("test").tolist() == [0, 2, 2]
    empty = _Model(KnowledgePriors.empty(3, 3))
    empty.load_state_dict(old_checkpoint)
    empty.priors.check_loaded()
    with pytest.raises(ValueError, match="loaded checkpoint's priors"):
        empty.priors.require_predicate_counts("test")
    empty.load_state_dict(model.state_dict())
    assert empty.priors.require_predicate_counts("test").tolist() == [0, 2, 2]
