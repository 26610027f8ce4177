"""Shared fixtures: a small generated toy dataset, a writer of synthetic VG-format datasets, one torch thread for the
modules that run models, and the tools' toy work folder of the end-to-end tests; the ``slow`` marker."""
import os
import shutil
import tempfile
from typing import List, Sequence

import cv2
import numpy as np
import pytest

from kern_d2.data.generators.toy import generate_toy_dataset
from kern_d2.data.datasets.vg_format import (
    CORRUPT_IMAGE_IDS,
    write_image_data,
    write_vg_dicts,
    write_vg_h5,
    xyxy_to_boxes_1024,
)

pytest.register_assert_rewrite("tests.helpers")  # before they are imported: pytest's messages in their asserts
from tests.helpers.toy_tools import ToyTools, prepare_toy_tools  # noqa: E402

# Size of the session toy dataset: train split (val included), val, test.
TOY_NUM_TRAIN, TOY_NUM_VAL, TOY_NUM_TEST = 24, 6, 8


@pytest.fixture(scope="session")
def toy_dataset_root(tmp_path_factory) -> str:
    """Folder of a small toy dataset (VG format: VG-SGG.h5, VG-SGG-dicts.json, image_data.json, VG_100K/),
    generated once per test session with seed 0: TOY_NUM_TRAIN train-split images (the first TOY_NUM_VAL are val)
    and TOY_NUM_TEST test images. Register it with ``kern_d2.data.register_toy(root, prefix=...)``."""
    root = str(tmp_path_factory.mktemp("toy"))
    generate_toy_dataset(root, num_train=TOY_NUM_TRAIN, num_test=TOY_NUM_TEST, num_val=TOY_NUM_VAL, seed=0)
    return root


@pytest.fixture(scope="session")
def toy_dataset_sizes() -> dict:
    """Image counts of ``toy_dataset_root``: train split (val included), val, test."""
    return {"num_train": TOY_NUM_TRAIN, "num_val": TOY_NUM_VAL, "num_test": TOY_NUM_TEST}


def write_synthetic_vg(
    root: str,
    images: List[dict],
    thing_classes: Sequence[str],
    predicate_names: Sequence[str],
    *,
    with_attributes: bool = False,
    pad_corrupt_ids: bool = False,
    write_images: bool = False,
    h5_attrs: dict = None,
) -> dict:
    """Write a VG-format dataset in ``root`` and return its paths (h5_file, dicts_file, image_data_file, image_root).

    Each image: ``width``, ``height``, optional ``image_id`` (default: position + 1) and ``split`` (0 train,
    default; 2 test), boxes as ``boxes_1024`` [[xc, yc, w, h], ...] (written as given) or ``boxes`` [[x1, y1, x2,
    y2], ...] at true size (converted, rounded), ``labels`` (1-based) and ``relations`` [[subject, object,
    predicate], ...] with image-local box indices (default none). ``predicate_names`` excludes "no relation".

    with_attributes: the Scene-Graph-Benchmark file names and attribute field. pad_corrupt_ids: image_data.json gets
    the four corrupt VG ids too (interleaved), as the real file has. write_images: grey JPEGs of the right size.
    """
    os.makedirs(root, exist_ok=True)
    ids = np.array([im.get("image_id", i + 1) for i, im in enumerate(images)], dtype=np.int64)
    widths = np.array([im["width"] for im in images])
    heights = np.array([im["height"] for im in images])
    boxes_1024 = []
    for im in images:
        if "boxes_1024" in im:
            boxes_1024.append(np.asarray(im["boxes_1024"], dtype=np.int64).reshape(-1, 4))
        else:
            boxes = np.asarray(im.get("boxes", []), dtype=np.float64).reshape(-1, 4)
            scale = np.full(len(boxes), max(im["width"], im["height"]) / 1024.0)
            boxes_1024.append(xyxy_to_boxes_1024(boxes, scale))
    relations = [np.asarray(im.get("relations", []), dtype=np.int64).reshape(-1, 3) for im in images]
    suffix = "-with-attri" if with_attributes else ""
    paths = {
        "h5_file": os.path.join(root, f"VG-SGG{suffix}.h5"),
        "dicts_file": os.path.join(root, f"VG-SGG-dicts{suffix}.json"),
        "image_data_file": os.path.join(root, "image_data.json"),
        "image_root": os.path.join(root, "VG_100K"),
    }
    write_vg_h5(
        paths["h5_file"],
        split=np.array([im.get("split", 0) for im in images]),
        box_counts=np.array([len(b) for b in boxes_1024]),
        boxes_1024=np.concatenate(boxes_1024 + [np.zeros((0, 4), dtype=np.int64)]),
        labels=np.concatenate([np.asarray(im.get("labels", []), dtype=np.int64) for im in images]),
        rel_counts=np.array([len(r) for r in relations]),
        relations=np.concatenate(relations + [np.zeros((0, 3), dtype=np.int64)]),
        with_attributes=with_attributes,
        attrs=h5_attrs,
    )
    write_vg_dicts(paths["dicts_file"], thing_classes, predicate_names, with_attributes=with_attributes)
    if pad_corrupt_ids:
        # the four corrupt ids at the start, in the middle and at the end, as extra rows
        positions = np.array([0, len(ids) // 2, len(ids) // 2, len(ids)])
        ids = np.insert(ids, positions, CORRUPT_IMAGE_IDS)
        widths, heights = np.insert(widths, positions, 100), np.insert(heights, positions, 100)
    write_image_data(paths["image_data_file"], ids, widths, heights)
    if write_images:
        os.makedirs(paths["image_root"], exist_ok=True)
        for image_id, w, h in zip(ids.tolist(), widths.tolist(), heights.tolist()):
            cv2.imwrite(os.path.join(paths["image_root"], f"{image_id}.jpg"), np.full((h, w, 3), 128, np.uint8))
    return paths


@pytest.fixture
def vg_writer():
    """The :func:`write_synthetic_vg` function, for tests in other files (conftest is not imported by name)."""
    return write_synthetic_vg


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread while a module runs (``pytestmark = pytest.mark.usefixtures("single_torch_thread")``): on
    the 2 shared cores of the test machine the model's many small ops ran about 10 times faster so than with 2 threads
    (which wait on each other when a core is busy)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def toy_tools() -> ToyTools:
    """The toy dataset, a toy detector trained for DETECTOR_ITERS iterations and the priors, made by the tools
    (tests/helpers/toy_tools.py). Its users run the tools in subprocesses: mark them ``@pytest.mark.slow``.

    The work folder is a private temporary folder, not pytest's numbered base folder, which a concurrent pytest
    session may clean up while these minutes-long tests run."""
    work = tempfile.mkdtemp(prefix="kern_d2_tools_e2e_")
    try:
        yield prepare_toy_tools(ToyTools(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The users of ``toy_tools`` must be marked slow, so that ``pytest -m "not slow"`` never starts the tools."""
    unmarked = [item.nodeid for item in items
                if "toy_tools" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests that use toy_tools need @pytest.mark.slow: " + ", ".join(unmarked))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end tests that run tools/*.py or train models in subprocesses (minutes); "
        "pytest -m 'not slow' leaves them out")
    # One torch thread: on two cores the small tensors of these tests run several times faster than with two.
    import torch

    torch.set_num_threads(1)
