"""CompactTransfer: mapped dicts reach the main process unchanged, with one shared-memory block per image."""
import os
import pickle
from multiprocessing.reduction import ForkingPickler

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import BoxMode
from torch.utils.data import DataLoader

from kern_d2.config import add_kern_config
from kern_d2.data import CompactTransfer, SGGDatasetMapper
from kern_d2.data.transfer import LARGE_TENSOR_BYTES
from kern_d2.engine.trainer import _worker_mapper


def _config(num_workers: int = 0):
    cfg = add_kern_config(get_cfg())
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 400  # images of 3 x 160 x 213-320: above 64 KB
    cfg.DATALOADER.NUM_WORKERS = num_workers
    return cfg


@pytest.fixture
def dataset_dicts(tmp_path):
    rng = np.random.default_rng(0)
    dicts = []
    for i, (width, height) in enumerate([(200, 150), (150, 200), (300, 150), (160, 160)]):
        file_name = os.path.join(tmp_path, f"{i}.jpg")
        cv2.imwrite(file_name, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        boxes = [[5, 5, 60, 70], [50, 20, 140, 120], [0, 0, width, height]]
        dicts.append({
            "file_name": file_name, "image_id": i, "height": height, "width": width,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}
                            for b, c in zip(boxes, [3, 1, i])],
            "relations": np.array([[0, 1, 2], [1, 2, 5], [2, 0, 1 + i]], dtype=np.int64),
        })
    return dicts


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["relations"], b["relations"])
    for key in ("file_name", "image_id", "height", "width", "annotations"):
        assert a[key] == b[key]
    ia, ib = a["instances"], b["instances"]
    assert ia.image_size == ib.image_size and ia.get_fields().keys() == ib.get_fields().keys()
    assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor) and torch.equal(ia.gt_classes, ib.gt_classes)
    assert torch.equal(ia.gt_relations.tensor, ib.gt_relations.tensor)
    assert len(ia.gt_relations) == len(ib.gt_relations)


def test_workers_deliver_the_same_dicts(dataset_dicts):
    mapper = SGGDatasetMapper(_config(), is_train=False)
    loader = DataLoader(MapDataset(DatasetFromList(dataset_dicts, copy=False), CompactTransfer(mapper)),
                        batch_size=1, num_workers=2, collate_fn=trivial_batch_collator)
    received = [batch[0] for batch in loader]
    assert [type(d) for d in received] == [dict] * len(dataset_dicts)  # not the wrapper: rebuilt on receipt
    for got, d in zip(received, dataset_dicts):
        _assert_same(got, mapper(d))


def test_only_large_tensors_keep_their_own_block(dataset_dicts):
    mapped = SGGDatasetMapper(_config(), is_train=False)(dataset_dicts[0])
    assert mapped["image"].numel() >= LARGE_TENSOR_BYTES  # uint8: bytes = elements
    rebuild, (large, rest) = CompactTransfer(lambda d: mapped)(dataset_dicts[0]).__reduce__()
    assert list(large) == ["image"] and large["image"] is mapped["image"]
    assert isinstance(rest, bytes)
    _assert_same(rebuild(large, rest), mapped)
    # Pickled as a worker pickles (PyTorch's ForkingPickler moves each tensor it meets into shared memory, in
    # place): the compact item shares the image alone, the plain dict all five tensors.
    mapper = SGGDatasetMapper(_config(), is_train=False)
    compact, plain = mapper(dataset_dicts[0]), mapper(dataset_dicts[0])
    ForkingPickler.dumps(CompactTransfer(lambda d: compact)(None))
    ForkingPickler.dumps(plain)
    assert [t.is_shared() for t in _tensors(compact)] == [True, False, False, False, False]
    assert [t.is_shared() for t in _tensors(plain)] == [True] * 5


def _tensors(mapped: dict):
    instances = mapped["instances"]
    return [mapped["image"], instances.gt_boxes.tensor, instances.gt_classes, instances.gt_relations.tensor,
            mapped["relations"]]


def test_tensor_kinds_round_trip():
    item = {"ints": torch.arange(6).reshape(2, 3).t(),  # not contiguous
            "bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),  # numpy has no bfloat16
            "flags": torch.tensor([True, False]), "empty": torch.zeros(0, 3), "text": "x"}
    rebuild, args = CompactTransfer(lambda d: item)(None).__reduce__()
    out = rebuild(*pickle.loads(pickle.dumps(args)))
    for key in ("ints", "bf16", "flags", "empty"):
        assert out[key].dtype == item[key].dtype and torch.equal(out[key], item[key])
    assert out["text"] == "x"


def test_skipped_image_stays_none():
    assert CompactTransfer(lambda d: None)({"image_id": 1}) is None


def test_trainer_wraps_the_mapper_only_with_workers():
    assert isinstance(_worker_mapper(_config(num_workers=2), is_train=True), CompactTransfer)
    assert isinstance(_worker_mapper(_config(num_workers=0), is_train=False), SGGDatasetMapper)
