"""Issue 24: the README's "Your own dataset" walkthrough and its "Use it from Python" snippet, run as written.

Both are read from README.md, so that the README cannot drift from what runs:

- the walkthrough's JSON example must load; its ``my_datasets.py`` is written as it stands; its six commands
  (visualise, detector, priors, PredCls, evaluate, predict) run in that order in a work folder that holds links to
  ``tools/`` and ``configs/`` (the README's commands run in the repository root), with C = P = 10 (the toy
  generator's classes and predicates: the dataset is the session toy dataset converted to the simple JSON format);
- the Python snippet runs on the walkthrough's trained PredCls model laid out as ``make demo`` leaves its output
  (``output/demo/study/predcls/kern_seed0/{config.yaml, model_final.pth}``, ``output/demo/test_boxes.json``).

Each command runs in this process (``runpy`` of ``tools/<tool>.py`` as ``__main__``, with its ``sys.argv``): a
subprocess per command would spend ~5 s importing torch and Detectron2 each time. Added to the commands as
written, only to keep the whole walkthrough at a few seconds on 2 CPU cores:

- train_net.py: ``SOLVER.MAX_ITER 2`` (training only) and ``TINY_RUN`` (2 images per batch, 1 warm-up iteration,
  no loader workers, 128-192 px images);
- predict.py: ``--num-workers 0`` and the 128-192 px test size.
"""
import json
import logging
import os
import re
import runpy
import shlex
import shutil
import sys
import textwrap

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from kern_d2.data import load_sgg_json, load_vg_sgg, read_vg_classes

from tests.helpers import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
TINY_RUN = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]
TRAIN_ITERS = ["SOLVER.MAX_ITER", "2"]
PREDICT_EXTRA = (["--num-workers", "0"], ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"])
MY_NAMES = ("my_train", "my_test")


# --------------------------------------------------------------------------------------------- README.md, parsed
def readme_section(title: str) -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(title)
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else len(text)]


def code_blocks(text: str, language: str):
    """The fenced ``language`` blocks of ``text``, dedented (list items indent theirs)."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def shell_commands(text: str):
    """The ``python ...`` command lines of the bash blocks of ``text``, continuation lines joined."""
    commands = []
    for block in code_blocks(text, "bash"):
        commands += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.startswith("python ")]
    return commands


WALKTHROUGH = "### Walkthrough: your own data in the simple JSON format, on CPU"


# ------------------------------------------------------------------------------------------ running a tool here
def run_tool(command: str, counts: dict, extra=((), ())) -> None:
    """Run ``python tools/<tool>.py ...`` (README words; C and P replaced by ``counts``) in this process, with the
    ``extra`` (options before the config overrides, overrides at the end); fail on a non-zero exit."""
    argv = [counts.get(word, word) for word in shlex.split(command)]
    assert argv[0] == "python" and argv[1].startswith("tools/"), command
    options, overrides = extra
    argv = argv[1:]
    if options:
        at = argv.index("--opts") if "--opts" in argv else len(argv)
        argv[at:at] = list(options)
    argv += list(overrides)
    saved = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved
    assert code in (0, None), f"{' '.join(argv)} exited with {code}"


def _all_handlers():
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    return {(id(logger), id(h)): (logger, h) for logger in loggers for h in logger.handlers}


# -------------------------------------------------------------------------------------- the dataset, as JSON
def write_my_dataset(toy_root: str, work: str) -> dict:
    """The toy dataset (VG format) as ``work/my_train.json``, ``work/my_test.json`` and ``work/my_images``."""
    dicts_file = os.path.join(toy_root, "VG-SGG-dicts.json")
    things, predicates = read_vg_classes(dicts_file)
    for split, name in (("train", "my_train"), ("test", "my_test")):
        dicts = load_vg_sgg(os.path.join(toy_root, "VG-SGG.h5"), dicts_file, os.path.join(toy_root, "image_data.json"),
                            os.path.join(toy_root, "VG_100K"), split, num_val_images=0)
        images = [{"id": d["image_id"], "file_name": os.path.basename(d["file_name"]), "width": d["width"],
                   "height": d["height"],
                   "objects": [{"bbox": [float(v) for v in a["bbox"]], "category": things[a["category_id"]]}
                               for a in d["annotations"]],
                   "relations": [{"subject": int(s), "object": int(o), "predicate": predicates[p]}
                                 for s, o, p in d["relations"].tolist()]} for d in dicts]
        with open(os.path.join(work, f"{name}.json"), "w") as f:
            json.dump({"categories": things, "predicates": predicates[1:], "images": images}, f)
    os.symlink(os.path.join(toy_root, "VG_100K"), os.path.join(work, "my_images"))
    return {"C": str(len(things)), "P": str(len(predicates))}


@pytest.fixture(scope="module")
def walkthrough(toy_dataset_root, tmp_path_factory):
    """The work folder after the walkthrough's steps, run as the README gives them (see the module docstring)."""
    from detectron2.utils.logger import setup_logger

    from kern_d2.evaluation import sgg_evaluator

    work = str(tmp_path_factory.mktemp("walkthrough"))
    for name in ("tools", "configs"):
        os.symlink(os.path.join(REPO_ROOT, name), os.path.join(work, name))
    section = readme_section(WALKTHROUGH)
    counts = write_my_dataset(toy_dataset_root, work)
    (registration,) = [b for b in code_blocks(section, "python") if "register_sgg_json(" in b]
    with open(os.path.join(work, "my_datasets.py"), "w") as f:
        f.write(registration)
    commands = shell_commands(section)
    assert not [n for n in MY_NAMES if n in DatasetCatalog.list()], "my_train / my_test registered by another test"
    handlers = _all_handlers()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("KERN_REGISTER", raising=False)  # --register sets it for child processes
        try:
            for command in commands:
                if "tools/train_net.py" in command:
                    run_tool(command, counts, ((), TINY_RUN + ([] if "--eval-only" in command else TRAIN_ITERS)))
                elif "tools/predict.py" in command:
                    run_tool(command, counts, PREDICT_EXTRA)
                else:
                    run_tool(command, counts)
            yield {"work": work, "section": section, "commands": commands, "counts": counts}
        finally:
            for name in MY_NAMES:
                if name in DatasetCatalog.list():
                    DatasetCatalog.remove(name)
                if name in MetadataCatalog.keys():
                    MetadataCatalog.remove(name)
            sgg_evaluator._TRAIN_TRIPLET_CACHE.pop("my_train", None)
            for key, (logger, handler) in _all_handlers().items():  # the tools' log files in this work folder
                if key not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            setup_logger.cache_clear()


def test_the_walkthroughs_json_example_is_the_loaders_format(tmp_path):
    (example,) = [b for b in code_blocks(readme_section(WALKTHROUGH), "python") if '"categories"' in b]
    data = json.loads("\n".join(line for line in example.splitlines() if not line.startswith("#")))
    (tmp_path / "my_train.json").write_text(json.dumps(data))
    (record,) = load_sgg_json(str(tmp_path / "my_train.json"), str(tmp_path), missing_images="ignore")
    assert record["relations"].tolist() == [[0, 1, 1]] and len(record["annotations"]) == 2


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(walkthrough):
    """Every step did what the README says it does, on the files the README names."""
    commands, work = walkthrough["commands"], walkthrough["work"]
    tools = [shlex.split(c)[1] + (" --eval-only" if "--eval-only" in c else "") for c in commands]
    assert tools == ["tools/visualize_data.py", "tools/train_net.py", "tools/compute_priors.py",
                     "tools/train_net.py", "tools/train_net.py --eval-only", "tools/predict.py"]
    assert walkthrough["counts"] == {"C": "10", "P": "10"}

    def path(*parts):
        return os.path.join(work, *parts)

    assert len([n for n in os.listdir(path("vis")) if n.endswith(".png")]) == 10  # step 2: the first 10 images
    assert os.path.isfile(path("out", "detector", "model_final.pth"))  # step 3, evaluated with COCO AP on my_test
    assert os.path.isfile(path("out", "detector", "inference", "my_test", "coco_instances_results.json"))
    assert os.path.isfile(path("out", "my_priors.npz"))  # step 4
    assert os.path.isfile(path("out", "predcls", "model_final.pth"))  # step 5
    with open(path("my_test.json")) as f:
        num_test = len(json.load(f)["images"])
    with open(path("out", "predcls_eval", "inference", "my_test", "sgg_metrics.json")) as f:  # step 6
        report = json.load(f)
    assert report["mode"] == "predcls" and report["num_images"] == num_test
    assert report["num_zero_shot_triplet_types"] is not None  # zR@K: DATASETS.TRAIN is in the command
    with open(path("out", "pictures", "summary.json")) as f:  # step 7
        summary = json.load(f)
    assert len(summary["processed"]) == 4 and not summary["failed"]
    assert all(os.path.isfile(path(p["json"])) and os.path.isfile(path(p["png"])) for p in summary["processed"])


@pytest.mark.slow
def test_the_python_snippet_runs_as_written_on_demo_like_output(walkthrough, tmp_path, monkeypatch, capsys):
    """The README's SceneGraphPredictor snippet, unchanged, in a folder laid out as ``make demo`` leaves it: the
    walkthrough's PredCls run (its saved config names a priors file that is not there: the weights carry the
    priors) and the demo's test_boxes.json (gt boxes and label names of test images)."""
    run = tmp_path / "output" / "demo" / "study" / "predcls" / "kern_seed0"
    run.mkdir(parents=True)
    trained = os.path.join(walkthrough["work"], "out", "predcls")
    for name in ("config.yaml", "model_final.pth"):
        shutil.copyfile(os.path.join(trained, name), run / name)
    with open(os.path.join(walkthrough["work"], "my_test.json")) as f:
        my_test = json.load(f)
    boxes = {os.path.join(walkthrough["work"], "my_images", im["file_name"]): {
        "boxes": [o["bbox"] for o in im["objects"]], "labels": [o["category"] for o in im["objects"]]}
        for im in my_test["images"][:6] if len(im["objects"]) > 1}
    (tmp_path / "output" / "demo" / "test_boxes.json").write_text(json.dumps(boxes))

    (snippet,) = code_blocks(readme_section("## Use it from Python"), "python")
    monkeypatch.chdir(tmp_path)
    assert not os.path.exists("out/my_priors.npz")  # the run's PRIORS_FILE, relative to another folder
    exec(compile(snippet, "README.md: Use it from Python", "exec"), {"__name__": "readme_snippet"})

    printed = capsys.readouterr().out.splitlines()
    triplets = [line for line in printed if re.fullmatch(r"\S.* \S.*: [01]\.\d{3}", line)]
    assert 1 <= len(triplets) <= 5, printed  # "<subject> <predicate> <object>: <score>", best first
    assert (tmp_path / "graph.png").stat().st_size > 0
