import os
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from kern_d2.config import add_kern_config
from kern_d2.data import SGGDatasetMapper, sample_one_predicate_per_pair
from kern_d2.structures import Relations

WIDTH, HEIGHT = 100, 50
BOXES = [[10, 5, 30, 25], [60, 10, 90, 40], [40, 0, 50, 50]]
CLASSES = [3, 1, 4]
RELATIONS = [[0, 1, 2], [1, 0, 5], [2, 0, 1]]


@pytest.fixture
def dataset_dict(tmp_path):
    file_name = os.path.join(tmp_path, "img.jpg")
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, : WIDTH // 2] = 255  # left half white, so a flip is visible in pixels
    cv2.imwrite(file_name, image)
    return {
        "file_name": file_name, "image_id": 7, "height": HEIGHT, "width": WIDTH,
        "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c} for b, c in zip(BOXES, CLASSES)],
        "relations": np.array(RELATIONS, dtype=np.int64),
    }


def test_horizontal_flip_flips_boxes_keeps_relations(dataset_dict):
    mapper = SGGDatasetMapper(True, augmentations=[T.HFlipTransform(WIDTH)], image_format="BGR",
                              sample_duplicate_pairs=False)
    out = mapper(dataset_dict)
    inst = out["instances"]
    # x -> 100 - x: [10, 30] -> [70, 90], [60, 90] -> [10, 40], [40, 50] -> [50, 60]
    assert inst.gt_boxes.tensor.tolist() == [[70, 5, 90, 25], [10, 10, 40, 40], [50, 0, 60, 50]]
    assert inst.gt_classes.tolist() == CLASSES and inst.gt_classes.dtype == torch.int64
    assert isinstance(inst.gt_relations, Relations)
    assert inst.gt_relations.tensor.tolist() == RELATIONS  # subject stays subject
    assert out["relations"].tolist() == RELATIONS and out["relations"].dtype == torch.int64
    assert out["image"].shape == (3, HEIGHT, WIDTH)
    assert out["image"][:, :, -5:].float().mean() > 250 and out["image"][:, :, :5].float().mean() < 5
    assert "annotations" not in out
    assert (out["height"], out["width"], out["image_id"]) == (HEIGHT, WIDTH, 7)


def test_resize_scales_boxes(dataset_dict):
    mapper = SGGDatasetMapper(False, augmentations=[T.ResizeShortestEdge(100, 1000)], image_format="RGB")
    out = mapper(dataset_dict)
    assert out["image"].shape == (3, 100, 200)
    assert out["instances"].image_size == (100, 200)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), np.array(BOXES) * 2)
    assert out["instances"].gt_relations.tensor.tolist() == RELATIONS
    # original-size annotations stay at test time, for the evaluator
    assert [a["bbox"] for a in out["annotations"]] == BOXES


def test_resize_then_flip(dataset_dict):
    mapper = SGGDatasetMapper(True, augmentations=[T.ResizeShortestEdge(25, 1000), T.HFlipTransform(50)],
                              image_format="BGR", sample_duplicate_pairs=False)
    out = mapper(dataset_dict)
    # scale 0.5 then x -> 50 - x
    assert out["instances"].gt_boxes.tensor.tolist() == [[35, 2.5, 45, 12.5], [5, 5, 20, 20], [25, 0, 30, 25]]
    assert out["relations"].tolist() == RELATIONS


def test_from_config(dataset_dict):
    cfg = add_kern_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (40,), 400, "horizontal"
    train = SGGDatasetMapper(cfg, is_train=True)
    kinds = [type(a) for a in train.augmentations.augs]
    assert kinds == [T.ResizeShortestEdge, T.RandomFlip] and train.sample_duplicate_pairs
    assert train.augmentations.augs[0].short_edge_length == (40,)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATASETS.SGG.SAMPLE_DUPLICATE_PAIRS = False
    assert [type(a) for a in SGGDatasetMapper(cfg, is_train=True).augmentations.augs] == [T.ResizeShortestEdge]
    assert not SGGDatasetMapper(cfg, is_train=True).sample_duplicate_pairs
    test = SGGDatasetMapper(cfg, is_train=False)
    assert [type(a) for a in test.augmentations.augs] == [T.ResizeShortestEdge] and not test.is_train
    out = SGGDatasetMapper(cfg, is_train=True)(dataset_dict)
    assert out["image"].shape == (3, 40, 80) and out["relations"].tolist() == RELATIONS
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="INPUT.CROP is not supported"):
        SGGDatasetMapper(cfg, is_train=True)


DUPLICATED = np.array([[0, 1, 1], [0, 1, 2], [1, 0, 3], [0, 1, 4], [2, 0, 1]], dtype=np.int64)


def test_sample_one_predicate_per_pair():
    rng = np.random.RandomState(0)
    seen = set()
    for _ in range(60):
        rows = sample_one_predicate_per_pair(DUPLICATED, rng)
        assert len(rows) == 3
        pairs = [tuple(r[:2]) for r in rows.tolist()]
        assert sorted(pairs) == [(0, 1), (1, 0), (2, 0)]
        assert [r for r in rows.tolist() if tuple(r[:2]) != (0, 1)] == [[1, 0, 3], [2, 0, 1]]  # order kept
        seen.add(int(rows[[p == (0, 1) for p in pairs]][0, 2]))
    assert seen == {1, 2, 4}


def test_duplicate_pairs_sampled_in_training_all_kept_at_test(dataset_dict):
    dataset_dict["relations"] = DUPLICATED
    np.random.seed(0)
    train = SGGDatasetMapper(True, augmentations=[], image_format="BGR", sample_duplicate_pairs=True)
    predicates = set()
    for _ in range(30):
        out = train(dataset_dict)
        rows = out["relations"]
        assert len(rows) == 3 and rows.tolist() == out["instances"].gt_relations.tensor.tolist()
        predicates.add(int(rows[(rows[:, 0] == 0) & (rows[:, 1] == 1), 2]))
    assert predicates == {1, 2, 4}
    test = SGGDatasetMapper(False, augmentations=[], image_format="BGR", sample_duplicate_pairs=True)
    out = test(dataset_dict)
    assert out["relations"].tolist() == DUPLICATED.tolist()
    assert out["instances"].gt_relations.tensor.tolist() == DUPLICATED.tolist()
    no_sampling = SGGDatasetMapper(True, augmentations=[], image_format="BGR", sample_duplicate_pairs=False)
    assert no_sampling(dataset_dict)["relations"].tolist() == DUPLICATED.tolist()


def test_box_that_loses_its_area_is_kept(dataset_dict):
    crop = T.CropTransform(0, 0, 35, 50)  # box 1 [60, 90] ends up outside the crop
    mapper = SGGDatasetMapper(True, augmentations=[crop], image_format="BGR", sample_duplicate_pairs=False)
    out = mapper(dataset_dict)
    assert len(out["instances"]) == 3 and out["instances"].gt_boxes.tensor[1].tolist() == [35, 10, 35, 40]
    assert out["relations"].tolist() == RELATIONS


def test_unreadable_image_names_file(dataset_dict):
    with open(dataset_dict["file_name"], "wb") as f:
        f.write(b"not a jpeg")
    mapper = SGGDatasetMapper(False, augmentations=[], image_format="BGR")
    with pytest.raises(OSError, match="cannot read image " + re.escape(dataset_dict["file_name"])):
        mapper(dataset_dict)
    os.remove(dataset_dict["file_name"])
    with pytest.raises(OSError, match="cannot read image " + re.escape(dataset_dict["file_name"])):
        mapper(dataset_dict)


def test_image_size_mismatch_names_file(dataset_dict):
    dataset_dict["width"] = WIDTH + 1
    with pytest.raises(Exception, match=re.escape(dataset_dict["file_name"])):
        SGGDatasetMapper(False, augmentations=[], image_format="BGR")(dataset_dict)
