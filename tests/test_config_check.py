"""Issue 24: configs checked before anything is built (keys, datasets, files; one line, exit 2), the priors rule
(the weights' priors win; a missing priors file is one clear error, and no error when the weights carry priors),
``--register`` / ``$KERN_REGISTER``, the tools' messages for absent dataset files, file modes, quiet logs."""
import logging
import os
import stat
import subprocess
import sys
import uuid
import warnings

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import kern_d2.modeling  # noqa: F401  (registers the model parts)
from kern_d2.checkpoint import SGGCheckpointer
from kern_d2.config_check import (
    ConfigError,
    MissingFileError,
    cfg_for_weights,
    check_config,
    load_config,
    weights_carry_priors,
)
from kern_d2.data import register_toy, register_user_datasets
from kern_d2.data.generators.toy import PREDICATES as TOY_PREDICATES
from kern_d2.data.generators.toy import THING_CLASSES as TOY_CLASSES
from kern_d2.engine import SceneGraphPredictor
from kern_d2.modeling.priors import build_priors, save_priors
from kern_d2.modeling.priors_summary import summarize_priors
from kern_d2.utils.cli import one_line_errors, quiet_dependency_warnings

from tests.helpers import REPO_ROOT
from tests.helpers.tool_modules import load_tool

PREDICATES = ["__no_relation__"] + TOY_PREDICATES
PRIORS_KEY = "MODEL.ROI_RELATION_HEAD.PRIORS_FILE"


def random_priors(path, seed):
    rng = np.random.default_rng(seed)
    rel = rng.random((len(TOY_CLASSES), len(TOY_CLASSES), len(PREDICATES))).astype(np.float32)
    save_priors(str(path), rng.random((len(TOY_CLASSES),) * 2), rel / rel.sum(-1, keepdims=True), TOY_CLASSES,
                PREDICATES, np.arange(len(PREDICATES)))
    return str(path)


@pytest.fixture(scope="module")
def toy(toy_dataset_root, tmp_path_factory):
    """The session toy dataset under a fresh prefix, two priors files (A, B), and checkpoints of an untrained
    detector and of an untrained KERN PredCls model built with priors A."""
    prefix = f"pytest_cc_{uuid.uuid4().hex[:6]}"
    register_toy(toy_dataset_root, prefix=prefix)
    folder = tmp_path_factory.mktemp("config_check")
    priors_a, priors_b = random_priors(folder / "a.npz", 0), random_priors(folder / "b.npz", 1)

    def cfg(config="kern_predcls", *opts, freeze=True):
        return load_config(os.path.join(REPO_ROOT, "configs", "toy", f"{config}.yaml"), [
            "DATASETS.TRAIN", f"('{prefix}_train',)", "DATASETS.TEST", f"('{prefix}_test',)", "MODEL.WEIGHTS", "",
            PRIORS_KEY, priors_a, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", *opts], freeze=freeze)

    def saved(model, name):
        os.makedirs(folder / name)
        SGGCheckpointer(model, str(folder / name), for_inference=False).save("model")
        return str(folder / name / "model.pth")

    torch.manual_seed(0)
    weights = {"detector": saved(build_model(cfg("toy_detector")), "detector"),
               "predcls": saved(build_model(cfg()), "predcls")}
    yield type("Toy", (), dict(prefix=prefix, cfg=staticmethod(cfg), priors_a=priors_a, priors_b=priors_b,
                               weights=weights, folder=folder))
    for split in ("train", "val", "test"):
        DatasetCatalog.remove(f"{prefix}_{split}")
        MetadataCatalog.remove(f"{prefix}_{split}")


# --------------------------------------------------------------------------------------------------- keys
def test_unknown_keys_get_did_you_mean_from_the_file_and_the_command_line(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text('_BASE_: "%s"\nMODEL:\n  ROI_RELATION_HEAD:\n    PRIOR_FILE: "x.npz"\n'
                      % os.path.join(REPO_ROOT, "configs", "toy", "kern_predcls.yaml"))
    with pytest.raises(ConfigError, match=rf"^{config}: unknown config key MODEL\.ROI_RELATION_HEAD\.PRIOR_FILE; "
                                          rf"did you mean {PRIORS_KEY}\?$"):
        load_config(str(config))
    toy_config = os.path.join(REPO_ROOT, "configs", "toy", "kern_predcls.yaml")
    with pytest.raises(ConfigError, match=rf"command line: unknown config key MODEL\.PRIORS_FILE; did you mean "
                                          rf"{PRIORS_KEY}\?"):
        load_config(toy_config, ["MODEL.PRIORS_FILE", "x.npz"])
    with pytest.raises(ConfigError, match="did you mean SOLVER.MAX_ITER"):
        load_config(toy_config, ["SOLVER.MAX_ITERS", "10"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(toy_config, ["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match="Type mismatch"):
        load_config(toy_config, ["SOLVER.MAX_ITER", "'ten'"])
    with pytest.raises(MissingFileError, match="--config-file nope.yaml: no such file"):
        load_config("nope.yaml")


# ----------------------------------------------------------------------------------------------- datasets
def test_a_typo_in_datasets_test_is_found_before_training(toy):
    """DATASETS.TEST used to be looked up only after training ended (hours later on VG)."""
    cfg = toy.cfg("kern_predcls", "DATASETS.TEST", f"('{toy.prefix}_tset',)")
    for purpose in ("train", "eval"):
        with pytest.raises(ConfigError) as error:
            check_config(cfg, purpose)
        message = str(error.value)
        assert message.startswith(f"DATASETS.TEST: dataset '{toy.prefix}_tset' is not registered (did you mean "
                                  f"{toy.prefix}_test?). Registered scene-graph datasets: ")
        assert "vg150_test" in message and "coco_2017_train" not in message and "lvis" not in message
        assert "--register my_datasets.py" in message and "KERN_REGISTER" in message and "\n" not in message
    with pytest.raises(ConfigError, match=f"DATASETS.TRAIN: dataset '{toy.prefix}_trian' is not registered"):
        check_config(toy.cfg("kern_predcls", "DATASETS.TRAIN", f"('{toy.prefix}_trian',)"), "train")
    check_config(toy.cfg(), "train")
    check_config(toy.cfg("kern_predcls", "DATASETS.TRAIN", "()"), "eval")  # evaluation needs no train set


def test_a_dataset_whose_files_are_absent_is_named_before_training(toy, tmp_path):
    prefix = f"pytest_nofiles_{uuid.uuid4().hex[:6]}"
    register_toy(str(tmp_path / "nowhere"), prefix=prefix)
    try:
        cfg = toy.cfg("kern_predcls", "DATASETS.TEST", f"('{prefix}_test',)")
        with pytest.raises(MissingFileError, match=rf"DATASETS.TEST: dataset {prefix}_test cannot be loaded: "
                                                   rf".*nowhere/VG-SGG-dicts.json does not exist \(and 2 more\)"):
            check_config(cfg, "train")
    finally:
        for split in ("train", "val", "test"):
            DatasetCatalog.remove(f"{prefix}_{split}")
            MetadataCatalog.remove(f"{prefix}_{split}")


# ------------------------------------------------------------------------------------------------- priors
def test_a_missing_priors_file_is_one_error_naming_the_key_and_the_fix(toy, tmp_path):
    nope = str(tmp_path / "nope.npz")
    cfg = toy.cfg("kern_predcls", PRIORS_KEY, nope, "MODEL.WEIGHTS", toy.weights["detector"])
    expected = (rf"^{PRIORS_KEY} {nope}: no such file\. Make it with `python tools/compute_priors.py --dataset "
                rf"{toy.prefix}_train --output {nope}`, .* or set MODEL.ROI_RELATION_HEAD.USE_PRIORS False")
    with pytest.raises(MissingFileError, match=expected):
        build_priors(cfg)  # was a bare FileNotFoundError from iopath
    for purpose in ("train", "eval", "predict"):
        with pytest.raises(MissingFileError, match=expected):
            check_config(cfg, purpose)  # the detector's weights carry no priors: the file is needed
    with pytest.raises(MissingFileError, match=expected):
        SceneGraphPredictor(cfg)


def test_the_weights_priors_suffice_without_the_file(toy, toy_dataset_root, tmp_path):
    """At --eval-only and in the predictor a KERN checkpoint brings its priors: PRIORS_FILE need not exist."""
    weights = toy.weights["predcls"]
    assert weights_carry_priors(weights) and not weights_carry_priors(toy.weights["detector"])
    cfg = toy.cfg("kern_predcls", PRIORS_KEY, str(tmp_path / "nope.npz"), "MODEL.WEIGHTS", weights)
    for purpose in ("train", "eval", "predict"):
        check_config(cfg, purpose)
    model = build_model(cfg_for_weights(cfg, weights))  # the eval-only path of train_net.py
    SGGCheckpointer(model, for_inference=True).load(weights)
    priors = model.roi_heads.priors
    with np.load(toy.priors_a) as a:
        np.testing.assert_array_equal(priors.rel_prior.numpy(), a["rel_prior"])
    predictor = SceneGraphPredictor(cfg)
    record = DatasetCatalog.get(f"{toy.prefix}_test")[0]
    graph = predictor(record["file_name"], boxes=[a["bbox"] for a in record["annotations"]],
                      labels=[a["category_id"] for a in record["annotations"]])
    assert len(graph.triplets) > 0


def test_the_weights_priors_win_over_another_file_and_a_warning_says_so(toy, caplog):
    """One rule at train, eval and predictor: a checkpoint's priors replace PRIORS_FILE's, and not silently."""
    cfg = toy.cfg("kern_predcls", PRIORS_KEY, toy.priors_b)
    model = build_model(cfg)
    with caplog.at_level(logging.WARNING, logger="kern_d2.checkpoint"):
        SGGCheckpointer(model, for_inference=True).load(toy.weights["predcls"])
    with np.load(toy.priors_a) as a:
        np.testing.assert_array_equal(model.roi_heads.priors.rel_prior.numpy(), a["rel_prior"])
    warned = [r.getMessage() for r in caplog.records if "knowledge priors that differ" in r.getMessage()]
    assert len(warned) == 1 and toy.priors_b in warned[0] and "the model uses the weights' priors" in warned[0]
    # Predicate counts follow the rule: a file without them, weights with them -> the weights' (issue 24, bug 8).
    rng = np.random.default_rng(2)
    rel = rng.random((len(TOY_CLASSES), len(TOY_CLASSES), len(PREDICATES))).astype(np.float32)
    no_counts = str(toy.folder / "no_counts.npz")
    save_priors(no_counts, np.eye(len(TOY_CLASSES)), rel / rel.sum(-1, keepdims=True), TOY_CLASSES, PREDICATES)
    model = build_model(toy.cfg("kern_predcls", PRIORS_KEY, no_counts))
    with pytest.raises(ValueError, match="predicate_counts"):
        model.roi_heads.priors.require_predicate_counts("logit adjustment")
    SGGCheckpointer(model, for_inference=True).load(toy.weights["predcls"])
    assert model.roi_heads.priors.require_predicate_counts("logit adjustment").tolist() == list(range(len(PREDICATES)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kern_d2.checkpoint"):  # the same priors: nothing to say
        SGGCheckpointer(build_model(toy.cfg()), for_inference=True).load(toy.weights["predcls"])
    assert not [r for r in caplog.records if "knowledge priors that differ" in r.getMessage()]


# ------------------------------------------------------------------------------------- one line, exit 2
def test_config_errors_are_one_line_and_exit_2_with_the_traceback_on_demand(capsys, monkeypatch):
    monkeypatch.delenv("KERN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        with one_line_errors("tool.py"):
            raise ConfigError("DATASETS.TEST: dataset 'x' is not registered")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: DATASETS.TEST: dataset 'x' is not registered\n"
    for debug, env in ((True, None), (False, "1")):
        if env:
            monkeypatch.setenv("KERN_DEBUG", env)
        with pytest.raises(SystemExit):
            with one_line_errors("tool.py", debug=debug):
                raise ConfigError("bad")
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.endswith("tool.py: error: bad\n")


@pytest.mark.slow
def test_train_net_stops_on_a_test_set_typo_before_building_anything(toy_dataset_root, tmp_path):
    os.symlink(toy_dataset_root, tmp_path / "toy")  # the builtin toy_* names read $KERN_DATASETS/toy
    env = dict(os.environ, KERN_DATASETS=str(tmp_path), PYTHONPATH=REPO_ROOT)
    env.pop("KERN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--config-file",
         os.path.join(REPO_ROOT, "configs", "toy", "kern_predcls.yaml"), "OUTPUT_DIR", str(tmp_path / "out"),
         "DATASETS.TEST", '("toy_tset",)'], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("train_net.py: error: DATASETS.TEST: dataset 'toy_tset' is not registered (did "
                                  "you mean toy_test?)")
    assert "Warning" not in proc.stdout + proc.stderr  # the dependencies' warnings are filtered
    assert not (tmp_path / "out").exists()  # nothing was set up


# ------------------------------------------------------------------------------------------ --register
REGISTRATION = """
from kern_d2.data import register_sgg_json
register_sgg_json({name!r}, {json_file!r}, {root!r}, missing_images="ignore")
"""


def write_registration(tmp_path, name):
    json_file = tmp_path / f"{name}.json"
    json_file.write_text('{"categories": ["person", "horse"], "predicates": ["riding"], "images": [{"id": 1, '
                         '"file_name": "a.jpg", "width": 64, "height": 48, "objects": [{"bbox": [1, 2, 30, 40], '
                         '"category": "person"}, {"bbox": [5, 6, 60, 45], "category": "horse"}], "relations": '
                         '[{"subject": 0, "object": 1, "predicate": "riding"}]}]}')
    script = tmp_path / f"register_{name}.py"
    script.write_text(REGISTRATION.format(name=name, json_file=str(json_file), root=str(tmp_path)))
    return script


def test_register_runs_a_users_file_once_and_passes_it_to_child_processes(tmp_path, monkeypatch):
    name = f"pytest_my_{uuid.uuid4().hex[:6]}"
    script = write_registration(tmp_path, name)
    environ = {}
    monkeypatch.chdir(tmp_path)
    try:
        assert register_user_datasets([script.name], environ=environ) == [str(script)]
        assert name in DatasetCatalog.list()
        assert environ["KERN_REGISTER"] == str(script)  # absolute: children may run elsewhere
        assert register_user_datasets([], environ=environ) == []  # once per process (a second run would raise)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    with pytest.raises(MissingFileError, match="--register nope.py: no such file"):
        register_user_datasets(["nope.py"], environ={})
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('my mistake')\n")
    with pytest.raises(ConfigError, match=r"--register .*broken.py failed: RuntimeError: my mistake"):
        register_user_datasets([str(broken)], environ={})


@pytest.mark.slow
def test_compute_priors_registers_from_the_environment_and_prints_only_pairs_seen(tmp_path):
    name = f"pytest_env_{uuid.uuid4().hex[:6]}"
    script = write_registration(tmp_path, name)
    env = dict(os.environ, KERN_REGISTER=str(script), PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "compute_priors.py"), "--dataset", name,
                           "--output", str(tmp_path / "p.npz")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = [line for line in proc.stdout.splitlines() if line.startswith("  p(")]
    assert pairs == ["  p(riding | person, horse) = 0.667 (1 relation)"]  # not the uniform fill of other pairs
    assert "Warning" not in proc.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "p.npz").st_mode) == 0o666 & ~_umask()


def test_compute_priors_summary_skips_class_pairs_without_relations():
    things, predicates = ["person", "table", "hat"], ["__no_relation__", "wears", "near"]
    rel_prior = np.full((3, 3, 3), 1 / 3, dtype=np.float32)  # the uniform fill, higher than the seen pair's
    rel_prior[0, 2] = [0.7, 0.2, 0.1]
    dicts = [{"annotations": [{"category_id": 0, "bbox": [0, 0, 5, 5]}, {"category_id": 2, "bbox": [1, 1, 3, 3]},
                              {"category_id": 1, "bbox": [9, 9, 20, 20]}],
              "relations": np.array([[0, 1, 1]])}]
    lines = summarize_priors(dicts, np.eye(3), rel_prior, things, predicates).splitlines()
    assert [line for line in lines if line.startswith("  p(")] == ["  p(wears | person, hat) = 0.200 (1 relation)"]


# ------------------------------------------------------------------------------ bug 4: absent dataset files
def test_tools_name_the_missing_files_not_the_metadata(tmp_path):
    prefix = f"pytest_absent_{uuid.uuid4().hex[:6]}"
    register_toy(str(tmp_path / "toy"), prefix=prefix)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("kern_d2.visualize_data")  # Detectron2's "kern_d2" logger does not propagate
    logger.addHandler(handler)
    try:
        assert load_tool("visualize_data").main(["--dataset", f"{prefix}_train", "--output", str(tmp_path / "v")]) == 2
        errors = " ".join(r.getMessage() for r in records)
        assert "VG dicts json not found: " in errors and "metadata needs" not in errors
        with pytest.raises(FileNotFoundError, match="VG dicts json not found: .*toy/VG-SGG-dicts.json"):
            load_tool("compute_priors").main(["--dataset", f"{prefix}_train", "--output", str(tmp_path / "p.npz")])
    finally:
        logger.removeHandler(handler)
        for split in ("train", "val", "test"):
            DatasetCatalog.remove(f"{prefix}_{split}")
            MetadataCatalog.remove(f"{prefix}_{split}")


# ------------------------------------------------------------------------------- bug 9: readable files
def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_priors_and_checkpoints_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        priors = random_priors(tmp_path / "priors.npz", 0)
        model = torch.nn.Linear(2, 2)
        SGGCheckpointer(model, str(tmp_path), for_inference=False).save("model")
    finally:
        os.umask(previous)
    for path in (priors, tmp_path / "model.pth", tmp_path / "last_checkpoint"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path  # mkstemp's 0600 before


# ---------------------------------------------------------------------------------------------- quiet logs
def test_dependency_warnings_are_filtered(monkeypatch):
    monkeypatch.delenv("KERN_DEBUG", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_dependency_warnings()
        torch.meshgrid(torch.arange(2), torch.arange(2))
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
        warnings.warn("something of the user's", UserWarning)
    assert [str(w.message) for w in caught] == ["something of the user's"]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")
    fx_logger.addHandler(handler)
    try:
        fx_logger.warning("is_fx_tracing will return true for both fx.symbolic_trace and torch.export.")
    finally:
        fx_logger.removeHandler(handler)
    assert not records


# ------------------------------------------------------------------------- bug 7: a path and an array agree
def test_a_big_file_and_the_same_image_as_an_array_give_the_same_model_input(toy, tmp_path):
    from PIL import Image

    from kern_d2.engine import ImagePreparer

    rng = np.random.default_rng(0)
    pixels = cv2_blur(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    path = str(tmp_path / "big.jpg")
    Image.fromarray(pixels).save(path, quality=90)
    bgr = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]  # the decoded file, as a BGR array
    cfg = toy.cfg("kern_predcls", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192")
    boxes, labels = [[10, 10, 900, 700]], [0]
    prepare = ImagePreparer(cfg, TOY_CLASSES)
    from_file, from_array = prepare(path, boxes, labels), prepare(bgr, boxes, labels)
    torch.testing.assert_close(from_file.model_input["image"], from_array.model_input["image"], rtol=0, atol=0)
    assert max(from_file.rgb.shape[:2]) == 192  # the copy kept for drawing is small
    # The switch: faster decoding of big files, at the price of slightly different pixels (documented).
    reduced = ImagePreparer(cfg, TOY_CLASSES, reduced_decode=True)(path, boxes, labels).model_input["image"]
    assert reduced.shape == from_array.model_input["image"].shape
    assert not torch.equal(reduced, from_array.model_input["image"])


def cv2_blur(image):
    import cv2

    return cv2.GaussianBlur(image, (0, 0), 3)
