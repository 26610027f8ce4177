"""Prediction: robust image reading, model inputs (ImagePreparer), given boxes, SceneGraph records, pictures, and
tools/predict.py's main() end to end with a small stand-in model registered in META_ARCH_REGISTRY."""
import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

from kern_d2 import add_kern_config
from kern_d2.checkpoint import CheckpointError
from kern_d2.engine import ImageFiles, ImagePreparer, SceneGraph, SceneGraphPredictor, load_given_boxes, output_stems
from kern_d2.structures import SceneGraphInstances, set_relation_predictions
from kern_d2.utils.image_io import ImageReadError, collect_image_files, read_image
from kern_d2.utils.visualizer import draw_predicted_scene_graph

from tests.helpers.tool_modules import load_tool

THINGS = ["person", "hat", "dog"]
PREDICATES = ["__no_relation__", "wears", "near", "on"]

predict = load_tool("predict")  # its main(), the command line


def _write_jpeg(path, h, w, seed=0):
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return str(path)


# ----------------------------------------------------------------------------------------------- image reading


def test_corrupt_truncated_and_empty_files_raise_with_the_file_name(tmp_path):
    good = _write_jpeg(tmp_path / "good.jpg", 64, 64)
    data = open(good, "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in [("truncated.jpg", "cannot decode"), ("garbage.jpg", "cannot decode"),
                         ("empty.png", "empty file"), ("missing.png", "not a file")]:
        with pytest.raises(ImageReadError, match=reason) as info:
            read_image(str(tmp_path / name))
        assert name in str(info.value)


def test_png_with_alpha_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], dtype=np.uint8)  # 1x3
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    loaded = read_image(str(tmp_path / "alpha.png"))
    assert loaded.rgb.shape == (1, 3, 3) and loaded.rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded.rgb[0, 0], [255, 0, 0])  # opaque: unchanged
    np.testing.assert_array_equal(loaded.rgb[0, 1], [255, 255, 255])  # transparent: the white background
    np.testing.assert_allclose(loaded.rgb[0, 2], [127, 127, 127], atol=1)  # half black over white


def test_grayscale_8_and_16_bit_become_three_equal_channels(tmp_path):
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    loaded = read_image(str(tmp_path / "gray.png"))
    assert loaded.rgb.shape == (5, 7, 3) and (loaded.height, loaded.width) == (5, 7)
    for c in range(3):
        np.testing.assert_array_equal(loaded.rgb[:, :, c], gray)
    deep = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(read_image(str(tmp_path / "deep.png")).rgb[:, :, 0], [[0, 255], [100, 200]])


def test_one_pixel_image(tmp_path):
    Image.fromarray(np.array([[[10, 20, 30]]], dtype=np.uint8)).save(tmp_path / "one.png")
    loaded = read_image(str(tmp_path / "one.png"), max_side=1333)
    assert (loaded.height, loaded.width) == (1, 1)
    np.testing.assert_array_equal(loaded.rgb, [[[10, 20, 30]]])


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_big_image_is_read_reduced_but_keeps_its_full_size(tmp_path, ext):
    path = tmp_path / f"wide.{ext}"
    cv2.imwrite(str(path), np.full((200, 3000, 3), 90, np.uint8))
    loaded = read_image(str(path), max_side=1333)
    assert (loaded.height, loaded.width) == (200, 3000)
    assert loaded.rgb.shape == (round(200 * 1333 / 3000), 1333, 3)
    assert abs(int(loaded.rgb.mean()) - 90) <= 2


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.zeros((200, 400, 3), np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    loaded = read_image(str(tmp_path / "rot.jpg"))
    assert (loaded.height, loaded.width) == (400, 200) and loaded.rgb.shape == (400, 200, 3)
    # Reduced reading (JPEG draft to 1/8, then an integer reduce) keeps the orientation.
    loaded = read_image(str(tmp_path / "rot.jpg"), max_side=10)
    assert (loaded.height, loaded.width) == (400, 200) and loaded.rgb.shape == (10, 5, 3)


# ----------------------------------------------------------------------------------------------- model inputs


def _cfg(**rel):
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 800, 1333
    for key, value in rel.items():
        setattr(cfg.MODEL.ROI_RELATION_HEAD, key, value)
    return cfg


def test_model_input_resizes_like_default_predictor_and_scales_given_boxes(tmp_path):
    path = _write_jpeg(tmp_path / "a.jpg", 50, 100)
    boxes, labels = [[10, 10, 50, 40], [0, 0, 120, 60]], ["dog", 1]
    prepared = ImagePreparer(_cfg(), THINGS)(path, boxes, labels)
    x = prepared.model_input
    # Short side 50 -> 800 makes the long side 1600 > 1333: both sides scale by 1333 / 100.
    assert tuple(x["image"].shape) == (3, 667, 1333) and (x["height"], x["width"]) == (50, 100)
    sx, sy = 1333 / 100, 667 / 50
    expected = [[10 * sx, 10 * sy, 50 * sx, 40 * sy], [0, 0, 100 * sx, 50 * sy]]  # 2nd box clipped to the image
    np.testing.assert_allclose(x["instances"].gt_boxes.tensor.numpy(), expected, rtol=1e-5)
    assert x["instances"].gt_classes.tolist() == [2, 1]
    assert prepared.file == path and x["file_name"] == path and prepared.rgb.shape == (50, 100, 3)
    # BGR (Detectron2's default INPUT.FORMAT) flips the channels of the RGB pixels.
    cfg_rgb = _cfg()
    cfg_rgb.INPUT.FORMAT = "RGB"
    image_rgb = ImagePreparer(cfg_rgb, THINGS)(path, boxes, labels).model_input["image"]
    torch.testing.assert_close(image_rgb.flip(0), x["image"])
    # A BGR array as Detectron2's DefaultPredictor takes it gives the same input as its file.
    bgr = cv2.imread(path)
    from_array = ImagePreparer(_cfg(), THINGS)(bgr, boxes, labels)
    torch.testing.assert_close(from_array.model_input["image"], x["image"])
    np.testing.assert_array_equal(from_array.rgb, bgr[:, :, ::-1])
    assert from_array.file is None and "file_name" not in from_array.model_input


def test_model_input_problems_name_the_image(tmp_path):
    path = _write_jpeg(tmp_path / "a.jpg", 50, 100)
    thin = str(tmp_path / "thin.png")
    cv2.imwrite(thin, np.zeros((1, 3000, 3), np.uint8))
    cases = [
        (dict(boxes=[[0, 0, 1, 1]], labels=["cat"]), {}, "'cat' is not one of"),
        (dict(boxes=[[0, 0, 1, 1]], labels=[3]), {}, "index in \\[0, 3\\)"),
        (dict(boxes=[[0, 0, 1, 1]]), {}, "no labels"),  # PredCls needs labels
        (dict(boxes=[]), {}, "no boxes"),
        (dict(), {}, "none were given"),
        (dict(boxes=[[0, 0, 1, 1]], labels=["dog", "hat"]), {}, "1 boxes but 2 labels"),
        (dict(boxes=[[5, 0, 1, 1]], labels=["dog"]), {}, "x2 < x1"),
        (dict(boxes=[[0, 0, 1, 1]]), dict(USE_GT_BOX=False, USE_GT_OBJECT_LABEL=False), "the config is SGDet"),
    ]
    for kwargs, rel, reason in cases:
        with pytest.raises(ValueError, match=reason) as info:
            ImagePreparer(_cfg(**rel), THINGS)(path, **kwargs)
        assert path in str(info.value)
    prepare = ImagePreparer(_cfg(), THINGS)
    for array, reason in [(np.zeros((4, 4), np.uint8), "HxWx3 uint8"), (np.zeros((4, 4, 3)), "float64"),
                          (np.zeros((0, 4, 3), np.uint8), "HxWx3")]:
        with pytest.raises(ValueError, match=reason):
            prepare(array, [[0, 0, 1, 1]], [0], name="frame 7")
    with pytest.raises(TypeError, match="file path or an HxWx3"):
        prepare(b"bytes")
    with pytest.raises(ImageReadError, match="missing.jpg: not a file"):
        prepare(str(tmp_path / "missing.jpg"), [[0, 0, 1, 1]], [0])
    sgcls = ImagePreparer(_cfg(USE_GT_OBJECT_LABEL=False), THINGS)(path, [[0, 0, 1, 1]])
    assert sgcls.model_input["instances"].gt_classes.tolist() == [0]
    # 1x3000 is read at 1x1333 (MAX_SIZE_TEST), which the test resize keeps: a legal, if thin, input.
    assert tuple(prepare(thin, [[0, 0, 1, 1]], [0]).model_input["image"].shape) == (3, 1, 1333)
    one = str(tmp_path / "one.png")
    cv2.imwrite(one, np.zeros((1, 1, 3), np.uint8))
    assert tuple(prepare(one, [[0, 0, 1, 1]], [0]).model_input["image"].shape) == (3, 800, 800)


def test_cli_reports_an_image_without_a_boxes_entry(tmp_path):
    path = _write_jpeg(tmp_path / "a.jpg", 50, 100)
    files = ImageFiles([path], ImagePreparer(_cfg(), THINGS), {"other.jpg": {"boxes": [[0, 0, 1, 1]]}})
    assert files[0] == {"file": path, "error": f"{path}: no entry in --boxes-json (keys are file paths or names)"}
    by_name = ImageFiles([path], ImagePreparer(_cfg(), THINGS), {"a.jpg": {"boxes": [[0, 0, 1, 1]]}})
    assert "no labels" in by_name[0]["error"]


def test_boxes_json_is_checked(tmp_path):
    for content, reason in [("[1, 2]", "expected an object"), ('{"a.jpg": {"labels": []}}', "'boxes' list"),
                            ('{"a.jpg": {"boxes": [[1, 2, 3]]}}', "x1, y1, x2, y2"),
                            ('{"a.jpg": {"boxes": [[5, 0, 1, 1]]}}', "x2 < x1"),
                            ('{"a.jpg": {"boxes": [[0, 0, 1, 1]], "labels": []}}', "1 boxes but 0 labels"),
                            ("{not json", "boxes.json")]:
        (tmp_path / "boxes.json").write_text(content)
        with pytest.raises(ValueError, match=reason):
            load_given_boxes(str(tmp_path / "boxes.json"))


def test_inputs_expand_folders_and_globs_and_stems_stay_distinct(tmp_path):
    for name in ["b.jpg", "a.PNG", "notes.txt", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"x")
    inputs = [str(tmp_path), str(tmp_path / "sub" / "*.jpg"), str(tmp_path / "b.jpg")]
    files, ignored = collect_image_files(inputs)
    assert files == [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg"), str(tmp_path / "sub" / "a.jpg")]
    assert ignored == [str(tmp_path / "notes.txt")]
    assert list(output_stems(files + ["x/summary.jpg"]).values()) == ["a", "b", "a-2", "summary-2"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        collect_image_files([str(tmp_path / "nothing*.jpg")])


# ----------------------------------------------------------------------------------------------- JSON records


def _hand_made_instances():
    """3 boxes, 4 pairs; triplet scores worked out in the test below."""
    instances = SceneGraphInstances((48, 64))
    instances.pred_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [30, 10, 60, 40.0]]))
    instances.pred_classes = torch.tensor([0, 1, 2])
    instances.scores = torch.tensor([0.9, 0.5, 0.8])
    pairs = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 2]])
    rel_scores = torch.tensor(
        [[0.1, 0.7, 0.1, 0.1], [0.2, 0.1, 0.6, 0.1], [0.9, 0.02, 0.03, 0.05], [0.4, 0.1, 0.1, 0.4]]
    )
    set_relation_predictions(instances, pairs, rel_scores)
    return instances


def _record(instances, things=THINGS, predicates=PREDICATES, top_k=20):
    return SceneGraph.from_instances(instances, things, predicates, top_k).to_dict()


def test_record_ranks_triplets_by_predicate_times_object_scores():
    graph = SceneGraph.from_instances(_hand_made_instances(), THINGS, PREDICATES, top_k=3, mode="sgcls", file="x.jpg")
    record = graph.to_dict()
    # pair (0,1): wears 0.7 * 0.9 * 0.5 = 0.315; (2,0): near 0.6 * 0.8 * 0.9 = 0.432;
    # (1,2): on 0.05 * 0.5 * 0.8 = 0.02 (background 0.9 is never chosen); (0,2): on 0.4 * 0.9 * 0.8 = 0.288.
    got = [(t["subject"], t["object"], t["predicate"], t["predicate_score"], t["score"]) for t in record["triplets"]]
    expected = [(2, 0, "near", 0.6, 0.432), (0, 1, "wears", 0.7, 0.315), (0, 2, "on", 0.4, 0.288)]
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([g[3:] for g in got], [e[3:] for e in expected], rtol=1e-5)
    first = record["triplets"][0]
    assert (first["subject_label"], first["object_label"], first["predicate_id"]) == ("dog", "person", 2)
    assert graph.triplets[0].predicate == "near" and graph.triplets[0].score == pytest.approx(0.432)
    assert record["labels"] == THINGS and record["label_ids"] == [0, 1, 2]
    assert (record["width"], record["height"], record["num_candidate_pairs"]) == (64, 48, 4)
    assert (record["schema_version"], record["file"], record["mode"]) == (1, "x.jpg", "sgcls")
    assert list(record) == ["schema_version", "file", "mode", "width", "height", "boxes", "labels", "label_ids",
                            "scores", "triplets", "num_candidate_pairs"]
    assert record["boxes"][2] == [30, 10, 60, 40]
    assert len(_record(_hand_made_instances(), top_k=0)["triplets"]) == 4
    assert json.loads(graph.to_json()) == record  # plain Python types, valid JSON


def test_record_errors_name_the_problem():
    with pytest.raises(ValueError, match="4 predicates but 3"):
        _record(_hand_made_instances(), predicates=PREDICATES[:3])
    with pytest.raises(ValueError, match="only 2 class names"):
        _record(_hand_made_instances(), things=THINGS[:2])
    stray = _hand_made_instances()
    stray._fields["rel_pair_idxs"] = torch.tensor([[0, 1], [2, 3], [1, 2], [0, 2]])
    with pytest.raises(ValueError, match="outside the 3 predicted boxes"):
        _record(stray)
    bare = Instances((4, 4), pred_boxes=Boxes(torch.zeros(0, 4)))
    with pytest.raises(ValueError, match="'pred_classes'"):
        _record(bare)


def test_record_picture_has_the_expected_size_with_and_without_boxes(tmp_path):
    graph = SceneGraph.from_instances(_hand_made_instances(), THINGS, PREDICATES)
    rgb = np.zeros((24, 32, 3), np.uint8)  # read at half the record's 64x48
    picture = draw_predicted_scene_graph(graph, rgb, max_triplets=20, show_unrelated_boxes=False, title="t")
    assert picture.shape[0] == 600 and picture.shape[1] > 800  # 32 px wide -> enlarged to 800
    with pytest.raises(ValueError, match="pass its image"):
        draw_predicted_scene_graph(graph)
    empty = SceneGraphInstances((48, 64), pred_boxes=Boxes(torch.zeros(0, 4)), pred_classes=torch.zeros(0, dtype=torch.long),
                      scores=torch.zeros(0))
    set_relation_predictions(empty, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 4))
    graph = SceneGraph.from_instances(empty, THINGS, PREDICATES, file=_write_jpeg(tmp_path / "e.jpg", 48, 64))
    assert graph.to_dict()["boxes"] == [] and graph.triplets == []
    picture = draw_predicted_scene_graph(graph)  # reads graph.file
    assert picture.shape[0] == 600 and picture.shape[1] > 800


# ----------------------------------------------------------------------------------------------- end to end

DOUBLE = "PredictTestDouble"


class PredictTestDouble(nn.Module):
    """Stands in for SceneGraphRCNN: three boxes at fixed fractions of the image (or the given gt boxes), scores
    0.9 ... 0.6, every ordered pair (M = 6 != N) scored with softmax(self.logits), which the checkpoint sets.
    Images 13 px wide make it fail."""

    def __init__(self, cfg):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES))

    seen = []  # (inference mode, autocast dtype or None) of each forward

    def forward(self, batched_inputs):
        assert not self.training
        amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        PredictTestDouble.seen.append((torch.is_inference_mode_enabled(), amp))
        outputs = []
        for x in batched_inputs:
            h, w = x["height"], x["width"]
            if w == 13:
                raise RuntimeError("unlucky width")
            if "instances" in x:
                _, in_h, in_w = x["image"].shape
                boxes = x["instances"].gt_boxes.tensor * torch.tensor([w / in_w, h / in_h] * 2)
                classes = x["instances"].gt_classes
            else:
                fractions = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9], [0, 0, 1, 1]])
                boxes = fractions * torch.tensor([w, h] * 2)
                classes = torch.tensor([0, 1, 2])
            n = len(boxes)
            result = SceneGraphInstances((h, w), pred_boxes=Boxes(boxes), pred_classes=classes,
                               scores=torch.linspace(0.9, 0.6, n))
            pairs = torch.tensor([(i, j) for i in range(n) for j in range(n) if i != j], dtype=torch.long)
            set_relation_predictions(result, pairs.reshape(-1, 2), self.logits.softmax(0).expand(len(pairs), -1))
            outputs.append({"instances": result})
        return outputs


if DOUBLE not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(PredictTestDouble)


@pytest.fixture()
def model_files(tmp_path):
    """A config for the stand-in model, a checkpoint that makes 'near' the best predicate, class names."""
    name = f"test_predict_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=THINGS, predicate_classes=PREDICATES)
    weights = tmp_path / "model.pth"
    torch.save({"model": {"logits": torch.tensor([0.0, 1.0, 3.0, 0.5])}}, weights)
    config = tmp_path / "double.yaml"
    config.write_text(
        f'MODEL:\n  META_ARCHITECTURE: "{DOUBLE}"\n  DEVICE: "cpu"\n  ROI_HEADS:\n    NUM_CLASSES: 3\n'
        "  ROI_RELATION_HEAD:\n    NUM_PREDICATES: 4\n    USE_GT_BOX: False\n    USE_GT_OBJECT_LABEL: False\n"
        f'DATASETS:\n  TEST: ("{name}",)\nINPUT:\n  MIN_SIZE_TEST: 64\n  MAX_SIZE_TEST: 128\n'
    )
    yield str(config), str(weights)
    MetadataCatalog.remove(name)


def _run(config, weights, inputs, out, *opts):
    args = ["--config-file", config, "--input", *inputs, "--output", str(out), "--num-workers", "0",
            "--opts", "MODEL.WEIGHTS", weights, *opts]
    return predict.main(args)


def test_main_end_to_end_on_a_folder(tmp_path, model_files):
    config, weights = model_files
    images = tmp_path / "images"
    images.mkdir()
    _write_jpeg(images / "street.jpg", 48, 64)
    Image.fromarray(np.zeros((30, 40, 4), np.uint8)).save(images / "alpha.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(images / "gray.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "empty.png").write_bytes(b"")
    (images / "readme.txt").write_text("not an image")
    _write_jpeg(images / "odd.jpg", 20, 13)  # the model fails on it, in a batch with street.jpg
    out = tmp_path / "out"
    # Config overrides at the end without --opts, as in Detectron2's tools (the weights decide the predicate).
    args = ["--config-file", config, "--input", str(images), "--output", str(out), "--num-workers", "0",
            "--batch-size", "2", "MODEL.WEIGHTS", weights]
    assert predict.main(args) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert sorted(os.path.basename(p["file"]) for p in summary["processed"]) == ["alpha.png", "gray.png", "street.jpg"]
    failed = {os.path.basename(f["file"]): f["reason"] for f in summary["failed"]}
    assert set(failed) == {"broken.jpg", "empty.png", "odd.jpg"} and "empty file" in failed["empty.png"]
    assert "RuntimeError: unlucky width" in failed["odd.jpg"]
    assert [os.path.basename(p) for p in summary["ignored"]] == ["readme.txt"]
    record = json.loads((out / "street.json").read_text())
    assert (record["width"], record["height"], record["mode"]) == (64, 48, "sgdet")
    np.testing.assert_allclose(record["boxes"], [[6.4, 4.8, 32, 24], [25.6, 19.2, 57.6, 43.2], [0, 0, 64, 48]],
                               atol=0.01)
    assert record["labels"] == THINGS and record["num_candidate_pairs"] == 6
    probs = torch.tensor([0.0, 1.0, 3.0, 0.5]).softmax(0)  # the checkpoint's logits, not the zero init
    # Same predicate everywhere: the order follows subject x object scores (0.9, 0.75, 0.6), ties in model order.
    assert [(t["subject"], t["object"], t["predicate"]) for t in record["triplets"]] == [
        (0, 1, "near"), (1, 0, "near"), (0, 2, "near"), (2, 0, "near"), (1, 2, "near"), (2, 1, "near")]
    assert record["triplets"][0]["score"] == pytest.approx(float(probs[2]) * 0.9 * 0.75, rel=1e-5)
    picture = cv2.imread(str(out / "street.png"))
    assert picture is not None and picture.shape[0] == 600


def test_main_with_given_boxes_and_failures(tmp_path, model_files):
    config, weights = model_files
    image = _write_jpeg(tmp_path / "room.jpg", 60, 80)
    (tmp_path / "boxes.json").write_text(json.dumps({"room.jpg": {"boxes": [[8, 6, 40, 30], [20, 20, 80, 60]],
                                                                  "labels": ["dog", "hat"]}}))
    out = tmp_path / "out"
    predcls = ["MODEL.ROI_RELATION_HEAD.USE_GT_BOX", "True", "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "True"]
    args = ["--config-file", config, "--input", image, "--output", str(out), "--num-workers", "0",
            "--top-k", "1", "--boxes-json", str(tmp_path / "boxes.json"), "--opts", "MODEL.WEIGHTS", weights, *predcls]
    assert predict.main(args) == 0
    record = json.loads((out / "room.json").read_text())
    assert record["mode"] == "predcls" and record["labels"] == ["dog", "hat"] and len(record["triplets"]) == 1
    np.testing.assert_allclose(record["boxes"], [[8, 6, 40, 30], [20, 20, 80, 60]], atol=0.01)

    # PredCls without --boxes-json, no images at all, and only unreadable images: clear non-zero exits.
    assert predict.main(args[: args.index("--boxes-json")] + args[args.index("--opts"):]) == 2
    assert _run(config, weights, [str(tmp_path / "none*.jpg")], out) == 2
    assert _run(config, weights, [image], out, "MODEL.NO_SUCH_KEY", "1") == 2
    assert _run(config, weights, [image], out, "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "True") == 2
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert _run(config, weights, [str(tmp_path / "bad.jpg")], tmp_path / "out2") == 1
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["failed"][0]["file"].endswith("bad.jpg")


# ----------------------------------------------------------------------------------------------- the library API


def _predictor_cfg(config, weights, *opts):
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, *opts])
    return cfg


def test_predictor_on_a_path_an_array_and_a_list(tmp_path, model_files):
    predictor = SceneGraphPredictor(_predictor_cfg(*model_files), top_k=4, batch_size=2)
    paths = [_write_jpeg(tmp_path / f"{i}.jpg", 48, 64 + 8 * i, seed=i) for i in range(3)]
    graph = predictor(paths[0])
    assert isinstance(graph, SceneGraph) and graph.file == paths[0] and graph.mode == "sgdet"
    probs = torch.tensor([0.0, 1.0, 3.0, 0.5]).softmax(0)  # the checkpoint's logits: "near" everywhere
    assert [(t.subject, t.object, t.predicate) for t in graph.triplets] == [(0, 1, "near"), (1, 0, "near"),
                                                                          (0, 2, "near"), (2, 0, "near")]
    assert graph.triplets[0].score == pytest.approx(float(probs[2]) * 0.9 * 0.75, rel=1e-6)
    np.testing.assert_allclose(graph.boxes, [[6.4, 4.8, 32, 24], [25.6, 19.2, 57.6, 43.2], [0, 0, 64, 48]], rtol=1e-6)
    from_array = predictor(np.ascontiguousarray(read_image(paths[0]).rgb[:, :, ::-1]))  # BGR, as DefaultPredictor
    assert from_array.file is None and {**from_array.to_dict(), "file": paths[0]} == graph.to_dict()
    # A list runs in batches of batch_size (2 + 1 here) and equals image-by-image calls.
    PredictTestDouble.seen.clear()
    batch = predictor(paths)
    assert [g.to_dict() for g in batch] == [predictor(p).to_dict() for p in paths]
    assert len(PredictTestDouble.seen) == 2 + 3 and all(mode and amp is None for mode, amp in PredictTestDouble.seen)


def test_predictor_with_given_boxes_and_autocast(tmp_path, model_files):
    predcls = ["MODEL.ROI_RELATION_HEAD.USE_GT_BOX", "True", "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "True",
               "TEST.AMP.ENABLED", "True"]
    predictor = SceneGraphPredictor(_predictor_cfg(*model_files, *predcls), top_k=0)
    image = _write_jpeg(tmp_path / "room.jpg", 60, 80)
    PredictTestDouble.seen.clear()
    graph = predictor(image, boxes=[[8, 6, 40, 30], [20, 20, 90, 60]], labels=["dog", 1])
    assert PredictTestDouble.seen == [(True, torch.bfloat16)]  # TEST.AMP.PRECISION's default
    assert graph.mode == "predcls" and graph.labels == ["dog", "hat"] and len(graph.triplets) == 2
    np.testing.assert_allclose(graph.boxes, [[8, 6, 40, 30], [20, 20, 80, 60]], atol=1e-4)  # clipped to 80 px
    graphs = predictor([image, image], boxes=[[[0, 0, 5, 5], [1, 1, 9, 9]]] * 2, labels=[[0, 2], [2, 0]])
    assert [g.labels for g in graphs] == [["person", "dog"], ["dog", "person"]]
    with pytest.raises(ValueError, match="2 images but 1 entries in labels"):
        predictor([image, image], boxes=[[[0, 0, 5, 5]]] * 2, labels=[[0]])
    with pytest.raises(ValueError, match="room.jpg: no labels given, which PredCls needs"):
        predictor([image, image], boxes=[[[0, 0, 5, 5]]] * 2, labels=[[0], None])
    with pytest.raises(ValueError, match="images\\[1\\]: expected an HxWx3 uint8 BGR array"):
        predictor([image, np.zeros((5, 5), np.uint8)], boxes=[[[0, 0, 5, 5]]] * 2, labels=[[0], [0]])
    with pytest.raises(ValueError, match="predcls scores relations between given boxes, and none were given"):
        predictor(image)


def test_predictor_setup_errors_are_clear(tmp_path, model_files, caplog):
    config, weights = model_files
    with pytest.raises(CheckpointError, match="MODEL.WEIGHTS .*nowhere.pth: no such file"):
        SceneGraphPredictor(_predictor_cfg(config, str(tmp_path / "nowhere.pth")))
    with pytest.raises(ValueError, match="TEST.AMP.PRECISION must be one of"):
        SceneGraphPredictor(_predictor_cfg(config, weights, "TEST.AMP.ENABLED", "True", "TEST.AMP.PRECISION", "fp8"))
    with pytest.raises(ValueError, match="USE_GT_OBJECT_LABEL=True needs USE_GT_BOX=True"):
        SceneGraphPredictor(_predictor_cfg(config, weights, "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", "True"))
    with pytest.raises(ValueError, match="no thing_classes and predicate_classes found"):
        SceneGraphPredictor(_predictor_cfg(config, weights, "DATASETS.TEST", "('unregistered_set',)"))
    named = SceneGraphPredictor(_predictor_cfg(config, weights, "DATASETS.TEST", "('unregistered_set',)"),
                                thing_classes=["a", "b", "c"], predicate_classes=["_", "x", "y", "z"])
    assert named(_write_jpeg(tmp_path / "a.jpg", 40, 40)).triplets[0].predicate == "y"
    with caplog.at_level("WARNING", logger="kern_d2.engine.predictor"):
        SceneGraphPredictor(_predictor_cfg(config, ""))
    assert sum("MODEL.WEIGHTS is empty" in r.getMessage() for r in caplog.records) == 1
