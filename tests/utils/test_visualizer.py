"""kern_d2.utils.visualizer.draw_scene_graph, kern_d2.utils.data_visualizer and tools/visualize_data.py on a tiny
registered dataset."""
import os
import uuid

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from kern_d2.utils.data_visualizer import gt_scene_graph
from kern_d2.utils.visualizer import MAX_LONG_SIDE, MIN_LONG_SIDE, box_color, draw_scene_graph, save_image

from tests.helpers.tool_modules import load_tool


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_no_boxes_keeps_the_image_and_adds_a_panel():
    image = _image(96, 128)
    out = draw_scene_graph(image, np.zeros((0, 4)), [], [])
    scale = MIN_LONG_SIDE / 128  # small images are enlarged to MIN_LONG_SIDE on the longer side
    h, w = round(96 * scale), round(128 * scale)
    assert out.dtype == np.uint8 and out.shape[0] == h and out.shape[1] > w and out.shape[2] == 3
    # Nothing is drawn over the image when there is nothing to draw.
    np.testing.assert_array_equal(out[:, :w], cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC))


def test_boxes_are_drawn_in_their_colours_at_the_scaled_position():
    image = np.full((100, 200, 3), 128, np.uint8)
    boxes = np.array([[20.0, 10.0, 60.0, 90.0], [100.0, 30.0, 180.0, 70.0]])
    out = draw_scene_graph(image, boxes, ["person", "dog"], [(0, 1, "near", 0.5)], box_scores=[0.9, 0.8])
    scale = MIN_LONG_SIDE / 200
    assert out.shape[0] == round(100 * scale) and out.shape[1] > round(200 * scale)
    # Middle of the right edge of each box: the outline has the box's colour there.
    for i, (x1, y1, x2, y2) in enumerate(boxes * scale):
        pixel = out[int(round((y1 + y2) / 2)), int(round(x2))]
        np.testing.assert_allclose(pixel, box_color(i), atol=2)
    assert box_color(0) != box_color(1)


def test_big_images_are_reduced_and_long_lists_grow_the_panel():
    image = _image(300, 3000)
    boxes = np.array([[0, 0, 1000, 300], [1000, 0, 2000, 300], [2000, 0, 3000, 300]], dtype=np.float64)
    triplets = [(i % 3, (i + 1) % 3, f"pred{i}", 1.0 - i / 40) for i in range(40)]
    out = draw_scene_graph(image, boxes, ["a", "b", "c"], triplets, max_triplets=40, title="wide")
    assert out.shape[1] > MAX_LONG_SIDE  # image reduced to MAX_LONG_SIDE, plus the panel
    assert out.shape[0] > round(300 * MAX_LONG_SIDE / 3000)  # 40 rows do not fit in 140 px: the panel is taller
    few = draw_scene_graph(image, boxes, ["a", "b", "c"], triplets, max_triplets=3, title="wide")
    assert few.shape[0] < out.shape[0]


def test_drawing_is_deterministic_and_accepts_grayscale():
    gray = _image(64, 48)[:, :, 0]
    args = (np.array([[5, 5, 40, 60], [10, 10, 20, 20]]), ["cup", "table"], [(0, 1, "on", None), (1, 0, "under", None)])
    first = draw_scene_graph(gray, *args, title="gt")
    second = draw_scene_graph(np.repeat(gray[:, :, None], 3, axis=2), *args, title="gt")
    np.testing.assert_array_equal(first, second)


def test_long_titles_wrap_inside_the_panel():
    args = (_image(50, 50), [[0, 0, 10, 10]], ["a"], [])
    short = draw_scene_graph(*args, title="x.jpg")
    long = draw_scene_graph(*args, title="a_file_name_" * 30 + ".jpg")
    assert long.shape == short.shape


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="outside"):
        draw_scene_graph(_image(10, 10), [[0, 0, 5, 5]], ["a"], [(0, 1, "on", 0.5)])
    with pytest.raises(ValueError, match="labels"):
        draw_scene_graph(_image(10, 10), [[0, 0, 5, 5]], [], [])
    with pytest.raises(ValueError, match="HxWx3"):
        draw_scene_graph(np.zeros((0, 10, 3), np.uint8), np.zeros((0, 4)), [], [])


def test_save_image_round_trip(tmp_path):
    rgb = _image(7, 9)
    path = str(tmp_path / "sub" / "x.png")
    save_image(path, rgb)
    np.testing.assert_array_equal(cv2.imread(path)[:, :, ::-1], rgb)


@pytest.fixture()
def tiny_dataset(tmp_path):
    """Two generated images with boxes (one in XYWH) and relations, registered under a unique name."""
    paths = []
    for i, (h, w) in enumerate([(120, 160), (90, 90)]):
        path = str(tmp_path / f"img{i}.jpg")
        cv2.imwrite(path, _image(h, w, seed=i))
        paths.append(path)
    dicts = [
        {
            "file_name": paths[0], "image_id": 11, "height": 120, "width": 160,
            "annotations": [
                {"bbox": [10.0, 10.0, 80.0, 110.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [90.0, 40.0, 60.0, 50.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
            ],
            "relations": np.array([[0, 1, 2], [1, 0, 1]], dtype=np.int64),
        },
        {"file_name": paths[1], "image_id": 12, "height": 90, "width": 90, "annotations": [],
         "relations": np.zeros((0, 3), dtype=np.int64)},
    ]
    name = f"test_visualize_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["man", "horse"], predicate_classes=["__no_relation__", "on", "riding"])
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_gt_scene_graph_converts_boxes_and_names(tiny_dataset):
    _, dicts = tiny_dataset
    boxes, labels, triplets = gt_scene_graph(dicts[0], ["man", "horse"], ["__no_relation__", "on", "riding"])
    np.testing.assert_allclose(boxes, [[10, 10, 80, 110], [90, 40, 150, 90]])
    assert labels == ["man", "horse"]
    assert triplets == [(0, 1, "riding", None), (1, 0, "on", None)]


def test_visualize_data_main_writes_pictures(tiny_dataset, tmp_path):
    tool = load_tool("visualize_data")
    name, _ = tiny_dataset
    out = tmp_path / "vis"
    assert tool.main(["--dataset", name, "--output", str(out), "--num-images", "5"]) == 0
    assert sorted(os.listdir(out)) == ["11.png", "12.png"]
    picture = cv2.imread(str(out / "11.png"))
    assert picture.shape[0] == round(120 * MIN_LONG_SIDE / 160) and picture.shape[1] > MIN_LONG_SIDE

    only = tmp_path / "only"
    assert tool.main(["--dataset", name, "--output", str(only), "--image-ids", "12"]) == 0
    assert os.listdir(only) == ["12.png"]
    assert tool.main(["--dataset", name, "--output", str(only), "--image-ids", "999"]) == 2
    assert tool.main(["--dataset", "no_such_dataset_xyz", "--output", str(only)]) == 2
