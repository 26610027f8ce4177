"""SGGCheckpointer: crash-safe saves, code-free loads, and the rules that refuse weights a config cannot use.

Models are the toy configs (built in a fraction of a second, untrained); checkpoints are written by the
checkpointer itself.
"""
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import kern_d2.modeling  # noqa: F401  (registers SceneGraphRCNN, KERNROIHeads, the toy backbone)
from kern_d2.checkpoint import UNSAFE_PICKLE_ENV, CheckpointError, SGGCheckpointer, parts_run_at_inference
from kern_d2.config import add_kern_config
from kern_d2.data.generators.toy import PREDICATES as TOY_PREDICATES
from kern_d2.data.generators.toy import THING_CLASSES as TOY_CLASSES
from kern_d2.modeling.priors import save_priors

from tests.helpers import REPO_ROOT

NUM_CLASSES, NUM_PREDICATES = len(TOY_CLASSES), len(TOY_PREDICATES) + 1


@pytest.fixture(scope="module")
def priors_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("priors") / "priors.npz")
    rng = np.random.default_rng(0)
    rel = rng.random((NUM_CLASSES, NUM_CLASSES, NUM_PREDICATES)).astype(np.float32)
    save_priors(path, rng.random((NUM_CLASSES, NUM_CLASSES)), rel / rel.sum(-1, keepdims=True), TOY_CLASSES,
                ["__no_relation__"] + TOY_PREDICATES)
    return path


def toy_cfg(config: str, priors_file: str = "", **overrides):
    """A toy config (configs/toy/<config>.yaml) with no datasets; ``overrides``: KEY__SUBKEY=value."""
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "toy", f"{config}.yaml"))
    opts = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", priors_file]
    for key, value in overrides.items():
        opts += [key.replace("__", "."), str(value)]
    cfg.merge_from_list(opts)
    return cfg


def saved(model, folder, name="model") -> str:
    """Save ``model`` with SGGCheckpointer in ``folder``; returns the file."""
    os.makedirs(folder, exist_ok=True)
    SGGCheckpointer(model, str(folder), for_inference=False).save(name)
    return os.path.join(str(folder), f"{name}.pth")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, priors_file) -> dict:
    """Checkpoints of untrained toy models: the detector, KERN PredCls, KERN SGCls."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    return {
        "detector": saved(build_model(toy_cfg("toy_detector")), folder / "detector"),
        "predcls": saved(build_model(toy_cfg("kern_predcls", priors_file)), folder / "predcls"),
        "sgcls": saved(build_model(toy_cfg("kern_sgcls", priors_file)), folder / "sgcls"),
    }


class Payload:
    """Unpickling it creates a folder: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# --------------------------------------------------------------------------------------------------- saving


def test_failed_save_leaves_previous_checkpoint_and_last_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = SGGCheckpointer(model, str(tmp_path), for_inference=False)
    checkpointer.save("model_0000009")
    before = (tmp_path / "model_0000009.pth").read_bytes()
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("model_0000009.pth", "last_checkpoint"):  # the permissions a plain open() would give
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask

    def half_written_then_fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_written_then_fail)
    with torch.no_grad():
        model.weight.add_(1.0)
    for name in ("model_0000009", "model_0000019"):  # overwriting the same file, and a new one
        with pytest.raises(OSError, match="No space left"):
            checkpointer.save(name)
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporary file left
    monkeypatch.undo()
    fresh = nn.Linear(3, 2)
    SGGCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    torch.testing.assert_close(fresh.weight, model.weight - 1.0)


def test_partial_file_of_a_killed_save_is_removed_when_training_resumes(tmp_path):
    model = nn.Linear(3, 2)
    SGGCheckpointer(model, str(tmp_path), for_inference=False).save("model_0000004")
    # What SIGKILL during a save leaves: a temporary file the except-clause never removed.
    partial = tmp_path / ".tmp_model_0000009.pthx8y2"
    partial.write_bytes(b"PK\x03\x04 cut off")
    SGGCheckpointer(model, str(tmp_path), for_inference=True).resume_or_load("", resume=True)
    assert partial.exists()  # an evaluation next to a running training must not touch its files
    SGGCheckpointer(model, str(tmp_path), for_inference=False).resume_or_load("", resume=True)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]


def test_non_finite_weights_are_never_saved(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    checkpointer = SGGCheckpointer(model, str(tmp_path), for_inference=False)
    checkpointer.save("model_0000001")
    before = (tmp_path / "model_0000001.pth").read_bytes()
    with torch.no_grad():
        model[1].bias[0] = float("inf")
        model[0].weight[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN or inf \(2 tensors, e\.g\. 0\.weight, 1\.bias\).*"
                                                 r"last good checkpoint stays .*model_0000001\.pth"):
        checkpointer.save("model_0000002")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()


# --------------------------------------------------------------------------------------------------- safe loading


def test_pth_with_pickled_code_is_refused(tmp_path, monkeypatch):
    marker = str(tmp_path / "code_ran")
    model = nn.Linear(3, 2)
    path = str(tmp_path / "evil.pth")
    torch.save({"model": model.state_dict(), "note": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load: .*posix\.mkdir.*" + UNSAFE_PICKLE_ENV):
        SGGCheckpointer(nn.Linear(3, 2)).load(path)
    assert not os.path.exists(marker)
    # The payload is real: the explicit opt-in reads the file with plain pickle, and its code runs.
    monkeypatch.setenv(UNSAFE_PICKLE_ENV, "1")
    SGGCheckpointer(nn.Linear(3, 2)).load(path)
    assert os.path.isdir(marker)


@pytest.mark.parametrize("protocol, numpy1_names", [(2, False), (2, True), (pickle.HIGHEST_PROTOCOL, False)])
def test_model_zoo_pkl_loads_arrays_only(tmp_path, protocol, numpy1_names):
    model = nn.Linear(3, 2)
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    data = pickle.dumps({"model": arrays, "__author__": "test"}, protocol=protocol)
    if numpy1_names:  # how the model zoo's files (written with numpy 1) name numpy's array rebuilder
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray\n_reconstruct" in data
    zoo = tmp_path / "zoo.pkl"
    zoo.write_bytes(data)
    loaded = nn.Linear(3, 2)
    SGGCheckpointer(loaded).load(str(zoo))
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())

    marker = str(tmp_path / "code_ran")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": arrays, "__author__": Payload(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"evil\.pkl: refused to load: it holds the Python object posix\.mkdir"):
        SGGCheckpointer(nn.Linear(3, 2)).load(str(evil))
    assert not os.path.exists(marker)


def test_unreadable_checkpoints_are_named(tmp_path):
    model = nn.Linear(3, 2)
    good = saved(model, tmp_path)
    with open(good, "rb") as f:
        data = f.read()
    for name, content in [("truncated.pth", data[: len(data) // 2]), ("garbage.pth", b"not a checkpoint" * 8),
                          ("empty.pkl", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: cannot read the checkpoint, it is truncated or corrupt"):
            SGGCheckpointer(nn.Linear(3, 2)).load(str(tmp_path / name))
    with pytest.raises(CheckpointError, match=r"checkpoint .*nowhere\.pth not found"):
        SGGCheckpointer(model).load(str(tmp_path / "nowhere.pth"))
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(CheckpointError, match=r"last_checkpoint names .*model_0000099\.pth, which does not exist"):
        SGGCheckpointer(model, str(tmp_path), for_inference=False).resume_or_load("", resume=True)


# --------------------------------------------------------------------------------------------------- mismatches


@pytest.mark.parametrize("for_inference", [False, True])
def test_weights_for_another_number_of_classes_are_an_error(weights, for_inference):
    model = build_model(toy_cfg("kern_predcls", MODEL__ROI_HEADS__NUM_CLASSES=6,
                                MODEL__ROI_RELATION_HEAD__USE_PRIORS=False))
    with pytest.raises(CheckpointError) as info:
        SGGCheckpointer(model, for_inference=for_inference).load(weights["predcls"])
    message = str(info.value)
    assert "roi_heads.box_predictor.cls_score.weight: (11, 256) in the file, (7, 256) in the model" in message
    assert "made for 10 object classes, the config asks for 6 (MODEL.ROI_HEADS.NUM_CLASSES)" in message
    assert weights["predcls"] in message


def test_weights_for_another_number_of_predicates_are_an_error(weights):
    model = build_model(toy_cfg("kern_predcls", MODEL__ROI_RELATION_HEAD__NUM_PREDICATES=7,
                                MODEL__ROI_RELATION_HEAD__USE_PRIORS=False))
    with pytest.raises(CheckpointError, match=r"made for 10 predicates, the config asks for 7 "
                                              r"\(MODEL\.ROI_RELATION_HEAD\.NUM_PREDICATES"):
        SGGCheckpointer(model, for_inference=False).load(weights["predcls"])


def test_detectors_keep_detectron2_behaviour_for_other_class_counts(weights):
    # Fine-tuning a detector on a dataset of other classes starts its class layers fresh, as in Detectron2.
    model = build_model(toy_cfg("toy_detector", MODEL__ROI_HEADS__NUM_CLASSES=4))
    SGGCheckpointer(model, for_inference=False).load(weights["detector"])
    assert model.roi_heads.box_predictor.cls_score.weight.shape == (5, 256)


def test_training_may_start_new_parts_fresh(weights, priors_file):
    # A KERN head from the detector; SGCls object routing from PredCls weights.
    predcls = build_model(toy_cfg("kern_predcls", priors_file))
    SGGCheckpointer(predcls, for_inference=False).load(weights["detector"])
    sgcls = build_model(toy_cfg("kern_sgcls", priors_file))
    SGGCheckpointer(sgcls, for_inference=False).load(weights["predcls"])
    expected = torch.load(weights["predcls"], weights_only=True)["model"]
    torch.testing.assert_close(sgcls.state_dict()["roi_heads.union_feature.spatial.conv1.weight"],
                               expected["roi_heads.union_feature.spatial.conv1.weight"])


def test_inference_refuses_weights_without_the_parts_the_mode_runs(weights, priors_file):
    sgcls = build_model(toy_cfg("kern_sgcls", priors_file))
    assert set(parts_run_at_inference(sgcls)) == {
        "backbone.", "roi_heads.box_head.", "roi_heads.box_predictor.", "roi_heads.relation_head.",
        "roi_heads.union_feature.", "roi_heads.object_routing."}
    with pytest.raises(CheckpointError, match=r"predcls/model\.pth: these weights cannot serve sgcls as configured: "
                                              r"they lack object routing \(11 tensors.*USE_OBJECT_ROUTING False"):
        SGGCheckpointer(sgcls).load(weights["predcls"])
    with pytest.raises(CheckpointError, match=r"they lack the KERN relation head .*the union \(pair\) feature"):
        SGGCheckpointer(build_model(toy_cfg("kern_predcls", priors_file))).load(weights["detector"])
    with pytest.raises(CheckpointError, match="no weights to evaluate"):
        SGGCheckpointer(build_model(toy_cfg("kern_predcls", priors_file))).load("")


def test_inference_accepts_weights_that_serve_the_mode(weights, priors_file):
    # SGCls without object routing (labels from the detector) from PredCls weights; PredCls from SGCls weights.
    no_routing = build_model(toy_cfg("kern_sgcls", priors_file, MODEL__ROI_RELATION_HEAD__USE_OBJECT_ROUTING=False))
    SGGCheckpointer(no_routing).load(weights["predcls"])
    SGGCheckpointer(build_model(toy_cfg("kern_predcls", priors_file))).load(weights["sgcls"])
    # FREQ in PredCls runs no weights at all; in SGCls it needs the detector's labels.
    freq = build_model(toy_cfg("freq_predcls", priors_file))
    assert parts_run_at_inference(freq) == {}
    SGGCheckpointer(freq).load("")
    SGGCheckpointer(build_model(toy_cfg("freq_sgcls", priors_file))).load(weights["detector"])
    # Priors from the checkpoint when the config names no file.
    from_checkpoint = build_model(toy_cfg("kern_predcls"))
    SGGCheckpointer(from_checkpoint).load(weights["predcls"])
    expected = torch.load(weights["predcls"], weights_only=True)["model"]["roi_heads.priors.rel_prior"]
    torch.testing.assert_close(from_checkpoint.roi_heads.priors.rel_prior, expected)


def test_missing_priors_are_an_error_at_load_time(weights):
    model = build_model(toy_cfg("kern_predcls"))  # no PRIORS_FILE, USE_PRIORS on
    with pytest.raises(RuntimeError, match="KnowledgePriors .* are empty: set MODEL.ROI_RELATION_HEAD.PRIORS_FILE"):
        SGGCheckpointer(model, for_inference=False).load(weights["detector"])
